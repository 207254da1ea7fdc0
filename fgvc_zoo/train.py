"""The one Accelerate trainer for every fgvc_zoo head.

`python -m fgvc_zoo.train`, `accelerate launch -m fgvc_zoo.train`, `torchrun ... -m fgvc_zoo.train` and
`fgvc-zoo train` all run `train_main`. The trainer knows nothing about any head: it only uses the model contract
(`model(x, target=y, step=k)` -> `FgvcOutput` for k < `model.num_train_steps`, `model(x)` -> logits,
`model.backbone_parameters()`, `model.model_args`), so LFD, DP-Net, IAGN and any future head train unchanged.
A plain timm classifier (`--model resnet50`, the baseline the heads must beat) trains through the same loop with
the contract's defaults: one step a batch, the trainer's cross-entropy on its logits (soft targets with mixup or
label smoothing), every parameter but `get_classifier()`'s as the backbone (so `--backbone-lr-mult` means the
same for both), and no model args of fgvc_zoo's (`--model-args` reach timm's constructor: drop_rate,
pretrained_cfg_overlay, ...).

Every option is a flag; `--recipe FILE.yaml` holds flag names as keys, and flags on the command line win.
Each epoch a checkpoint is written with `accelerator.save_state` into a temporary folder that is renamed into
place (`os.replace`), so a kill at any moment leaves the previous checkpoint whole; `--resume` continues from the
last complete one to the same weights as an unbroken run.
"""

import argparse
import csv
import difflib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from .errors import UsageError

__all__ = [
    'add_train_arguments',
    'train_main',
    'resolve_config',
    'parse_model_kwargs',
    'state_dict_sha256',
    'cpu_threads',
    'main',
]

_logger = logging.getLogger(__name__)

CHECKPOINT_DIR = 'checkpoints'
CHECKPOINT_STATE = 'trainer_state.json'
SCHEDULER_STATE = 'scheduler.json'
EMA_WEIGHTS = 'ema.safetensors'
LOCK_NAME = '.train.lock'
_CHECKPOINT_RE = re.compile(r'^epoch_(\d{3,})$')

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
    _add(group, '--train-split', default='train', help='split to train on')
    _add(group, '--val-split', default='val', help='split to evaluate on')
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
        help="training crop: 'rrc' timm's random resized crop (area --scale); 'resize_crop' the FGVC references' "
        'resize of the short side to img-size / crop_pct (448 -> 512) then a random img-size crop',
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
    _add(group, '--opt', default='sgd', help="optimiser name of timm's create_optimizer_v2 (sgd, adamw, ...)")
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
    'val_split',
)


def _saved_config(config: dict[str, Any]) -> tuple[dict[str, Any], Path] | None:
    """The resolved config the checkpoint `--resume` names (or OUTPUT's last complete one) was trained with."""
    if config['resume'] == 'auto':
        checkpoints = _complete_checkpoints(Path(config['output']) / CHECKPOINT_DIR)
        if not checkpoints:
            return None
        checkpoint = checkpoints[-1]
    else:
        checkpoint = Path(config['resume'])
        if not (checkpoint / CHECKPOINT_STATE).is_file():
            return None  # `_find_resume` names the problem
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
    for name in ('epochs', 'batch_size', 'grad_accum', 'eval_every', 'keep_checkpoints'):
        if getattr(config, name) < 1:
            raise UsageError(f'--{name.replace("_", "-")} must be >= 1, got {getattr(config, name)}.')
    return config


