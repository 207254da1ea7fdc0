"""The trainer's configuration: `TrainConfig`, one typed dataclass, is the trainer's only input.

The command line's flags are generated from its fields (name, type, default, help, choices, group); a recipe
(`--recipe FILE.yaml`, or `TrainConfig.from_recipe`) holds field names as keys, and options given explicitly win;
`--resume` restores the checkpoint's config, which only the options given now override. This module imports neither
torch nor timm, so that `fgvc-zoo --help` stays instant and a usage error is reported before the heavy imports.
"""

import argparse
import difflib
import json
import os
import types
import typing
from collections.abc import Collection, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError
from .run_folder import CHECKPOINT_STATE, resume_checkpoint

__all__ = ['TrainConfig', 'CACHE_VIEWS', 'add_train_arguments', 'parse_train_flags', 'resolve_config']


GROUPS = ('model', 'data', 'optimisation', 'run')

# `--cache-features`: off, or the views of each image whose frozen maps are cached (`training.feature_cache`).
CACHE_VIEWS = ('off', 'flip', 'crops')


def option(default: Any, group: str, help: str, *, choices: Sequence[Any] | None = None, const: Any = None) -> Any:
    """A field of `TrainConfig` and what its flag shows: the help group, the help text, choices, and the value of
    the flag given alone (`const`)."""
    return field(default=default, metadata=dict(group=group, help=help, choices=choices, const=const))


