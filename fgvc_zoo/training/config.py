"""The trainer's configuration: every option is a flag; `--recipe FILE.yaml` holds flag names as keys, and flags
on the command line win; `--resume` restores the checkpoint's config, which only the options given now override.
"""

import argparse
import difflib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError

__all__ = ['add_train_arguments', 'resolve_config']

# dest -> default and dest -> value type of every flag: the arguments themselves default to SUPPRESS so that
# `resolve_config` can tell a flag given on the command line (wins) from one left to the recipe or the default.
_DEFAULTS: dict[str, Any] = {}
_TYPES: dict[str, Any] = {}
_CHOICES: dict[str, Sequence[Any]] = {}


def _add(group, *flags: str, default: Any = None, help: str = '', **kwargs: Any) -> None:
    action = group.add_argument(*flags, default=argparse.SUPPRESS, help=f'{help} (default: {default})', **kwargs)
    _DEFAULTS[action.dest] = default
    _TYPES[action.dest] = kwargs.get('type', bool if kwargs.get('action') is argparse.BooleanOptionalAction else str)
    if kwargs.get('choices'):
        _CHOICES[action.dest] = kwargs['choices']


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every trainer option as a flag; a recipe may set any of them by its flag name."""
    _add(parser, '--recipe', help='YAML file whose keys are flag names (lr, batch-size, ...); flags given win')

    group = parser.add_argument_group('model')
    _add(group, '--model', help='registered model (lfd_resnet50) or a generic head (lfd) with --backbone')
    _add(group, '--backbone', help='timm backbone of a generic head, e.g. resnet50 or convnext_tiny')
    _add(
        group,
        '--pretrained',
        action=argparse.BooleanOptionalAction,
        default=False,
        help='start from pretrained weights (the backbone ImageNet weights for a fresh head)',
    )
    _add(
        group,
        '--backbone-weights',
        help="the backbone's timm ImageNet weights from a local .safetensors file, or a folder or Hugging Face cache "
        'holding them (no Hub needed); for a fresh head, with or without --pretrained',
    )
    _add(group, '--num-classes', type=int, help='number of classes; default: the number in the dataset')
    _add(group, '--model-args', help="head options as 'key=value,key=value' (values parsed as YAML)")
    _add(group, '--model-kwargs', help='head options as a YAML mapping, inline or a .yaml file path')
    _add(
        group,
        '--channels-last',
        action=argparse.BooleanOptionalAction,
        default=False,
        help='channels-last memory format',
    )
    _add(
        group,
        '--grad-checkpointing',
        action=argparse.BooleanOptionalAction,
        default=False,
        help='gradient checkpointing in the backbone (less memory, more compute)',
    )

    group = parser.add_argument_group('data')
    _add(group, '--data-dir', help='dataset root (any layout create_dataset knows) or a Hugging Face dataset name')
    _add(group, '--dataset-name', help='dataset name for the model card (cub_200_2011, ...); default: folder name')
    _add(group, '--dataset-layout', default='auto', help='layout of --data-dir (auto detects it)')
    _add(
        group,
        '--synthetic',
        action=argparse.BooleanOptionalAction,
        default=False,
        help='generate a tiny synthetic dataset into OUTPUT/synthetic_data and train on it (demo, no download)',
    )
    _add(
        group,
        '--train-split',
        help="split to train on; default: 'trainval' where the data has one and the run evaluates on test "
        "(Aircraft, Flowers: the papers' protocol), else 'train'",
    )
    _add(
        group,
        '--eval-split',
        choices=('val', 'validation', 'test'),
        help='held-out split evaluated every epoch, and the name of its metrics (val_top1 or test_top1); default: '
        "'val' where the data has one (or --val-fraction carves it), else 'test'. Tune on val, never on test",
    )
    _add(
        group,
        '--val-fraction',
        type=float,
        default=0.0,
        help='carve a stratified val split of this fraction of each class from the training images and evaluate on '
        'it (the test split is then never read)',
    )
    _add(group, '--split-seed', type=int, default=0, help='seed of the --val-fraction carve')
    _add(group, '--dataset-args', help="layout options as 'key=value,...', e.g. 'level=family' for aircraft")
    _add(
        group,
        '--max-unreadable',
        type=float,
        default=0.01,
        help='fraction of a split that may fail to decode (dropped, listed) before training stops',
    )
    _add(group, '--img-size', type=int, default=448, help='training and evaluation resolution')
    _add(
        group,
        '--train-crop',
        default='rrc',
        choices=('rrc', 'resize_crop'),
        help="training crop: 'rrc' timm's random resized crop (area --scale); 'resize_crop' the FGVC references': the "
        "model's eval resize (the heads squash to img-size / crop_pct, e.g. 600x600 for LFD, 550x550 for IAGN), then "
        'a random img-size crop and a flip',
    )
    _add(
        group,
        '--train-crop-padding',
        type=int,
        default=0,
        help="zero pixels around the resized image before the random crop of 'resize_crop' (PMG: 8)",
    )
    _add(group, '--scale', type=float, nargs=2, help='random-resized-crop area range; default: the data config')
    _add(group, '--hflip', type=float, help='horizontal flip probability; default: the data config')
    _add(group, '--color-jitter', type=float, help='colour jitter strength; default: the data config')
    _add(
        group,
        '--workers',
        type=int,
        default=min(4, os.cpu_count() or 1),
        help='data loader worker processes per training process',
    )

    group = parser.add_argument_group('optimisation')
    _add(group, '--epochs', type=int, default=100, help='training epochs')
    _add(group, '--batch-size', type=int, default=16, help='images per process per step')
    _add(group, '--grad-accum', type=int, default=1, help='batches accumulated per optimiser step')
    _add(
        group,
        '--opt',
        default='momentum',
        help="optimiser name of timm's create_optimizer_v2: 'momentum' is SGD with classical momentum (the papers' "
        "and references'), timm's 'sgd' is Nesterov; adamw, ...",
    )
    _add(group, '--lr', type=float, default=0.01, help='learning rate of the head')
    _add(group, '--backbone-lr-mult', type=float, default=0.1, help='backbone lr = this x --lr (papers: 0.1)')
    _add(group, '--weight-decay', type=float, default=5e-4, help='weight decay')
    _add(group, '--momentum', type=float, default=0.9, help='SGD momentum')
    _add(group, '--clip-grad', type=float, help='clip the gradient norm to this value')
    _add(group, '--sched', default='step', choices=('step', 'cosine'), help='learning-rate schedule, per epoch')
    _add(group, '--decay-epochs', type=float, default=40, help='step schedule: epochs between decays')
    _add(group, '--decay-rate', type=float, default=0.1, help='step schedule: lr factor at each decay')
    _add(group, '--min-lr', type=float, default=0.0, help='cosine schedule: final learning rate')
    _add(group, '--warmup-epochs', type=int, default=0, help='linear warm-up epochs')
    _add(group, '--warmup-lr', type=float, default=1e-5, help='learning rate at the start of warm-up')
    _add(group, '--label-smoothing', type=float, default=0.0, help='label smoothing of the targets')
    _add(group, '--mixup', type=float, default=0.0, help='mixup alpha (0: off)')
    _add(group, '--cutmix', type=float, default=0.0, help='cutmix alpha (0: off)')
    _add(group, '--mixup-prob', type=float, default=1.0, help='probability of mixing a batch')
    _add(
        group,
        '--model-ema',
        action=argparse.BooleanOptionalAction,
        default=False,
        help='keep an EMA of the weights (timm ModelEmaV3); it is evaluated and exported',
    )
    _add(group, '--model-ema-decay', type=float, default=0.9998, help='EMA decay')

    group = parser.add_argument_group('run')
    _add(group, '--amp', default='no', choices=('no', 'bf16', 'fp16'), help='mixed precision (Accelerate)')
    _add(
        group,
        '--cpu',
        action=argparse.BooleanOptionalAction,
        default=False,
        help='train on CPU even when an accelerator exists',
    )
    _add(
        group,
        '--find-unused-parameters',
        action=argparse.BooleanOptionalAction,
        default=False,
        help='DDP searches for unused parameters (on by itself for models with several steps per batch)',
    )
    _add(
        group,
        '--threads',
        type=int,
        default=0,
        help='torch CPU threads per training process; 0: OMP_NUM_THREADS if set, else the cores over (processes on '
        'this machine x --workers), so that torch and the data workers do not oversubscribe the cores',
    )
    _add(group, '--seed', type=int, default=42, help='seed of weights, augmentation and the per-epoch shuffle')
    _add(
        group,
        '--deterministic',
        action=argparse.BooleanOptionalAction,
        default=False,
        help='torch deterministic algorithms (bitwise-reproducible GPU runs, slower)',
    )
    _add(group, '--output', default='output/train', help='output folder (checkpoints, logs, exported model)')
    _add(
        group,
        '--resume',
        nargs='?',
        const='auto',
        help='continue from a checkpoint folder, or (flag alone) from the last complete one in OUTPUT',
    )
    _add(group, '--keep-checkpoints', type=int, default=2, help='epoch checkpoints kept (the last K)')
    _add(group, '--eval-every', type=int, default=1, help='evaluate every N epochs (and always after the last)')
    _add(group, '--log-with', help='Accelerate tracker: tensorboard, wandb, ... (also logs to metrics.csv/jsonl)')


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
    from .checkpoints import CHECKPOINT_STATE, resume_checkpoint  # torch: a usage error is refused before it loads

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


def resolve_config(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults, then the recipe's values, then the flags given on the command line.

    With `--resume`, the config saved in the checkpoint replaces the defaults and the recipe's values it was
    trained with; the flags (and recipe) given now override only what they name, and may not change the model or
    the data. `--epochs` may extend a finished run.
    """
    config = dict(_DEFAULTS)
    explicit: set[str] = set()
    recipe = getattr(args, 'recipe', None)
    if recipe:
        path = Path(recipe)
        if not path.is_file():
            raise FileNotFoundError(f'--recipe {recipe}: no such file.')
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f'--recipe {recipe}: not a plain YAML mapping of flag names to values: {e}') from e
        if not isinstance(values, dict):
            raise ValueError(f'--recipe {recipe}: expected a mapping of flag names to values.')
        for key, value in values.items():
            dest = str(key).lstrip('-').replace('-', '_')
            if dest not in _DEFAULTS or dest == 'recipe':
                close = difflib.get_close_matches(dest, list(_DEFAULTS), n=3)
                hint = f' Did you mean {", ".join(c.replace("_", "-") for c in close)}?' if close else ''
                raise UsageError(f"--recipe {recipe}: unknown option '{key}'.{hint}")
            config[dest] = _convert(dest, value, f'--recipe {recipe}')
            explicit.add(dest)
    given = {k: v for k, v in vars(args).items() if k in _DEFAULTS}
    config.update(given)
    explicit.update(given)
    if config['resume']:
        config = _restore_saved_config(config, explicit - {'recipe'})
    config = argparse.Namespace(**config)
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
    for name in ('workers', 'threads', 'lr', 'weight_decay', 'warmup_epochs', 'label_smoothing', 'mixup', 'cutmix'):
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
    if config.synthetic and config.dataset_layout not in ('auto', 'folder'):
        raise UsageError(
            f'--synthetic writes an image-folder dataset, but --dataset-layout is {config.dataset_layout} (a recipe may'
            f' set it): pass --dataset-layout folder with --synthetic, or train on --data-dir DIR instead.'
        )
    return config


# `resolve_config` reads the flag table that declaring the flags fills: declared once here, so that it works for a
# Python caller who built no parser.
add_train_arguments(argparse.ArgumentParser())