def parse_model_kwargs(
    model_args: str | None,
    model_kwargs: Any = None,
    flag: str = '--model-args',
) -> dict[str, Any]:
    """Head options from `--model-kwargs` (YAML mapping, inline or file) updated by `--model-args 'k=v,...'`."""
    kwargs: dict[str, Any] = {}
    if isinstance(model_kwargs, dict):
        kwargs.update(model_kwargs)
    elif model_kwargs:
        text = Path(model_kwargs).read_text() if Path(model_kwargs).is_file() else model_kwargs
        loaded = yaml.safe_load(text)
        if not isinstance(loaded, dict):
            raise ValueError(f'--model-kwargs {model_kwargs!r}: expected a YAML mapping like "{{num_regions: 4}}".')
        kwargs.update(loaded)
    # Split on commas outside brackets so that list values survive: 'region_sizes=[0.3,0.4],zoom_size=32'.
    for item in re.split(r',(?![^\[\(]*[\]\)])', model_args or ''):
        if not item.strip():
            continue
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise UsageError(f"{flag}: '{item}' is not key=value (e.g. 'num_regions=4,zoom_size=224').")
        kwargs[key.strip()] = yaml.safe_load(value)
    return kwargs


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A digest of the exact bytes of every tensor (by sorted name): equal digests mean bitwise-equal weights."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _build_datasets(config: argparse.Namespace, accelerator) -> tuple:
    """The train and val splits (untransformed until the model's data config is known), unreadable images dropped."""
    from .data import UnreadableDataError, create_dataset, make_synthetic_fgvc

    root = config.data_dir
    if config.synthetic:
        root = str(Path(config.output) / 'synthetic_data')
        if accelerator.is_main_process and not (Path(root) / 'train').is_dir():
            make_synthetic_fgvc(root, seed=config.seed)
        accelerator.wait_for_everyone()
    options = parse_model_kwargs(config.dataset_args, None, flag='--dataset-args')
    splits = []
    for split in (config.train_split, config.val_split):
        dataset = create_dataset(
            root, split=split, layout=config.dataset_layout, max_unreadable_fraction=config.max_unreadable, **options
        )
        try:
            dataset.check_images()  # every process drops the same images
        except UnreadableDataError as e:
            raise UnreadableDataError(f'{e} (the trainer flag: --max-unreadable FRACTION)') from e
        splits.append(dataset)
    return splits[0], splits[1]


def _set_transforms(config: argparse.Namespace, model: nn.Module, train_set, val_set) -> None:
    """Train (`--train-crop`, flip, ...) and eval (resize, centre crop) transforms from the model's config."""
    from .data import create_transforms

    aug = {k: getattr(config, k) for k in ('scale', 'hflip', 'color_jitter') if getattr(config, k) is not None}
    if 'scale' in aug:
        if config.train_crop != 'rrc':
            raise ValueError(
                f'--scale sets the random resized crop, which --train-crop {config.train_crop} does not do: '
                f'drop --scale or pass --train-crop rrc.'
            )
        aug['scale'] = tuple(aug['scale'])
    train_set.transform = create_transforms(
        model, is_training=True, img_size=config.img_size, train_crop=config.train_crop, **aug
    )
    val_set.transform = create_transforms(model, is_training=False, img_size=config.img_size)