@dataclass
class TrainConfig:
    """Every option of the trainer, with its default. `fgvc_zoo.training.train(config)` trains it.

    In Python: `TrainConfig(model='dpnet', backbone='resnet18', data_dir='data/birds', epochs=30)`; a recipe's values
    with `TrainConfig.from_recipe('train_scripts/recipes/x.yaml', lr=0.02)`. Each flag of `fgvc-zoo train` is a field
    (`--batch-size` is `batch_size`).
    """

    recipe: str | None = option(
        None, 'recipe', 'YAML file whose keys are flag names (lr, batch-size, ...); flags given win'
    )
    model: str | None = option(None, 'model', 'registered model (lfd_resnet50) or a generic head (lfd) with --backbone')
    backbone: str | None = option(None, 'model', 'timm backbone of a generic head, e.g. resnet50 or convnext_tiny')
    pretrained: bool = option(
        False, 'model', 'start from pretrained weights (the backbone ImageNet weights for a fresh head)'
    )
    backbone_weights: str | None = option(
        None,
        'model',
        "the backbone's timm ImageNet weights from a local .safetensors file, or a folder or Hugging Face cache "
        'holding them (no Hub needed); for a fresh head, with or without --pretrained',
    )
    num_classes: int | None = option(None, 'model', 'number of classes; default: the number in the dataset')
    model_args: str | None = option(None, 'model', "head options as 'key=value,key=value' (values parsed as YAML)")
    model_kwargs: str | dict[str, Any] | None = option(
        None, 'model', 'head options as a YAML mapping, inline or a .yaml file path'
    )
    freeze_backbone: bool = option(
        False,
        'model',
        'a linear probe of a plain timm classifier: only its classifier trains; every other weight and BatchNorm '
        "statistic stays as loaded (a head freezes through its own model args, e.g. DP-Net's freeze_backbone)",
    )
    channels_last: bool = option(False, 'model', 'channels-last memory format')
    grad_checkpointing: bool = option(
        False, 'model', 'gradient checkpointing in the backbone (less memory, more compute)'
    )
    data_dir: str | None = option(
        None, 'data', 'dataset root (any layout create_dataset knows) or a Hugging Face dataset name'
    )
    dataset_name: str | None = option(
        None, 'data', 'dataset name for the model card (cub_200_2011, ...); default: folder name'
    )
    dataset_layout: str = option('auto', 'data', 'layout of --data-dir (auto detects it)')
    synthetic: bool = option(
        False,
        'data',
        'generate a tiny synthetic dataset into OUTPUT/synthetic_data and train on it (demo, no download)',
    )
    train_split: str | None = option(
        None,
        'data',
        "split to train on; default: 'trainval' where the data has one and the run evaluates on test (Aircraft, "
        "Flowers: the papers' protocol), else 'train'",
    )
    eval_split: str | None = option(
        None,
        'data',
        'held-out split evaluated every epoch, and the name of its metrics (val_top1 or test_top1); default: '
        "'val' where the data has one (or --val-fraction carves it), else 'test'. Tune on val, never on test",
        choices=('val', 'validation', 'test'),
    )
    val_fraction: float = option(
        0.0,
        'data',
        'carve a stratified val split of this fraction of each class from the training images and evaluate on it '
        '(the test split is then never read)',
    )
    split_seed: int = option(0, 'data', 'seed of the --val-fraction carve')
    dataset_args: str | None = option(
        None, 'data', "layout options as 'key=value,...', e.g. 'level=family' for aircraft"
    )
    max_unreadable: float = option(
        0.01, 'data', 'fraction of a split that may fail to decode (dropped, listed) before training stops'
    )
    img_size: int = option(448, 'data', 'training and evaluation resolution')
    train_crop: str = option(
        'rrc',
        'data',
        "training crop: 'rrc' timm's random resized crop (area --scale); 'resize_crop' the FGVC references': the "
        "model's eval resize (the heads squash to img-size / crop_pct, e.g. 600x600 for LFD, 550x550 for IAGN), "
        'then a random img-size crop and a flip',
        choices=('rrc', 'resize_crop'),
    )
    train_crop_padding: int = option(
        0, 'data', "zero pixels around the resized image before the random crop of 'resize_crop' (PMG: 8)"
    )
    scale: tuple[float, float] | None = option(None, 'data', 'random-resized-crop area range; default: the data config')
    hflip: float | None = option(None, 'data', 'horizontal flip probability; default: the data config')
    color_jitter: float | None = option(None, 'data', 'colour jitter strength; default: the data config')
    cache_features: str = option(
        'off',
        'data',
        "train a frozen backbone's layers after it (--freeze-backbone, DP-Net's default) on its maps computed once "
        "per image instead of every epoch: 'flip' caches the eval view and its mirror (an epoch mirrors an image "
        "with probability --hflip; no random crop), 'crops' the five crops of --train-crop resize_crop's resized "
        "image and their mirrors (one drawn uniformly: a discrete random crop); 'off' trains on images",
        choices=CACHE_VIEWS,
    )
    workers: int = option(min(4, os.cpu_count() or 1), 'data', 'data loader worker processes per training process')
    epochs: int = option(100, 'optimisation', 'training epochs')
    batch_size: int = option(16, 'optimisation', 'images per process per step')
    grad_accum: int = option(1, 'optimisation', 'batches accumulated per optimiser step')
    opt: str = option(
        'momentum',
        'optimisation',
        "optimiser name of timm's create_optimizer_v2: 'momentum' is SGD with classical momentum (the papers' and"
        " references'), timm's 'sgd' is Nesterov; adamw, ...",
    )
    lr: float = option(0.01, 'optimisation', 'learning rate of the head')
    backbone_lr_mult: float = option(0.1, 'optimisation', 'backbone lr = this x --lr (papers: 0.1)')
    weight_decay: float = option(0.0005, 'optimisation', 'weight decay')
    momentum: float = option(0.9, 'optimisation', 'SGD momentum')
    clip_grad: float | None = option(None, 'optimisation', 'clip the gradient norm to this value')
    sched: str = option(
        'step',
        'optimisation',
        'learning-rate schedule, per epoch',
        choices=('step', 'cosine'),
    )
    decay_epochs: float = option(40, 'optimisation', 'step schedule: epochs between decays')
    decay_rate: float = option(0.1, 'optimisation', 'step schedule: lr factor at each decay')
    min_lr: float = option(0.0, 'optimisation', 'cosine schedule: final learning rate')
    warmup_epochs: int = option(0, 'optimisation', 'linear warm-up epochs')
    warmup_lr: float = option(1e-05, 'optimisation', 'learning rate at the start of warm-up')
    label_smoothing: float = option(0.0, 'optimisation', 'label smoothing of the targets')
    mixup: float = option(0.0, 'optimisation', 'mixup alpha (0: off)')
    cutmix: float = option(0.0, 'optimisation', 'cutmix alpha (0: off)')
    mixup_prob: float = option(1.0, 'optimisation', 'probability of mixing a batch')
    model_ema: bool = option(
        False, 'optimisation', 'keep an EMA of the weights (timm ModelEmaV3); it is evaluated and exported'
    )
    model_ema_decay: float = option(0.9998, 'optimisation', 'EMA decay')
    patience: int = option(
        0,
        'optimisation',
        'stop when the held-out top-1 (of the exported weights: the EMA with --model-ema) has not improved by '
        'more than --min-delta for this many epochs; --epochs is then the maximum. The lr schedule still spans '
        '--epochs, so a run stopped early never reaches the end of its decay. 0: train every epoch',
    )
    min_delta: float = option(0.0, 'optimisation', '--patience: the top-1 gain (points) that counts')
    keep_best: bool = option(
        False,
        'optimisation',
        "export the weights of the epoch with the best held-out top-1 instead of the last epoch's (they travel in"
        ' every checkpoint, so --resume keeps them)',
    )
    amp: str = option(
        'no',
        'run',
        'mixed precision (Accelerate)',
        choices=('no', 'bf16', 'fp16'),
    )
    cpu: bool = option(False, 'run', 'train on CPU even when an accelerator exists')
    find_unused_parameters: bool = option(
        False, 'run', 'DDP searches for unused parameters (on by itself for models with several steps per batch)'
    )
    threads: int = option(
        0,
        'run',
        'torch CPU threads per training process; 0: OMP_NUM_THREADS if set, else the cores over (processes on '
        'this machine x --workers), so that torch and the data workers do not oversubscribe the cores',
    )
    seed: int = option(42, 'run', 'seed of weights, augmentation and the per-epoch shuffle')
    deterministic: bool = option(False, 'run', 'torch deterministic algorithms (bitwise-reproducible GPU runs, slower)')
    output: str = option('output/train', 'run', 'output folder (checkpoints, logs, exported model)')
    resume: str | None = option(
        None,
        'run',
        'continue from a checkpoint folder, or (flag alone) from the last complete one in OUTPUT',
        const='auto',
    )
    keep_checkpoints: int = option(2, 'run', 'epoch checkpoints kept (the last K)')
    eval_every: int = option(1, 'run', 'evaluate every N epochs (and always after the last)')
    log_with: str | None = option(
        None, 'run', 'Accelerate tracker: tensorboard, wandb, ... (also logs to metrics.csv/jsonl)'
    )

    @classmethod
    def from_recipe(cls, recipe: str | os.PathLike, **options: Any) -> 'TrainConfig':
        """The recipe's values, then `options` (which win), resolved."""
        return cls(recipe=str(recipe), **options).resolve(given=set(options))

    def resolve(self, given: Collection[str] | None = None) -> 'TrainConfig':
        """Defaults, then the recipe's values, then the options `given` (default: every field that differs from its
        default), checked; with `resume`, the checkpoint's config replaces the defaults and the recipe's values it
        was trained with, and the options given may not change the model or the data. Returns a new config."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if given is None:
            given = {k for k, v in values.items() if v != _DEFAULTS[k]}
        given = set(given) - {'recipe'}
        recipe_values = _read_recipe(self.recipe) if self.recipe else {}
        config = {**_DEFAULTS, **recipe_values, **{k: values[k] for k in given}, 'recipe': self.recipe}
        if config['resume']:
            config = _restore_saved_config(config, set(recipe_values) | given)
        # a tuple field read from a flag, a recipe or a saved checkpoint arrives as a list
        config = {k: tuple(v) if isinstance(v, list) and k in _TUPLES else v for k, v in config.items()}
        resolved = TrainConfig(**config)
        _check(resolved)
        resolved._resolved = True
        return resolved

    @property
    def is_resolved(self) -> bool:
        """Whether `resolve` made this config (the trainer resolves any other first)."""
        return getattr(self, '_resolved', False)

    def to_flags(self) -> list[str]:
        """The `fgvc-zoo train` flags that give this config: every option that differs from its default."""
        flags = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value == _DEFAULTS[f.name]:
                continue
            flag = '--' + f.name.replace('_', '-')
            if isinstance(value, bool):  # every switch defaults to off
                flags.append(flag)
            elif isinstance(value, (list, tuple)):
                flags += [flag, *map(str, value)]
            elif isinstance(value, dict):
                flags += [flag, json.dumps(value)]
            elif value is not None:
                flags += [flag, repr(value) if isinstance(value, float) else str(value)]
        return flags


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TrainConfig)}
assert MISSING not in _DEFAULTS.values()  # every option has a default


def _value_type(f) -> tuple[type, int | None]:
    """(the type a flag's text converts to, its number of values) of a field, from its annotation."""
    annotation = f.type
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        return args[0], len(args)
    return typing.get_origin(annotation) or annotation, None


_TYPES: dict[str, type] = {f.name: _value_type(f)[0] for f in fields(TrainConfig)}
_TUPLES = {f.name for f in fields(TrainConfig) if _value_type(f)[1]}
_CHOICES: dict[str, Sequence[Any]] = {
    f.name: f.metadata['choices'] for f in fields(TrainConfig) if f.metadata['choices']
}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every field of `TrainConfig` as a flag, in its help group. The flags default to SUPPRESS, so that
    `resolve_config` can tell an option given on the command line (it wins) from one left to the recipe."""
    groups = {'recipe': parser, **{name: parser.add_argument_group(name) for name in GROUPS}}
    for f in fields(TrainConfig):
        value_type, nargs = _value_type(f)
        meta = f.metadata
        kwargs: dict[str, Any] = dict(default=argparse.SUPPRESS, help=f'{meta["help"]} (default: {f.default})')
        if value_type is bool:
            kwargs['action'] = argparse.BooleanOptionalAction
        else:
            kwargs['type'] = value_type
            if meta['const'] is not None:
                kwargs.update(nargs='?', const=meta['const'])
            elif nargs:
                kwargs['nargs'] = nargs
            if meta['choices']:
                kwargs['choices'] = meta['choices']
        groups[meta['group']].add_argument('--' + f.name.replace('_', '-'), **kwargs)


def parse_train_flags(argv: Sequence[str], source: str = 'the trainer flags') -> dict[str, Any]:
    """The options that `fgvc-zoo train` flags give (only those), e.g. a comparison's shared trainer flags."""
    parser = argparse.ArgumentParser(prog=source, add_help=False, exit_on_error=False)
    add_train_arguments(parser)
    try:
        args, unknown = parser.parse_known_args(list(argv))
    except argparse.ArgumentError as e:
        raise UsageError(f'{source}: {e}') from e
    if unknown:
        raise UsageError(f'{source}: {" ".join(unknown)} are not trainer flags (see `fgvc-zoo train --help`).')
    return vars(args)


def _read_recipe(recipe: str) -> dict[str, Any]:
    """A recipe's values by field name, typed; an unknown key is one line naming close matches."""
    path = Path(recipe)
    if not path.is_file():
        raise FileNotFoundError(f'--recipe {recipe}: no such file.')
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f'--recipe {recipe}: not a plain YAML mapping of flag names to values: {e}') from e
    if not isinstance(values, dict):
        raise ValueError(f'--recipe {recipe}: expected a mapping of flag names to values.')
    read = {}
    for key, value in values.items():
        dest = str(key).lstrip('-').replace('-', '_')
        if dest not in _DEFAULTS or dest == 'recipe':
            close = difflib.get_close_matches(dest, list(_DEFAULTS), n=3)
            hint = f' Did you mean {", ".join(c.replace("_", "-") for c in close)}?' if close else ''
            raise UsageError(f"--recipe {recipe}: unknown option '{key}'.{hint}")
        read[dest] = _convert(dest, value, f'--recipe {recipe}')
    return read


