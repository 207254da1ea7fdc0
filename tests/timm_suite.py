"""A pytest plugin that runs timm's own `tests/test_models.py` over fgvc_zoo's models, and only over them.

timm's test file parametrizes each model test with `timm.list_models(...)` / `timm.list_pretrained(...)` when it is
imported; this plugin is imported first (`-p timm_suite`, with `tests/` on the path) and narrows both to the registered fgvc_zoo heads,
keeping every filter timm passes. Tests of timm's own fixed models (`convnext_atto`, ...) are deselected. `EXCLUDED`
is the one list of checks that cannot apply to a head, each with its reason. `.ci/run` runs it:

    PYTHONPATH=tests python -m pytest -p timm_suite <timm sdist>/tests/test_models.py
"""

import fnmatch

import pytest
import timm
import timm.models

import fgvc_zoo  # noqa: F401  (registers the heads)
from fgvc_zoo.models import head_name

_timm_list_models = timm.list_models
_timm_list_pretrained = timm.list_pretrained


def _heads_only(names: list[str]) -> list[str]:
    return [n for n in names if head_name(n) is not None]


def list_models(*args, **kwargs) -> list[str]:
    return _heads_only(_timm_list_models(*args, **kwargs))


def list_pretrained(*args, **kwargs) -> list[str]:
    return _heads_only(_timm_list_pretrained(*args, **kwargs))


timm.list_models = timm.models.list_models = list_models
timm.list_pretrained = timm.models.list_pretrained = list_pretrained

# (test function, model name pattern) -> why the check cannot apply to that head.
EXCLUDED: dict[tuple[str, str], str] = {}


def _excluded(test: str, model_name: str) -> str | None:
    return next((why for (t, p), why in EXCLUDED.items() if t == test and fnmatch.fnmatch(model_name, p)), None)


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        model_name = params.get('model_name')
        if not isinstance(model_name, str) or head_name(model_name) is None:
            drop.append(item)
            continue
        why = _excluded(item.originalname, model_name)
        if why:
            item.add_marker(pytest.mark.skip(reason=f'fgvc_zoo: {why}'))
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