def _build_model(config: argparse.Namespace, num_classes: int, load_weights: bool = True) -> nn.Module:
    """The head of `--model`; `load_weights=False` (a resumed run: the checkpoint has the weights) skips the
    pretrained and `--backbone-weights` loads, so that a resume needs neither the Hub nor the weights file."""
    import timm

    from .models import head_models, list_heads  # registers the heads

    kwargs = parse_model_kwargs(config.model_args, config.model_kwargs)
    architecture = config.model.split('.')[0]
    heads = head_models()
    if ':' not in config.model and not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, heads, n=5)
        hint = f' Close matches: {", ".join(close)}.' if close else ''
        raise UsageError(f"--model '{config.model}' is not a registered model.{hint} See `fgvc-zoo list`.")
    plain = ':' not in config.model and architecture not in heads
    if plain and config.backbone:
        raise UsageError(
            f'--model {config.model} is a plain timm classifier, which takes no --backbone (it configures an fgvc_zoo '
            f'head): train it without, or train a head over it with --model lfd --backbone {architecture}.'
        )
    if config.backbone:
        kwargs['backbone'] = config.backbone
    if 'backbone' not in kwargs and architecture in list_heads():
        raise UsageError(
            f'--model {config.model} is a generic head: pass --backbone NAME (any timm model, e.g. resnet50, or '
            f'test_resnet for a quick try), or a named variant such as --model {architecture}_resnet50.'
        )
    if config.backbone_weights and load_weights:
        if plain:  # the file is the whole classifier's: timm loads it as the model's pretrained weights
            kwargs['pretrained_cfg_overlay'] = dict(file=str(config.backbone_weights))
            config.pretrained = True
        else:
            kwargs['backbone_weights'] = config.backbone_weights
    # A resume loads no weights (the checkpoint has them), except an FGVC tag's, which can change the config.
    pretrained = config.pretrained and (load_weights or (not plain and _has_full_weights(config.model)))
    try:
        model = timm.create_model(config.model, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except TypeError as e:
        if not (plain and kwargs and 'unexpected keyword argument' in str(e)):
            raise
        # A plain model takes timm's own arguments only (drop_rate, pretrained_cfg_overlay, ...), never a head's.
        raise UsageError(
            f'--model-args/--model-kwargs: {config.model} is a plain timm classifier and refuses them ({e}). '
            f'Pass only its timm arguments (e.g. drop_rate), or train a head over it with --model lfd --backbone '
            f'{architecture}.'
        ) from e
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _num_train_steps(model: nn.Module) -> int:
    """Optimiser steps a batch takes: what the model declares, else one (a plain timm classifier)."""
    return getattr(model, 'num_train_steps', 1)


def _backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The model's `backbone_parameters()`, else every parameter but its classifier's (a plain timm classifier)."""
    if hasattr(model, 'backbone_parameters'):
        return list(model.backbone_parameters())
    classifier_ids = {id(p) for p in model.get_classifier().parameters()}
    return [p for p in model.parameters() if id(p) not in classifier_ids]


def _train_output(model: nn.Module, unwrapped: nn.Module, x: torch.Tensor, target: torch.Tensor, step: int):
    """The step's `FgvcOutput`: a head (it declares `num_train_steps`) computes its own loss terms; for a plain
    classifier the trainer takes the cross-entropy of its logits (class indices, or the soft targets of mixup and
    label smoothing). `model` is the prepared (maybe DDP-wrapped) model, called so that DDP sees the forward."""
    if hasattr(unwrapped, 'num_train_steps'):
        return model(x, target=target, step=step)
    from .models import FgvcOutput

    logits = model(x)
    return FgvcOutput(loss=F.cross_entropy(logits, target), logits=logits)


def _has_full_weights(name: str) -> bool:
    """Whether `pretrained=True` on `name` loads the whole model (an FGVC tag), which can change its config."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name) if ':' not in name else None
    return cfg is None or any(getattr(cfg, k, None) for k in ('hf_hub_id', 'file', 'url', 'state_dict'))


def _build_optimizer(config: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    """timm's optimiser over two groups: the backbone at `backbone_lr_mult` x lr (as the papers do), the head."""
    from timm.optim import create_optimizer_v2

    backbone_ids = {id(p) for p in _backbone_parameters(model)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {'params': [p for p in trainable if id(p) not in backbone_ids], 'lr': config.lr},
        {'params': [p for p in trainable if id(p) in backbone_ids], 'lr': config.lr * config.backbone_lr_mult},
    ]
    groups = [g for g in groups if g['params']]  # a frozen backbone leaves its group empty
    return create_optimizer_v2(
        groups, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay, momentum=config.momentum
    )


def _build_scheduler(config: argparse.Namespace, optimizer: torch.optim.Optimizer):
    from timm.scheduler import create_scheduler_v2

    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=config.sched,
        num_epochs=config.epochs,
        decay_epochs=config.decay_epochs,
        decay_rate=config.decay_rate,
        min_lr=config.min_lr,
        warmup_lr=config.warmup_lr,
        warmup_epochs=config.warmup_epochs,
    )
    return scheduler


def _train_loader(config: argparse.Namespace, train_set, num_processes: int, pin_memory: bool):
    """Shuffled training batches of `--batch-size` images per process (sharded by `accelerator.prepare`).

    As timm's train loader, the last partial batch is dropped (Mixup pairs images; a batch of one breaks the BatchNorm
    of IAGN's classifiers), unless the split is smaller than one batch on every process, where dropping it would leave
    no step at all: then accelerate pads each process's batch to `--batch-size` by repeating images, and a single
    process trains on the whole split as one batch.
    """
    drop_last = len(train_set) >= config.batch_size * num_processes
    batch = config.batch_size if drop_last or num_processes > 1 else len(train_set)
    if (config.mixup > 0 or config.cutmix > 0) and batch % 2:
        at_most = f' of at most {len(train_set)}' if batch < config.batch_size else ''
        raise UsageError(
            f'--mixup/--cutmix mix the images of a batch in pairs, so a batch must be even, but it holds '
            f'{batch} images ({len(train_set)} training images, --batch-size {config.batch_size}): '
            f'pass an even --batch-size{at_most}.'
        )
    return torch.utils.data.DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=config.workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=config.workers > 0,
    )


