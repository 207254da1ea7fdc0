"""The protocol of a comparison: its config and budget, the built-in synthetic data, the baselines, the
preprocessing every method shares, and the trainer config of each run (`run_config`).
"""

import functools
import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch

from ..errors import UsageError
from ..hub import local_weights_record, resolve_weights_file
from ..models import head_class, list_heads
from ..runtime import parse_model_kwargs
from ..training.config import CACHE_VIEWS, TrainConfig, parse_train_flags

# The built-in synthetic protocol, fixed before any result was read: the 224 px part set with 8 classes, a glyph of
# 10 % of the side and 40 training images per class is solved by a plain fine-tune (100 %), so no head can show a
# gain there. Here: all 12 glyphs, a glyph of 4.5 % of the side (10 px of 224), 40 clutter shapes instead of 10,
# 30 training images per class (24 train + 6 val once val is carved), 30 test images per class.
HARD_SYNTHETIC: dict[str, Any] = dict(
    num_classes=12, train_per_class=30, val_per_class=30, image_size=224, part_size=0.045, clutter=40
)

# Shared trainer flags (the FGVC references' crop and the papers' backbone lr), on top of which --train-args add.
DEFAULT_TRAIN_ARGS = [
    '--sched',
    'cosine',
    '--train-crop',
    'resize_crop',
    '--opt',
    'momentum',
    '--backbone-lr-mult',
    '0.1',
]

PLAIN, PROBE = 'plain', 'probe'

BASELINES = {
    PLAIN: "a full fine-tune of timm's own classifier of the backbone",
    PROBE: 'a linear probe: the same classifier trained alone on the frozen backbone (weights and BatchNorm statistics '
    'as loaded)',
}

# The preprocessing every method trains and is tested with, plain and probe included: the FGVC references' eval
# (NTS-Net's: squash the image to img_size / crop_pct, 600 x 600 for 448, then a centre crop, bilinear), so that the
# methods see the same pixels. timm's own cfg of a backbone resizes bicubic keeping the aspect; IAGN's (PMG's)
# crop keeps a little more (448/550).
REFERENCE_PREPROCESSING: dict[str, Any] = dict(interpolation='bilinear', crop_pct=448 / 600, crop_mode='squash')

DATA, TEST_DATA, RUNS, IMAGES = 'data', 'test_data', 'runs', 'images'

CACHE_FROZEN = CACHE_VIEWS  # the trainer's --cache-features values


@dataclass
class CompareConfig:
    """One comparison: the data, the backbone, the methods and the budget they share."""

    output: str
    backbone: str
    methods: list[str]
    lrs: list[float]
    seeds: int = 3
    epochs: int = 10  # the most epochs a run trains
    patience: int = 3  # a run stops after this many epochs without a val top-1 gain above min_delta (0: never)
    min_delta: float = 0.0
    batch_size: int = 16
    img_size: int = 224
    data_dir: str | None = None
    synthetic: dict[str, Any] | None = None  # make_synthetic_fgvc kwargs, written to OUTPUT/synthetic_data
    dataset_layout: str = 'auto'
    dataset_args: dict[str, Any] = field(default_factory=dict)
    train_split: str = 'train'
    test_split: str = 'test'
    val_fraction: float = 0.2
    split_seed: int = 0
    pretrained: bool = False
    backbone_weights: str | None = None
    method_args: dict[str, str] = field(default_factory=dict)  # method -> the trainer's --model-args
    train_args: list[str] = field(default_factory=lambda: list(DEFAULT_TRAIN_ARGS))
    devices: list[str] = field(default_factory=lambda: ['cpu'])
    workers: int = 0
    threads: int = 0
    explain: int = 3
    # The frozen methods (probe, DP-Net frozen) train on their backbone's maps computed once ('flip', 'crops': the
    # trainer's --cache-features views), not on freshly augmented images each epoch; 'off': every method on images.
    cache_frozen: str = 'off'

    def budget(self) -> dict[str, Any]:
        """What every run of this comparison shares; runs recorded under another budget are refused. No machine path:
        the data by its folder's name (splits.json holds where it is), the weights by name, size and sha256."""
        skip = {'output', 'devices', 'workers', 'threads', 'explain', 'methods', 'lrs', 'seeds'}
        budget = {k: v for k, v in asdict(self).items() if k not in skip}
        budget['data_dir'] = self.data_dir and Path(self.data_dir).resolve().name
        budget['backbone_weights'] = self.backbone_weights and weights_file_record(self.backbone_weights, self.backbone)
        if self.cache_frozen == 'off':  # recorded only when on: the records made before it existed still read
            del budget['cache_frozen']
        return budget


def weights_file_record(path: str, backbone: str) -> dict[str, Any]:
    """The backbone weights a comparison gives every method, as records name them (no local path)."""
    return local_weights_record(resolve_weights_file(path, backbone), 'backbone')


