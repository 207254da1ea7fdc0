"""The trainer as a library: `train(TrainConfig(...)) -> TrainResult`.

`config` holds `TrainConfig`, the one typed configuration (the command line's flags are generated from it), and
imports neither torch nor timm; `loop` is the Accelerate training loop (`train`), imported on first use of `train` or
`TrainResult`, so that `from fgvc_zoo.training import TrainConfig` stays light; `checkpoints` writes and restores
atomic checkpoints, `run_folder` finds them. `python -m fgvc_zoo.train` and `fgvc-zoo train` call `train`.

    from fgvc_zoo.training import TrainConfig, train

    result = train(TrainConfig(model='dpnet', backbone='resnet18', pretrained=True, data_dir='data/birds', epochs=30))
    result.metrics['top1'], result.model
"""

from typing import Any

from .config import TrainConfig

__all__ = ['TrainConfig', 'TrainResult', 'train']


def __getattr__(name: str) -> Any:
    """`train` and `TrainResult` from the loop, imported (with torch) only when asked for."""
    if name in ('train', 'TrainResult'):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
