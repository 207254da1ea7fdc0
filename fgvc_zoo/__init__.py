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
    'register_head',
    'list_heads',
    'Lfd',
    'DpNet',
    'Iagn',
]
__all__ = ['__version__', *_MODELS_ALL, 'export_onnx', 'read_onnx_metadata']


class _Registrar(importlib.abc.MetaPathFinder):
    """Registers the heads (imports `fgvc_zoo.models`) once timm has been executed and no fgvc_zoo module is
    half-initialised: a module that imports timm and then `fgvc_zoo.models` must not see the heads registered in
    the middle of its own import. Finds nothing itself: it wraps the loaders of timm and of
    fgvc_zoo's submodules (until the heads are registered) to know when both hold.
    """

    def __init__(self) -> None:
        self.timm_ready = 'timm' in sys.modules
        self.depth = 0  # fgvc_zoo submodules being executed
        self.busy = False

    def find_spec(self, name, path=None, target=None):
        if self.busy or not (name == 'timm' or name.startswith('fgvc_zoo.')):
            return None
        self.busy = True
        try:
            spec = importlib.util.find_spec(name)  # from the other finders
        finally:
            self.busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, 'exec_module'):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_track(module) -> None:
            self.depth += name != 'timm'
            try:
                exec_module(module)
            finally:
                self.depth -= name != 'timm'
            self.timm_ready |= name == 'timm'
            self.register_when_ready()

        spec.loader.exec_module = exec_and_track
        return spec

    def register_when_ready(self) -> None:
        if self.timm_ready and self.depth == 0 and self in sys.meta_path:
            sys.meta_path.remove(self)
            importlib.import_module('fgvc_zoo.models')


if 'timm' in sys.modules:
    importlib.import_module('fgvc_zoo.models')
elif not any(type(finder).__name__ == '_Registrar' for finder in sys.meta_path):
    sys.meta_path.insert(0, _Registrar())


_SUBMODULES = (
    'bench', 'cli', 'commands', 'data', 'demo', 'errors', 'hub', 'inference', 'layers', 'models', 'runtime', 'train',
    'training',
)  # fmt: skip
_ONNX_ALL = ('export_onnx', 'read_onnx_metadata')  # onnx itself is imported on use


def __getattr__(name: str):
    if name in _SUBMODULES:  # `fgvc_zoo.hub.load_model(...)` after a bare `import fgvc_zoo`
        return importlib.import_module(f'fgvc_zoo.{name}')
    if name in _MODELS_ALL:
        return getattr(importlib.import_module('fgvc_zoo.models'), name)
    if name in _ONNX_ALL:
        return getattr(importlib.import_module('fgvc_zoo.hub.onnx'), name)
    raise AttributeError(f"module 'fgvc_zoo' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES, *_MODELS_ALL, *_ONNX_ALL])