def _convert(dest: str, value: Any, source: str) -> Any:
    """Cast a recipe value to the flag's type (YAML reads `1e-2` as a string) and check its choices."""
    value_type = _TYPES[dest]
    if isinstance(value, (list, tuple)):
        value = [_convert_one(dest, v, value_type, source) for v in value]
    elif value is not None:
        value = _convert_one(dest, value, value_type, source)
    if dest in _CHOICES and value is not None and value not in _CHOICES[dest]:
        raise UsageError(f'{source}: {dest.replace("_", "-")}={value!r} is not one of {list(_CHOICES[dest])}.')
    return value


def _convert_one(dest: str, value: Any, value_type: Any, source: str) -> Any:
    if value_type is bool:
        if not isinstance(value, bool):
            raise UsageError(f'{source}: {dest.replace("_", "-")} must be true or false, got {value!r}.')
        return value
    if value_type is str and isinstance(value, dict):
        return value  # model-kwargs may be a mapping in a recipe
    try:
        return value_type(value)
    except (TypeError, ValueError) as e:
        raise UsageError(f'{source}: {dest.replace("_", "-")}={value!r} is not a valid {value_type.__name__}.') from e


# What a resumed run may not change: the model and the data it trains on (the checkpoint holds their weights and
# the position in their epochs).
_RUN_IDENTITY = (
    'model',
    'backbone',
    'num_classes',
    'model_args',
    'model_kwargs',
    'freeze_backbone',
    'data_dir',
    'synthetic',
    'dataset_layout',
    'dataset_args',
    'train_split',
    'eval_split',
    'val_fraction',
    'split_seed',
)


