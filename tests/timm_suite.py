"""A pytest plugin that runs timm's own `tests/test_models.py` over fgvc_zoo's models, and only over them.

timm's test file parametrizes each model test with `timm.list_models(...)` / `timm.list_pretrained(...)` when it is
imported; this plugin is imported first (`-p timm_suite`, with `tests/` on the path) and narrows both to the
registered fgvc_zoo heads, keeping every filter timm passes (a selection by module takes the heads' modules too:
timm picks the models of its `forward_intermediates` tests that way). Tests of timm's own fixed models
(`convnext_atto`, ...) are deselected. `EXCLUDED` is the one list of checks that cannot apply to a head, each with its
reason (skipped, and listed by `-rs`). `.ci/run` runs it:

    PYTHONPATH=tests python -m pytest -p timm_suite <timm sdist>/tests/test_models.py
"""

import fnmatch

import pytest
import timm
import timm.models

import fgvc_zoo  # noqa: F401  (registers the heads)
from fgvc_zoo.models import head_class, head_name, list_heads

_timm_list_models = timm.list_models
_timm_list_pretrained = timm.list_pretrained


def _heads_only(names: list[str]) -> list[str]:
    return [n for n in names if head_name(n) is not None]


def list_models(*args, **kwargs) -> list[str]:
    # timm picks the models whose forward_intermediates it tests by module name (`module=FEAT_INTER_FILTERS`); every
    # head has one, so a selection by module takes the heads' modules too.
    module = kwargs.get('module')
    if module:
        kwargs['module'] = [*([module] if isinstance(module, str) else module), *_head_modules()]
    return _heads_only(_timm_list_models(*args, **kwargs))


def _head_modules() -> list[str]:
    return sorted({head_class(head).__module__.rsplit('.', 1)[-1] for head in list_heads()})


def list_pretrained(*args, **kwargs) -> list[str]:
    return _heads_only(_timm_list_pretrained(*args, **kwargs))


timm.list_models = timm.models.list_models = list_models
timm.list_pretrained = timm.models.list_pretrained = list_pretrained

# The one list of timm's checks that cannot apply to a head: (timm test functions, model name pattern, why).
_FX = ('test_model_forward_fx', 'test_model_backward_fx', 'test_model_forward_fx_torchscript')
EXCLUDED: list[tuple[tuple[str, ...], str, str]] = [
    (
        ('test_model_backward',),
        'lfd*',
        "LFD's image and region classifiers learn from their own losses on the target (the image classifier's class "
        'maps place the regions), which model(x) cannot compute, so model(x).mean() gives them no gradient; a '
        'target-less train-mode forward warns once, naming model(x, target=y).loss',
    ),
    (
        ('test_model_backward',),
        'iagn*',
        "IAGN's stage heads learn only in their own progressive steps, model(x, target=y, step=k).loss; model(x) is "
        'the fused inference path and gives them no gradient; a target-less train-mode forward warns once',
    ),
    (
        ('test_model_backward',),
        'dpnet*',
        "DP-Net's backbone is frozen by the paper's design (freeze_backbone=True): its parameters have no gradient",
    ),
    (
        ('test_model_default_cfgs',),
        'lfd*',
        'forward_features is one token per backbone pass, (B, 1 + l, C): the image and its zoomed crops share no '
        'grid, so the 4-D pool_size sub-checks cannot apply (pool_size None); tests/test_timm_contract.py checks '
        "the rest (num_classes=0, global_pool='', reset_classifier, device and dtype)",
    ),
    (
        ('test_model_default_cfgs',),
        'iagn*',
        'forward_features is one token per backbone pass, (B, 2, C): the image and its zoom share no grid, so the '
        '4-D pool_size sub-checks cannot apply (pool_size None); tests/test_timm_contract.py checks the rest',
    ),
    (
        ('test_prune_intermediate_layers_contract',),
        '*',
        "a head is built on its backbone's final map (class maps, parts, zooms): pruned to an earlier stage it has "
        "nothing left to run, so it has no prune_intermediate_layers; the taps come from features_only=True, timm's "
        'FeatureGetterNet over the backbone (test_model_forward_intermediates_features). timm runs this test outside '
        'its CI too (slow)',
    ),
    (
        ('test_model_forward_torchscript',),
        '*',
        "TorchScript cannot compile the heads' Python (the typed Backbone adapter, the target and step arguments); "
        'deployment is torch.export and ONNX, both tested for every head',
    ),
    (
        _FX,
        '*',
        'torch.fx symbolic tracing cannot follow control flow on tensors: the backbone adapter branches on the '
        "backbone output's layout (tokens, NHWC, NCHW), LFD and IAGN on boxes chosen from the data; torch.export "
        '(tested for every head) captures the eval graph with real shapes instead',
    ),
]


def _excluded(test: str, model_name: str) -> str | None:
    return next((why for tests, p, why in EXCLUDED if test in tests and fnmatch.fnmatch(model_name, p)), None)


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
    # A timm release that renames a test or selects models another way must not pass by running nothing.
    stale = {t for tests, _, _ in EXCLUDED for t in tests} - {item.originalname for item in keep}
    if not keep or stale:
        raise pytest.UsageError(
            f'timm_suite: timm {timm.__version__} ran no fgvc_zoo model, or has no test {sorted(stale)} of EXCLUDED: '
            'update tests/timm_suite.py for this timm.'
        )
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