def _complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders that were renamed into place (so are whole), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _CHECKPOINT_RE.match(p.name) and (p / CHECKPOINT_STATE).is_file()]
    return sorted(found, key=lambda p: int(_CHECKPOINT_RE.match(p.name).group(1)))


def _lock_output(output: Path):
    """Hold an exclusive lock on OUTPUT for the whole run, so that two runs never write into one folder."""
    import fcntl

    output.mkdir(parents=True, exist_ok=True)
    lock = open(output / LOCK_NAME, 'w')
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the OS when the process ends, even on kill
    except BlockingIOError:
        lock.close()
        raise RuntimeError(
            f'{output} is in use by another run (it holds the lock {output / LOCK_NAME}): wait for '
            f'it to finish, or pass another --output.'
        ) from None
    return lock


def _find_resume(config: argparse.Namespace) -> Path | None:
    checkpoints = _complete_checkpoints(Path(config.output) / CHECKPOINT_DIR)
    if config.resume is None:
        if checkpoints:
            raise FileExistsError(
                f'{config.output} already holds checkpoints ({checkpoints[-1].name}): pass --resume to continue '
                f'or a new --output to start over.'
            )
        return None
    if config.resume != 'auto':
        path = Path(config.resume)
        if not (path / CHECKPOINT_STATE).is_file():
            raise FileNotFoundError(f'--resume {path}: not a complete checkpoint folder (no {CHECKPOINT_STATE}).')
        return path
    if not checkpoints:
        _logger.info('--resume: no complete checkpoint in %s, starting from scratch.', config.output)
        return None
    return checkpoints[-1]


def _save_extra_state(folder: Path, scheduler, ema) -> None:
    # Not `register_for_checkpointing`: accelerate would pickle them and unpickle with weights_only=False on
    # resume, so a crafted checkpoint could run code. JSON and safetensors only hold data.
    from safetensors.torch import save_file

    (folder / SCHEDULER_STATE).write_text(json.dumps(scheduler.state_dict()))
    if ema is not None:
        save_file({k: v.contiguous() for k, v in ema.module.state_dict().items()}, str(folder / EMA_WEIGHTS))


def _load_extra_state(folder: Path, scheduler, ema) -> None:
    from safetensors.torch import load_file

    if scheduler is not None:
        scheduler.load_state_dict(json.loads((folder / SCHEDULER_STATE).read_text()))
    if ema is not None:
        if not (folder / EMA_WEIGHTS).is_file():
            raise FileNotFoundError(
                f'--model-ema, but checkpoint {folder} has no {EMA_WEIGHTS}: it was trained '
                f'without EMA. Resume without --model-ema, or start a new --output.'
            )
        ema.module.load_state_dict(load_file(str(folder / EMA_WEIGHTS)))


def _save_checkpoint(accelerator, output: Path, trainer_state: dict[str, Any], keep: int, scheduler, ema) -> Path:
    """`save_state` into a temporary folder renamed into place, so a kill leaves the previous one whole."""
    root = output / CHECKPOINT_DIR
    final = root / f'epoch_{trainer_state["epoch"]:03d}'
    tmp = root / f'.{final.name}.tmp'
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))  # every process writes its RNG state into the folder
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _save_extra_state(tmp, scheduler, ema)
            from .hub import share_file

            for weights in tmp.glob('*.safetensors'):  # safetensors writes 0600; teammates need to read them
                share_file(weights)
            # Written last: a folder with a trainer state is whole (see `_complete_checkpoints`).
            (tmp / CHECKPOINT_STATE).write_text(json.dumps(trainer_state, indent=2))
            if final.exists():  # left by an earlier run into the same output
                shutil.rmtree(final)
            os.replace(tmp, final)
    except OSError as e:
        kept = _complete_checkpoints(root)
        raise OSError(
            e.errno,
            (
                f'Writing checkpoint {final} failed ({e.strerror or e}). The last complete checkpoint, '
                f'{kept[-1] if kept else "none"}, is untouched: free space or fix {root}, then rerun with --resume.'
            ),
            e.filename,
        ) from e
    if accelerator.is_main_process:
        for old in _complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _check_finite(accelerator, loss: torch.Tensor, epoch: int, batch: int, step: int, last_good: Path | None):
    """Stop every process together when any has a non-finite loss, before it reaches the weights."""
    bad = accelerator.gather(torch.isfinite(loss.detach()).logical_not().reshape(1)).any()
    if bad:
        raise FloatingPointError(
            f'Non-finite loss ({loss.item()}) at epoch {epoch + 1}, batch {batch}, model step {step}. '
            f'The last good checkpoint is {last_good or "none (no epoch finished)"}. '
            f'Lower --lr, use --amp bf16 instead of fp16, or set --clip-grad, then --resume.'
        )