def check(config: CompareConfig) -> None:

    if (config.data_dir is None) == (config.synthetic is None):
        raise UsageError('Pass exactly one of --data-dir DIR and --synthetic.')
    if not set(BASELINES) & set(config.methods):
        raise UsageError(f'--methods {" ".join(config.methods)}: the comparison needs a baseline, plain or probe.')
    unknown = [m for m in config.methods if m not in BASELINES and m not in list_heads()]
    if unknown:
        raise UsageError(f'--methods: {unknown} are not methods; choose from {" ".join([*BASELINES, *list_heads()])}.')
    if len(set(config.methods)) != len(config.methods) or len(set(config.lrs)) != len(config.lrs):
        raise UsageError('--methods and --lrs must not repeat a value.')
    if config.seeds < 1 or config.epochs < 1 or not config.lrs:
        raise UsageError('--seeds and --epochs must be >= 1 and --lrs must name at least one lr.')
    if config.patience < 0 or config.min_delta < 0:
        raise UsageError('--patience and --min-delta must be >= 0.')
    if not 0 < config.val_fraction < 1:
        raise UsageError(f'--val-fraction {config.val_fraction}: must lie between 0 and 1.')
    if config.backbone_weights and not Path(config.backbone_weights).exists():
        raise FileNotFoundError(f'--backbone-weights {config.backbone_weights}: no such file or folder.')
    if config.cache_frozen not in CACHE_FROZEN:
        raise UsageError(f'--cache-frozen {config.cache_frozen}: choose from {" ".join(CACHE_FROZEN)}.')
    for device in config.devices:
        if device != 'cpu' and not device.startswith('cuda'):
            raise UsageError(f"--devices {device}: use 'cpu' or CUDA devices ('cuda:0 cuda:1').")
    if 'cpu' in config.devices and len(config.devices) > 1:
        raise UsageError("--devices: 'cpu' runs in this process and cannot be mixed with CUDA devices.")


def run_name(method: str, lr: float, seed: int) -> str:
    return f'{method}_lr{lr:g}_seed{seed}'


def claimed_baseline(method: str) -> str | None:
    """The baseline a head's paper claims to beat (`PaperInfo.baseline`); None for a baseline."""
    if method in BASELINES:
        return None
    paper = head_class(method).paper
    return paper.baseline if paper is not None else PLAIN


@functools.cache
def trains_on_frozen_map(method: str, backbone: str, method_args: str | None) -> bool:
    """Whether `method` trains only on a frozen map of the image (the probe; a head as built with `method_args`,
    asked on the meta device: `FgvcModel.trains_on_frozen_map`)."""
    if method in BASELINES:
        return method == PROBE
    with torch.device('meta'):
        model = timm.create_model(method, backbone=backbone, num_classes=2, **parse_model_kwargs(method_args, None))
    return model.trains_on_frozen_map


def cached_methods(config: CompareConfig) -> list[str]:
    """The methods that train on cached maps (`cache_frozen`), in `config.methods` order."""
    if config.cache_frozen == 'off':
        return []
    return [m for m in config.methods if trains_on_frozen_map(m, config.backbone, config.method_args.get(m))]


def run_config(config: CompareConfig, method: str, lr: float, seed: int) -> TrainConfig:
    """The trainer's config of one run: the shared budget (`train_args` on top of the protocol's options), the
    method's model, its lr and seed; it continues the run's last checkpoint when there is one."""
    out = Path(config.output)
    overlay = f'pretrained_cfg_overlay={REFERENCE_PREPROCESSING!r}'
    options = parse_train_flags(config.train_args, '--train-args')
    options |= dict(
        model=config.backbone if method in BASELINES else method,
        backbone=None if method in BASELINES else config.backbone,
        freeze_backbone=method == PROBE,
        cache_features=config.cache_frozen if method in cached_methods(config) else 'off',
        model_args=','.join(filter(None, [config.method_args.get(method), overlay])),
        pretrained=config.pretrained, backbone_weights=config.backbone_weights,
        data_dir=str(out / DATA), dataset_layout='folder', train_split='train', eval_split='val',
        img_size=config.img_size, epochs=config.epochs, batch_size=config.batch_size, lr=lr, seed=seed,
        workers=config.workers, threads=config.threads, output=str(out / RUNS / run_name(method, lr, seed)),
        resume='auto', keep_checkpoints=1, keep_best=True, patience=config.patience, min_delta=config.min_delta,
    )  # fmt: skip
    return TrainConfig(**options)


def portable_command(config: CompareConfig, run: TrainConfig) -> str:
    """A run's trainer command as its record keeps it: paths relative to the comparison's output folder (run it
    there), the weights file by name."""
    out = os.path.abspath(config.output)
    weights = config.backbone_weights and Path(config.backbone_weights).name

    def portable(arg: str) -> str:
        if config.backbone_weights and arg == config.backbone_weights:
            return weights
        return os.path.relpath(arg, out) if os.path.isabs(arg) and arg.startswith(out + os.sep) else arg

    return 'fgvc-zoo train ' + shlex.join(portable(a) for a in run.to_flags())
