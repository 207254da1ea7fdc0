"""`require(module)`: a test module's optional dependency, skipped where it is missing on a developer's machine but a
failure under CI=true, where every extra is installed: there a skip would silently drop a whole suite."""

import importlib
import os
from types import ModuleType

import pytest


def in_ci() -> bool:
    return os.environ.get('CI', '').lower() in ('1', 'true', 'yes')


def require(module: str, why: str) -> ModuleType:
    """The module, else a skip (a failure in CI) saying what is missing and `why` it matters."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        message = f'{module} is missing ({e}): {why}'
        if in_ci():
            pytest.fail(f'{message}; CI must install it.', pytrace=False)
        pytest.skip(message, allow_module_level=True)