def _saved_config(config: dict[str, Any]) -> tuple[dict[str, Any], Path] | None:
    """The resolved config the checkpoint `--resume` names (or OUTPUT's last complete one) was trained with."""
    checkpoint = resume_checkpoint(config['output'], config['resume'])
    if checkpoint is None:
        return None
    saved = json.loads((checkpoint / CHECKPOINT_STATE).read_text()).get('config')
    return (saved, checkpoint) if isinstance(saved, dict) else None


def _restore_saved_config(config: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """`--resume`: the checkpoint's config, with only the options given now (flags, recipe) replacing its values."""
    found = _saved_config(config)
    if found is None:
        return config
    saved, checkpoint = found
    for dest in _RUN_IDENTITY:
        if dest in explicit and dest in saved and config[dest] != saved[dest]:
            flag = '--' + dest.replace('_', '-')
            raise UsageError(
                f'--resume continues the run of {checkpoint}, which trained with {flag} {saved[dest]!r}; '
                f'{flag} {config[dest]!r} would change the model or its data. Drop {flag} to continue that run, '
                f'or pass a new --output to start another.'
            )
    restored = dict(_DEFAULTS)
    restored.update({k: v for k, v in saved.items() if k in _DEFAULTS})
    restored.update({k: config[k] for k in explicit})
    restored['output'], restored['resume'] = config['output'], config['resume']
    return restored


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """The command line's config: defaults, then the recipe's values, then the flags given (see
    `TrainConfig.resolve`). `--epochs` may extend a finished run."""
    given = {k: v for k, v in vars(args).items() if k in _DEFAULTS}
    return TrainConfig(**given).resolve(given=set(given) - {'recipe'})


def _check(config: TrainConfig) -> None:
    """Every option's own rule, one line each, before torch is imported."""
    if not config.model:
        no_saved = (
            f' ({config.output} has no checkpoint with a saved config to resume)' if config.resume == 'auto' else ''
        )
        raise UsageError(
            f'No model{no_saved}: pass --model (e.g. lfd_resnet50, or lfd with --backbone) or set it in --recipe.'
        )
    if config.synthetic == bool(config.data_dir):
        raise UsageError('Pass exactly one of --data-dir DIR and --synthetic.')
    for name in ('epochs', 'batch_size', 'grad_accum', 'eval_every', 'keep_checkpoints', 'img_size'):
        if getattr(config, name) < 1:
            raise UsageError(f'--{name.replace("_", "-")} must be >= 1, got {getattr(config, name)}.')
    for name in ('workers', 'threads', 'lr', 'weight_decay', 'warmup_epochs', 'label_smoothing', 'mixup', 'cutmix',
                 'patience', 'min_delta'):  # fmt: skip
        if getattr(config, name) < 0:
            raise UsageError(f'--{name.replace("_", "-")} must be >= 0, got {getattr(config, name)}.')
    if not 0 <= config.val_fraction < 1:
        raise UsageError(f'--val-fraction is a fraction in [0, 1), got {config.val_fraction}.')
    if config.eval_split == 'validation':
        config.eval_split = 'val'
    if config.val_fraction and config.eval_split == 'test':
        raise UsageError(
            '--val-fraction carves a val split to evaluate on: drop --eval-split test (or --val-fraction).'
        )
    for name in ('max_unreadable', 'hflip', 'mixup_prob'):
        if getattr(config, name) is not None and not 0 <= getattr(config, name) <= 1:
            raise UsageError(f'--{name.replace("_", "-")} is a fraction in [0, 1], got {getattr(config, name)}.')
    if config.cache_features != 'off':
        flag = f'--cache-features {config.cache_features}'
        if config.mixup or config.cutmix or config.color_jitter:
            raise UsageError(
                f'{flag} caches the maps of fixed views, but --mixup/--cutmix/--color-jitter change every image '
                f'each epoch: drop them or {flag}.'
            )
        if config.cache_features == 'crops' and config.train_crop != 'resize_crop':
            raise UsageError(
                f'{flag} stands for the random crop of --train-crop resize_crop, not of {config.train_crop}: pass '
                f'--train-crop resize_crop, or --cache-features flip.'
            )
    if config.synthetic and config.dataset_layout not in ('auto', 'folder'):
        raise UsageError(
            f'--synthetic writes an image-folder dataset, but --dataset-layout is {config.dataset_layout} (a recipe may'
            f' set it): pass --dataset-layout folder with --synthetic, or train on --data-dir DIR instead.'
        )
