"""fgvc_zoo: fine-grained visual classification heads as timm models over any timm backbone.

Importing the package registers every head with timm (`lfd*`, `dpnet*`, `iagn*`): at once when timm is already
imported, else the moment timm is (a post-import hook), so that `import fgvc_zoo` alone, and with it
`fgvc-zoo --help`, does not pay for importing torch and timm. `fgvc_zoo.Lfd` and the other names of
`fgvc_zoo.models` load on first use.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = '0.1.0'

_MODELS_ALL = [
    'Backbone',
    'check_backbone_name',
    'create_backbone_model',
    'POPULAR_BACKBONES',
    'Explanation',
    'FgvcModel',
    'FgvcOutput',
    'build_fgvc_model',
    'Lfd',
    'DpNet',
    'Iagn',
]
__all__ = ['__version__', *_MODELS_ALL]


def _register() -> None:
    importlib.import_module('fgvc_zoo.models')


class _AfterTimm(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps timm's loader so that the heads register as soon as timm has been executed."""

    def find_spec(self, name, path=None, target=None):
        if name != 'timm':
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)  # the finders after this one
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module) -> None:
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


if 'timm' in sys.modules:
    _register()
elif not any(isinstance(finder, _AfterTimm) for finder in sys.meta_path):
    sys.meta_path.insert(0, _AfterTimm())


def __getattr__(name: str):
    if name == 'models' or name in _MODELS_ALL:
        models = importlib.import_module('fgvc_zoo.models')
        return models if name == 'models' else getattr(models, name)
    raise AttributeError(f"module 'fgvc_zoo' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), 'models', *_MODELS_ALL])