def _broadcast_buffers(accelerator, model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics), as DDP does at the start of its next forward.

    Each rank's last forward updated them from its own images; an EMA taken of those would differ across ranks.
    """
    if accelerator.num_processes > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)


def _train_one_epoch(
    config: argparse.Namespace,
    epoch: int,
    model: nn.Module,
    loader,
    optimizer,
    accelerator,
    ema,
    mixup,
    num_classes: int,
    trainer_state: dict[str, Any],
    last_good: Path | None,
) -> dict[str, float]:
    from timm.data.mixup import mixup_target
    from tqdm.auto import tqdm

    model.train()
    unwrapped = accelerator.unwrap_model(model)
    num_steps = _num_train_steps(unwrapped)
    totals: dict[str, torch.Tensor] = {}
    num_forward = 0
    num_images = 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=f'epoch {epoch + 1}/{config.epochs}', disable=not accelerator.is_local_main_process)
    for batch_index, (x, y) in enumerate(bar):
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if mixup is not None:
            x, target = mixup(x, y)
        elif config.label_smoothing > 0:
            target = mixup_target(y, num_classes, smoothing=config.label_smoothing)
        else:
            target = y
        for step in range(num_steps):
            with accelerator.accumulate(model):
                output = _train_output(model, unwrapped, x, target, step)
                _check_finite(accelerator, output.loss, epoch, batch_index, step, last_good)
                accelerator.backward(output.loss)
                if config.clip_grad and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), config.clip_grad)
                optimizer.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                trainer_state['step'] += 1
                if ema is not None:
                    _broadcast_buffers(accelerator, unwrapped)
                    ema.update(unwrapped, step=trainer_state['step'])
            for name, value in {'loss': output.loss, **{f'loss_{k}': v for k, v in output.losses.items()}}.items():
                totals[name] = totals.get(name, 0.0) + value.detach().float()
            num_forward += 1
        num_images += x.shape[0] * accelerator.num_processes
        images_per_s = num_images / (time.perf_counter() - start)
        bar.set_postfix(
            loss=f'{output.loss.item():.4f}', lr=f'{optimizer.param_groups[0]["lr"]:.2e}', img_s=f'{images_per_s:.1f}'
        )
    means = {k: accelerator.reduce(v / num_forward, reduction='mean').item() for k, v in sorted(totals.items())}
    means['images_per_s'] = num_images / (time.perf_counter() - start)
    return {f'train_{k}': v for k, v in means.items()}


@torch.no_grad()
def _evaluate(model: nn.Module, loader, accelerator, prefix: str = 'val') -> dict[str, float]:
    """Top-1/top-5 accuracy (%) and mean cross-entropy over the whole split, gathered from every process."""
    model.eval()
    loss_sum, correct1, correct5, count = 0.0, 0, 0, 0
    for x, y in loader:
        logits = model(x)
        logits, y = accelerator.gather_for_metrics((logits.float(), y))
        loss_sum += F.cross_entropy(logits, y, reduction='sum').item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
        count += y.numel()
    return {
        f'{prefix}_loss': loss_sum / count,
        f'{prefix}_top1': 100 * correct1 / count,
        f'{prefix}_top5': 100 * correct5 / count,
    }


def _write_metrics(output: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.csv/jsonl from the checkpointed history, so a resumed run never duplicates an epoch."""
    with open(output / 'metrics.jsonl', 'w') as f:
        f.writelines(json.dumps(row) + '\n' for row in history)
    fields = list(dict.fromkeys(k for row in history for k in row))
    with open(output / 'metrics.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)


def _curve_panels(history: list[dict[str, Any]]) -> list[tuple[str, str, list[str]]]:
    """(title, y label, metric keys) of each panel of curves.png: every loss on its own axes.

    A head's training loss is a sum of terms (LFD: image + region + hybrid) and the validation loss is one
    cross-entropy: on one axis they would look like a huge generalisation gap.
    """
    keys = list(dict.fromkeys(k for row in history for k in row))
    terms = [k for k in keys if k.startswith('train_loss_')]
    panels = [('training loss' + (' (sum of the terms)' if terms else ''), 'loss', ['train_loss'])]
    panels += [(f'training loss term: {k[len("train_loss_") :]}', 'loss', [k]) for k in terms]
    panels += [('validation cross-entropy', 'cross-entropy', [k for k in ('val_loss', 'ema_loss') if k in keys])]
    panels += [('accuracy', 'accuracy (%)', [k for k in ('val_top1', 'val_top5', 'ema_top1', 'ema_top5') if k in keys])]
    panels += [('learning rate (head)', 'learning rate', ['lr'])]
    return [(title, label, [k for k in panel_keys if k in keys]) for title, label, panel_keys in panels]


def _plot_curves(output: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib.pyplot as plt

    fig = _curves_figure(history)
    fig.savefig(output / 'curves.png', dpi=100)
    plt.close(fig)


def _curves_figure(history: list[dict[str, Any]]):
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [panel for panel in _curve_panels(history) if panel[2]]
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, (title, label, keys) in zip(axes.flat, panels, strict=False):
        for key in keys:
            points = [(row['epoch'], row[key]) for row in history if key in row]
            ax.plot(*zip(*points, strict=True), marker='o', ms=3, label=key)
        ax.set(xlabel='epoch', ylabel=label, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def _export(
    model: nn.Module,
    output: Path,
    label_names: list[str] | None,
    results: dict[str, Any],
    img_size: int,
) -> None:
    """model.safetensors + config.json (timm format, label names, trained input size) + card, via fgvc_zoo.hub."""
    from .hub import save_pretrained

    data_config = dict(input_size=(3, img_size, img_size))
    save_pretrained(model, output, label_names=label_names, results=results, data_config=data_config)


def _versions() -> dict[str, str]:
    import accelerate
    import timm

    import fgvc_zoo

    return {
        'torch': torch.__version__,
        'timm': timm.__version__,
        'accelerate': accelerate.__version__,
        'fgvc_zoo': fgvc_zoo.__version__,
        'python': sys.version.split()[0],
    }


def train_main(args: argparse.Namespace) -> int:
    """Train, checkpoint every epoch, evaluate, and export the final model into `--output`."""
    config = resolve_config(args)
    output = Path(config.output)
    created = not output.exists()
    held = {'lock': False}  # set once this run holds OUTPUT's lock: never clean up a folder another run owns
    try:
        return _run(config, output, held)
    except BaseException:
        # A failed start leaves no folder of its own behind (lock file, generated data): only whole checkpoints
        # make a folder worth keeping.
        if created and held['lock'] and not _complete_checkpoints(output / CHECKPOINT_DIR):
            shutil.rmtree(output, ignore_errors=True)
        raise


def cpu_threads(requested: int = 0, workers: int = 0) -> int:
    """torch threads for one process: `requested`, or else the cores this process may use over (the processes on
    this machine x the data workers of each), at least 1.

    torch starts one thread per core in every process; with several processes or data workers beside them, the
    threads fight over the cores (DP-Net trained 5x faster on a busy 2-core machine with one thread a process).
    """
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    processes = int(os.environ.get('LOCAL_WORLD_SIZE', '1'))
    return max(1, cores // (processes * max(1, workers)))


def _run(config: argparse.Namespace, output: Path, held: dict[str, bool]) -> int:
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
    from accelerate.utils import ProjectConfiguration, set_seed

    if config.threads < 0:
        raise UsageError(f'--threads {config.threads}: pass a number of threads, or 0 for the automatic choice.')
    if config.threads or 'OMP_NUM_THREADS' not in os.environ:  # an explicit OMP_NUM_THREADS (torchrun sets 1) wins
        torch.set_num_threads(cpu_threads(config.threads, config.workers))
    ddp_kwargs = DistributedDataParallelKwargs(find_unused_parameters=config.find_unused_parameters)
    accelerator = Accelerator(
        # Accelerate sees a torchrun/MPI launch on CPU (gloo) only when told it runs on CPU.
        cpu=config.cpu or not torch.accelerator.is_available(),
        mixed_precision=config.amp,
        gradient_accumulation_steps=config.grad_accum,
        log_with=config.log_with,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / 'logs')),
        # The per-epoch shuffle is seeded with seed + epoch: a resumed epoch sees the same order.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        kwargs_handlers=[ddp_kwargs],
    )
    if config.log_with and not accelerator.log_with:
        raise ValueError(f'--log-with {config.log_with}: that tracker is not installed (e.g. pip install tensorboard).')
    set_seed(config.seed, deterministic=config.deterministic)
    lock = _lock_output(output) if accelerator.is_main_process else None
    held['lock'] = lock is not None
    try:
        return _train(config, accelerator, ddp_kwargs)
    finally:
        if lock is not None:
            lock.close()


def _train(config: argparse.Namespace, accelerator, ddp_kwargs) -> int:
    from accelerate.utils import gather_object
    from timm.data import Mixup
    from timm.utils import ModelEmaV3

    output = Path(config.output)
    resume_from = _find_resume(config)

    train_set, val_set = _build_datasets(config, accelerator)
    label_names = list(train_set.classes)
    num_classes = config.num_classes or len(label_names)
    if num_classes < len(label_names):
        raise UsageError(f'--num-classes {num_classes} is smaller than the {len(label_names)} dataset classes.')
    model = _build_model(config, num_classes, load_weights=resume_from is None)
    _set_transforms(config, model, train_set, val_set)
    if _num_train_steps(model) > 1:
        # Each of the model's steps trains part of it; DDP must not wait for the gradients of the other parts.
        ddp_kwargs.find_unused_parameters = True
        if config.grad_accum > 1:
            raise UsageError(
                f'--model {config.model} takes {_num_train_steps(model)} optimiser steps per batch, which cannot be '
                f"combined with --grad-accum {config.grad_accum}: use --grad-accum 1 (or the head's single-step "
                f'option in --model-args).'
            )
    optimizer = _build_optimizer(config, model)
    scheduler = _build_scheduler(config, optimizer)

    mixing = config.mixup > 0 or config.cutmix > 0
    mixup = (
        Mixup(
            mixup_alpha=config.mixup,
            cutmix_alpha=config.cutmix,
            prob=config.mixup_prob,
            label_smoothing=config.label_smoothing,
            num_classes=num_classes,
        )
        if mixing
        else None
    )
    train_loader = _train_loader(config, train_set, accelerator.num_processes, accelerator.device.type == 'cuda')
    val_loader = torch.utils.data.DataLoader(
        val_set,
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=config.workers,
        pin_memory=accelerator.device.type == 'cuda',
    )
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    # The EMA copy is taken of the prepared model, so it lives on the device (and in the dtype) prepare gave it:
    # a copy taken before would stay on the CPU, and timm's update would mix CPU and GPU tensors.
    ema = ModelEmaV3(accelerator.unwrap_model(model), decay=config.model_ema_decay) if config.model_ema else None
    # timm schedulers step by epoch index and are not torch LR schedulers: checkpointed by us, not prepared.

    trainer_state: dict[str, Any] = {'epoch': 0, 'step': 0, 'history': []}
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        trainer_state = json.loads((resume_from / CHECKPOINT_STATE).read_text())
        saved_epochs = trainer_state.get('config', {}).get('epochs', config.epochs)
        if saved_epochs != config.epochs:
            # timm's schedulers are functions of the epoch and their length: rebuilt for the new --epochs.
            accelerator.print(
                f'--epochs {config.epochs} (was {saved_epochs}): the lr schedule now spans {config.epochs}.'
            )
        _load_extra_state(resume_from, scheduler if saved_epochs == config.epochs else None, ema)
        accelerator.print(f'Resumed from {resume_from} (epoch {trainer_state["epoch"]}, step {trainer_state["step"]}).')
    last_good = resume_from

    resolved = dict(vars(config))
    trainer_state['config'] = resolved  # what `--resume` restores
    if config.log_with:
        scalars = {k: v for k, v in resolved.items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers('fgvc_zoo', config=scalars)
    accelerator.print(
        f'Training {config.model} on {len(train_set)} images ({num_classes} classes), world size '
        f'{accelerator.num_processes}, device {accelerator.device}, {config.epochs} epochs from epoch '
        f'{trainer_state["epoch"] + 1}.'
    )

    for epoch in range(trainer_state['epoch'], config.epochs):
        scheduler.step(epoch)
        train_loader.set_epoch(epoch)
        row = {'epoch': epoch + 1, 'lr': optimizer.param_groups[0]['lr']}
        row |= _train_one_epoch(
            config,
            epoch,
            model,
            train_loader,
            optimizer,
            accelerator,
            ema,
            mixup,
            num_classes,
            trainer_state,
            last_good,
        )
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            row |= _evaluate(model, val_loader, accelerator)
            if ema is not None:
                row |= _evaluate(ema.module, val_loader, accelerator, prefix='ema')
        trainer_state['epoch'] = epoch + 1
        trainer_state['history'].append(row)
        last_good = _save_checkpoint(accelerator, output, trainer_state, config.keep_checkpoints, scheduler, ema)
        if accelerator.is_main_process:
            _write_metrics(output, trainer_state['history'])
        if config.log_with:
            accelerator.log({k: v for k, v in row.items() if k != 'epoch'}, step=epoch + 1)
        accelerator.print(' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in row.items()))

    exported = ema.module if ema is not None else accelerator.unwrap_model(model)
    digest = state_dict_sha256(exported.state_dict())
    digests = gather_object([digest])
    if accelerator.is_main_process:
        if len(set(digests)) != 1:
            raise RuntimeError(f'Weights differ across ranks after training: {digests}. Please report this.')
        from .hub import pretrained_weights_of

        prefix = 'ema_' if ema is not None else 'val_'
        final = trainer_state['history'][-1]
        results = {
            # Metrics of the exported weights (the EMA's with --model-ema), named as the model card expects.
            'metrics': {k[len(prefix) :]: v for k, v in final.items() if k.startswith(prefix)},
            'train_metrics': {k: v for k, v in final.items() if k.startswith('train_')},
            'history': trainer_state['history'],
            'dataset': {
                'name': config.dataset_name or Path(train_set.root).name,
                'layout': train_set.layout,
                'root': str(train_set.root),
                'train_images': len(train_set),
                'val_images': len(val_set),
                'unreadable': {'train': train_set.unreadable, 'val': val_set.unreadable},
            },
            'exported_weights': 'ema' if ema is not None else 'model',
            # What --pretrained really loaded (None: random init): the card's base_model comes from this only.
            'pretrained_weights': pretrained_weights_of(exported, config.pretrained),
            'weights_sha256_per_rank': digests,
            'world_size': accelerator.num_processes,
            'seed': config.seed,
            'num_classes': num_classes,
            'label_names': label_names,
            'config': resolved,
            'versions': _versions(),
        }
        if len(label_names) != num_classes:
            _logger.warning(
                '--num-classes %d differs from the %d dataset classes: config.json gets no label_names.',
                num_classes,
                len(label_names),
            )
        _export(exported, output, label_names if len(label_names) == num_classes else None, results, config.img_size)
        (output / 'results.json').write_text(json.dumps(results, indent=2, default=str))
        _plot_curves(output, trainer_state['history'])
        accelerator.print(
            f'World size {accelerator.num_processes}; weights identical on every rank ({digest[:12]}). '
            f'Exported to {output}.'
        )
    accelerator.end_training()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m fgvc_zoo.train` (and `accelerate launch`/`torchrun -m fgvc_zoo.train`): errors as `fgvc-zoo train`."""
    from .cli import ArgumentParser, report_errors

    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')

    def run(args: list[str]) -> int:
        parser = ArgumentParser(prog='python -m fgvc_zoo.train', description=__doc__.split('\n')[1])
        add_train_arguments(parser)
        return train_main(parser.parse_args(args))

    return report_errors(run, sys.argv[1:] if argv is None else list(argv), 'python -m fgvc_zoo.train')


if __name__ == '__main__':
    sys.exit(main())
