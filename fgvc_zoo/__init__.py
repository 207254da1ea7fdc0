"""fgvc_zoo: fine-grained visual classification heads as timm models over any timm backbone.

`import fgvc_zoo` registers every head with timm (`lfd*`, `dpnet*`, `iagn*`) by importing `fgvc_zoo.models`: at once
when timm is already imported, else right after timm's own import (`_RegisterHeadsAfterTimm`), so that
`import fgvc_zoo` alone, and with it `fgvc-zoo --help`, does not pay for importing torch and timm. The names of
`fgvc_zoo.models` (`fgvc_zoo.Lfd`, `fgvc_zoo.PaperInfo`, ...), the subpackages (`fgvc_zoo.hub.load_model`) and
`fgvc_zoo.export_onnx` / `read_onnx_metadata` load on first use.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = '0.1.0'
__all__ = ['__version__']

_SUBMODULES = (
    'bench', 'cli', 'commands', 'convert', 'data', 'demo', 'errors', 'hub', 'inference', 'layers', 'models', 'runtime',
    'train', 'training',
)  # fmt: skip
_ONNX_NAMES = ('export_onnx', 'read_onnx_metadata')  # onnx itself is imported on use


class _RegisterHeadsAfterTimm(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A one-time import hook for `timm` alone: timm is found by the usual finders and executed by its own loader,
    then `fgvc_zoo.models` is imported, which registers the heads.

    Why it is safe: it leaves `sys.meta_path` the first time timm is looked up (under Python's import lock), so it
    acts once; it patches no loader (it delegates, and gives timm's spec and module their own loader back); the
    registration imports `fgvc_zoo.models`, which imports only `layers` and `errors` of fgvc_zoo, and those never
    import timm (tests/test_layers.py), so no half-executed module it needs can be the one that imported timm (when
    it is `fgvc_zoo.models` itself, the import returns it and its own execution registers the heads); and a
    registration failure is a warning, never a failed `import timm`.
    """

    def find_spec(self, name, path=None, target=None):
        if name != 'timm' or self not in sys.meta_path:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        self.timm_loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self.timm_loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__spec__.loader = module.__loader__ = self.timm_loader
        self.timm_loader.exec_module(module)
        try:
            importlib.import_module('fgvc_zoo.models')
        except Exception as e:  # timm itself imported fine: its users must not fail on our account
            warnings.warn(
                f'fgvc_zoo could not register its heads with timm ({type(e).__name__}: {e}); '
                f'`import fgvc_zoo.models` shows the error.',
                RuntimeWarning,
                stacklevel=2,
            )


if 'timm' in sys.modules:
    importlib.import_module('fgvc_zoo.models')
elif not any(type(finder).__name__ == _RegisterHeadsAfterTimm.__name__ for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterHeadsAfterTimm())


def __getattr__(name: str):
    if name in _SUBMODULES:  # `fgvc_zoo.hub.load_model(...)` after a bare `import fgvc_zoo`
        return importlib.import_module(f'fgvc_zoo.{name}')
    if name in _ONNX_NAMES:
        return getattr(importlib.import_module('fgvc_zoo.hub.onnx'), name)
    if not name.startswith('_'):
        models = importlib.import_module('fgvc_zoo.models')
        if name in models.__all__:
            return getattr(models, name)
    raise AttributeError(f"module 'fgvc_zoo' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES, *_ONNX_NAMES])
