"""The one Accelerate trainer for every fgvc_zoo head.

`python -m fgvc_zoo.train`, `accelerate launch -m fgvc_zoo.train`, `torchrun ... -m fgvc_zoo.train` and `fgvc-zoo
train` all run `train` (through `fgvc_zoo.commands.train`). The trainer knows nothing about any head: it only uses
the model contract (`model(x, target=y, step=k)` -> `FgvcOutput` for k < `model.num_train_steps`, `model(x)` ->
logits, `model.backbone_parameters()`, `model.model_args`), so LFD, DP-Net, IAGN and any future head train
unchanged. A plain timm classifier (`--model resnet50`, the baseline the heads must beat) trains through the same
loop with the contract's defaults: one step a batch, the trainer's cross-entropy on its logits (soft targets with
mixup or label smoothing), every parameter but `get_classifier()`'s as the backbone (so `--backbone-lr-mult` means
the same for both), and no model args of fgvc_zoo's (`--model-args` reach timm's constructor: drop_rate,
pretrained_cfg_overlay, ...).

Every option is a flag; `--recipe FILE.yaml` holds flag names as keys, and flags on the command line win
(`fgvc_zoo.training.config`). Each epoch a checkpoint is written with `accelerator.save_state` into a temporary
folder that is renamed into place (`os.replace`), so a kill at any moment leaves the previous checkpoint whole;
`--resume` continues from the last complete one to the same weights as an unbroken run
(`fgvc_zoo.training.checkpoints`). This module is the loop: datasets, model, optimiser, the epochs, evaluation,
curves and the export.
"""

import csv
import difflib
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import accelerate
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import ProjectConfiguration, gather_object, set_seed
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.models import split_model_name_tag
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from .. import __version__
from ..data import (
    MissingSplitError,
    UnreadableDataError,
    carve_val,
    create_dataset,
    create_transforms,
    make_synthetic_fgvc,
)
from ..errors import UsageError
from ..hub import pretrained_weights_of, save_pretrained
from ..models import FgvcOutput, head_models, list_heads, split_model_name
from ..runtime import parse_model_kwargs, parse_options, resolve_device, set_cpu_threads
from .checkpoints import (
    CHECKPOINT_DIR,
    CHECKPOINT_STATE,
    _complete_checkpoints,
    _load_extra_state,
    _save_checkpoint,
    find_resume,
    load_best_weights,
    lock_output,
    release_output,
    restore_state,
    state_dict_sha256,
)
from .config import TrainConfig
from .feature_cache import MapStore, cache_datasets, check_cacheable, forward_map, frozen_map
from .optim import param_groups

__all__ = [
    'train',
    'TrainResult',
    'build_model',
    'set_transforms',
    'build_optimizer',
    'build_scheduler',
    'build_train_loader',
    'check_finite',
    'train_one_epoch',
    'time_train_step',
    'StepTimes',
    'frozen_backbone_eval',
    'curve_panels',
    'curves_figure',
]

_logger = logging.getLogger(__name__)


def _build_datasets(config: TrainConfig, accelerator) -> tuple:
    """The train and held-out splits (untransformed until the model's data config is known), unreadable images
    dropped. Resolves `config.eval_split` and `config.train_split` to the splits really read.

    The held-out split is the data's val split where it has one, else its test split (CUB has no val split); with
    `--val-fraction` it is a stratified val split carved from the training images and the test split is not read.
    Evaluating on test, a dataset with an official val split trains on 'trainval', as the papers do.
    """
    root = config.data_dir
    if config.synthetic:
        root = str(Path(config.output) / 'synthetic_data')
        if accelerator.is_main_process and not (Path(root) / 'train').is_dir():
            make_synthetic_fgvc(root, seed=config.seed)
        accelerator.wait_for_everyone()
    options = parse_options(config.dataset_args, '--dataset-args')

    def read(split: str):
        dataset = create_dataset(
            root, split=split, layout=config.dataset_layout, max_unreadable_fraction=config.max_unreadable, **options
        )
        try:
            dataset.check_images()  # every process drops the same images
        except UnreadableDataError as e:
            raise UnreadableDataError(f'{e} (the trainer flag: --max-unreadable FRACTION)') from e
        return dataset

    if config.val_fraction:
        config.eval_split, config.train_split = 'val', config.train_split or 'train'
        full = read(config.train_split)
        train_index, val_index = carve_val(full.targets, config.val_fraction, config.split_seed)
        if not val_index:
            raise UsageError(f'--val-fraction {config.val_fraction} carves no image: no class has two images.')
        train_set = full.subset(train_index, config.train_split)
        # the images check_images dropped before the carve are the training split's, listed once
        train_set.unreadable, train_set.unreadable_reasons = full.unreadable, full.unreadable_reasons
        return train_set, full.subset(val_index, 'val')
    if config.train_split == 'trainval' and config.eval_split in (None, 'val'):
        raise UsageError(
            "--train-split trainval holds the val split: evaluate with --eval-split test, or train on 'train'."
        )
    held_out = None
    if config.eval_split is None:
        try:
            held_out = read('val')
            config.eval_split = 'val'
        except MissingSplitError:
            config.eval_split = 'test'
    if held_out is None:
        held_out = read(config.eval_split)
    if config.train_split is None:
        try:
            train_set = read('trainval') if config.eval_split == 'test' else None
            config.train_split = 'trainval' if train_set is not None else 'train'
        except MissingSplitError:
            train_set, config.train_split = None, 'train'
        train_set = train_set or read('train')
    else:
        train_set = read(config.train_split)
    return train_set, held_out


def set_transforms(config: TrainConfig, model: nn.Module, train_set, val_set) -> None:
    """Train (`--train-crop`, flip, ...) and eval (resize, centre crop) transforms from the model's config."""
    aug = {k: getattr(config, k) for k in ('scale', 'hflip', 'color_jitter') if getattr(config, k) is not None}
    if 'scale' in aug:
        if config.train_crop != 'rrc':
            raise ValueError(
                f'--scale sets the random resized crop, which --train-crop {config.train_crop} does not do: '
                f'drop --scale or pass --train-crop rrc.'
            )
        aug['scale'] = tuple(aug['scale'])
    train_set.transform = create_transforms(
        model,
        is_training=True,
        img_size=config.img_size,
        train_crop=config.train_crop,
        padding=config.train_crop_padding,
        **aug,
    )
    val_set.transform = create_transforms(model, is_training=False, img_size=config.img_size)


def build_model(config: TrainConfig, num_classes: int, load_weights: bool = True) -> nn.Module:
    """The head of `--model`; `load_weights=False` (a resumed run: the checkpoint has the weights) skips the
    pretrained and `--backbone-weights` loads, so that a resume needs neither the Hub nor the weights file."""
    kwargs = parse_model_kwargs(config.model_args, config.model_kwargs)
    architecture = split_model_name_tag(config.model)[0]
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
    name = split_model_name(config.model)
    head = None if plain else name.head
    variant_backbone = name.backbone if head else None
    if variant_backbone and kwargs.get('backbone') and split_model_name_tag(kwargs['backbone'])[0] != variant_backbone:
        raise UsageError(
            f'--model {config.model} is {head} over {variant_backbone}, but --backbone {kwargs["backbone"]} asks for '
            f'another backbone: train the generic head (--model {head} --backbone {kwargs["backbone"]}), or drop '
            f'--backbone (from the command line and the recipe) to train {config.model}.'
        )
    if 'backbone' not in kwargs and architecture in list_heads():
        raise UsageError(
            f'--model {config.model} is a generic head: pass --backbone NAME (any timm model, e.g. resnet50, or '
            f'test_resnet for a quick try), or a named variant such as --model {architecture}_resnet50.'
        )
    # A plain model's file is the whole classifier's: timm loads it as the model's pretrained weights.
    plain_file = bool(plain and config.backbone_weights and load_weights)
    if plain_file:  # the file joins any overlay the user gave (e.g. a data config), it does not replace it
        kwargs['pretrained_cfg_overlay'] = {
            **kwargs.get('pretrained_cfg_overlay', {}),
            'file': str(config.backbone_weights),
        }
    elif config.backbone_weights and load_weights:
        kwargs['backbone_weights'] = config.backbone_weights
    # A resume loads no weights (the checkpoint has them), except an FGVC tag's, which can change the config.
    pretrained = plain_file or (config.pretrained and (load_weights or (not plain and _has_full_weights(config.model))))
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
    if config.freeze_backbone:
        if not plain:
            raise UsageError(
                f'--freeze-backbone makes a linear probe of a plain timm classifier; {config.model} is a head, which '
                f"freezes its backbone through its own --model-args (e.g. DP-Net's freeze_backbone=true)."
            )
        for parameter in _backbone_parameters(model):
            parameter.requires_grad_(False)
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
    logits = model(x)
    return FgvcOutput(loss=F.cross_entropy(logits, target), logits=logits)


def frozen_backbone_eval(model: nn.Module) -> None:
    """A linear probe in train mode: every module but the classifier's (and the model itself, whose forward applies
    the pre-classifier dropout) back in eval mode, so BatchNorm normalises with, and never updates, its loaded
    statistics; `model.train()` sets them all to train mode first."""
    classifier = {id(m) for m in model.get_classifier().modules()}
    for module in model.modules():
        if module is not model and id(module) not in classifier:
            module.training = False


class StepTimes(NamedTuple):
    """Seconds a batch of a run takes here: a training batch (every optimiser step of it), and, where the run trains
    on cached maps (`--cache-features`), the one pass that computes a batch's maps (0 otherwise)."""

    train_batch: float
    cache_batch: float


def time_train_step(config: TrainConfig, num_classes: int) -> StepTimes:
    """How long a batch of `config` takes here, on random images (the faster of the second and third batch: the
    first pays for allocation): what `fgvc-zoo compare` estimates from. With `--cache-features` the training batch
    is timed on the maps of the images, as the run trains."""
    set_cpu_threads(config.threads, config.workers)
    model = build_model(config, num_classes)
    from_map = config.cache_features != 'off'
    x = torch.randn(config.batch_size, 3, config.img_size, config.img_size)
    cache_batch = 0.0
    if from_map:
        check_cacheable(config, model, num_processes=1)
        with torch.no_grad():
            model.eval()
            cache_batch = min(_seconds(lambda: frozen_map(model, x)) for _ in range(3))
            x = frozen_map(model, x)
    model.train()
    if config.freeze_backbone:
        frozen_backbone_eval(model)
    optimizer = build_optimizer(config, model)
    target = torch.arange(config.batch_size) % num_classes

    def batch() -> None:
        for step in range(_num_train_steps(model)):
            output = forward_map(model, x, target, step) if from_map else _train_output(model, model, x, target, step)
            output.loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    return StepTimes(min([_seconds(batch) for _ in range(3)][1:]), cache_batch)


def _seconds(work: Callable[[], Any]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def _has_full_weights(name: str) -> bool:
    """Whether `pretrained=True` on `name` loads the whole model (an FGVC tag), which can change its config."""
    cfg = timm.models.get_pretrained_cfg(name) if ':' not in name else None
    return cfg is None or any(getattr(cfg, k, None) for k in ('hf_hub_id', 'file', 'url', 'state_dict'))


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """timm's optimiser over the references' groups (`training.optim.param_groups`): the backbone at
    `backbone_lr_mult` x lr (as the papers do), weight decay on every parameter but `no_weight_decay()`'s."""
    groups = param_groups(model, config.lr, config.backbone_lr_mult, config.weight_decay, _backbone_parameters(model))
    return create_optimizer_v2(
        groups, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay, momentum=config.momentum
    )


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer):
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


def build_train_loader(config: TrainConfig, train_set, num_processes: int, pin_memory: bool):
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


def check_finite(accelerator, loss: torch.Tensor, epoch: int, batch: int, step: int, last_good: Path | None):
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


def train_one_epoch(
    config: TrainConfig,
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
    model.train()
    unwrapped = accelerator.unwrap_model(model)
    if config.freeze_backbone:
        frozen_backbone_eval(unwrapped)
    from_map = config.cache_features != 'off'  # the loader gives cached maps, not images
    num_steps = _num_train_steps(unwrapped)
    totals: dict[str, torch.Tensor] = {}
    num_forward = 0
    num_images = 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=f'epoch {epoch + 1}/{config.epochs}', disable=not accelerator.is_local_main_process)
    for batch_index, (x, y) in enumerate(bar):
        if config.channels_last and not from_map:
            x = x.contiguous(memory_format=torch.channels_last)
        if mixup is not None:
            x, target = mixup(x, y)
        elif config.label_smoothing > 0:
            target = mixup_target(y, num_classes, smoothing=config.label_smoothing)
        else:
            target = y
        for step in range(num_steps):
            with accelerator.accumulate(model):
                if from_map:
                    with accelerator.autocast():
                        output = forward_map(unwrapped, x, target, step)
                else:
                    output = _train_output(model, unwrapped, x, target, step)
                check_finite(accelerator, output.loss, epoch, batch_index, step, last_good)
                if 'initial_loss' not in trainer_state:
                    _record_initial_loss(accelerator, trainer_state, output, target)
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


def _record_initial_loss(accelerator, trainer_state: dict[str, Any], output: FgvcOutput, target) -> None:
    """The first batch's training loss and the cross-entropy of its logits, before any update: where a method starts
    (a classifier initialised with large weights starts far above ln(num_classes))."""
    cross_entropy = F.cross_entropy(output.logits.detach().float(), target)
    values = accelerator.reduce(torch.stack([output.loss.detach().float(), cross_entropy]), reduction='mean')
    trainer_state['initial_loss'], trainer_state['initial_cross_entropy'] = values.tolist()


@torch.no_grad()
def _evaluate(model: nn.Module, loader, accelerator, prefix: str, from_map: bool = False) -> dict[str, float]:
    """Top-1/top-5 accuracy (%) and mean cross-entropy over the whole split, gathered from every process; the keys
    are `prefix`_top1 ..., `prefix` naming the split evaluated ('test', 'val', 'ema_test', ...). `from_map`: the
    loader gives cached maps (`--cache-features`)."""
    model.eval()
    loss_sum, correct1, correct5, count = 0.0, 0, 0, 0
    for x, y in loader:
        if from_map:
            with accelerator.autocast():
                logits = forward_map(accelerator.unwrap_model(model), x)
        else:
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


def curve_panels(history: list[dict[str, Any]]) -> list[tuple[str, str, list[str]]]:
    """(title, y label, metric keys) of each panel of curves.png: every loss on its own axes.

    A head's training loss is a sum of terms (LFD: image + region + hybrid) and the validation loss is one
    cross-entropy: on one axis they would look like a huge generalisation gap.
    """
    keys = list(dict.fromkeys(k for row in history for k in row))
    terms = [k for k in keys if k.startswith('train_loss_')]
    panels = [('training loss' + (' (sum of the terms)' if terms else ''), 'loss', ['train_loss'])]
    panels += [(f'training loss term: {k[len("train_loss_") :]}', 'loss', [k]) for k in terms]
    held_out = next(
        (k[: -len('_top1')] for k in keys if k.endswith('_top1') and not k.startswith(('train', 'ema'))), 'val'
    )
    split = 'validation' if held_out == 'val' else held_out
    losses = [f'{held_out}_loss', f'ema_{held_out}_loss']
    panels += [(f'{split} cross-entropy', 'cross-entropy', [k for k in losses if k in keys])]
    accuracies = [f'{p}{held_out}_top{k}' for p in ('', 'ema_') for k in (1, 5)]
    panels += [(f'{split} accuracy', 'accuracy (%)', [k for k in accuracies if k in keys])]
    panels += [('learning rate (head)', 'learning rate', ['lr'])]
    return [(title, label, [k for k in panel_keys if k in keys]) for title, label, panel_keys in panels]


def _plot_curves(output: Path, history: list[dict[str, Any]]) -> None:
    curves_figure(history).savefig(output / 'curves.png', dpi=100)


def curves_figure(history: list[dict[str, Any]]):
    """The curves of `history`, a Figure of its own (Agg canvas): no pyplot state, the caller's backend untouched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = [panel for panel in curve_panels(history) if panel[2]]
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(4.2 * columns, 3.2 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False)
    epochs = [row['epoch'] for row in history]
    for ax, (title, label, keys) in zip(axes.flat, panels, strict=False):
        for key in keys:
            points = [(row['epoch'], row[key]) for row in history if key in row]
            ax.plot(*zip(*points, strict=True), marker='o', ms=3, label=key)
        ax.set(xlabel='epoch', ylabel=label, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)  # whole epochs as ticks, also for a one-epoch run
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
    data_config = dict(input_size=(3, img_size, img_size))
    save_pretrained(model, output, label_names=label_names, results=results, data_config=data_config)


def _versions() -> dict[str, str]:
    return {
        'torch': torch.__version__,
        'timm': timm.__version__,
        'accelerate': accelerate.__version__,
        'fgvc_zoo': __version__,
        'python': sys.version.split()[0],
    }


@dataclass
class TrainResult:
    """What a run gives back: its output folder (the exported model, results.json, curves), the history of its
    epochs, the held-out metrics of the exported weights, the whole results.json record (None on the processes other
    than the main one, which write nothing), and the trained model itself (the exported weights: the best epoch's
    with `keep_best`, the EMA's with `model_ema`), in eval mode."""

    output: Path
    history: list[dict[str, Any]]
    metrics: dict[str, float]
    results: dict[str, Any] | None
    model: nn.Module


def train(config: TrainConfig, map_store: MapStore | None = None) -> TrainResult:
    """Train, checkpoint every epoch, evaluate, and export the final model into `config.output`.

    A config that `TrainConfig.resolve` did not make (one built in Python) is resolved first: its recipe read, a
    resumed run's config restored, every option checked. `map_store`: with `--cache-features`, frozen maps kept for
    (and taken from) the other runs of this process that share them (`fgvc-zoo compare` passes one).
    """
    if not config.is_resolved:
        config = config.resolve()
    output = Path(config.output)
    created = not output.exists()
    accelerator, ddp_kwargs = _accelerator(config, output)
    lock = lock_output(output) if accelerator.is_main_process else None
    try:
        return _train(config, accelerator, ddp_kwargs, map_store)
    except BaseException:
        # A failed start leaves no folder of its own behind (lock file, generated data): only whole checkpoints
        # make a folder worth keeping; and a folder whose lock another run holds is never this run's to clean.
        if created and lock is not None and not _complete_checkpoints(output / CHECKPOINT_DIR):
            shutil.rmtree(output, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            release_output(lock)


def _accelerator(config: TrainConfig, output: Path):
    """The run's Accelerator (and its DDP options, which the model can still change), seeded."""
    set_cpu_threads(config.threads, config.workers)
    ddp_kwargs = DistributedDataParallelKwargs(find_unused_parameters=config.find_unused_parameters)
    accelerator = Accelerator(
        # Accelerate sees a torchrun/MPI launch on CPU (gloo) only when told it runs on CPU.
        cpu=config.cpu or resolve_device('auto').type == 'cpu',
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
    return accelerator, ddp_kwargs


def _train(config: TrainConfig, accelerator, ddp_kwargs, map_store: MapStore | None) -> TrainResult:
    """Datasets, model, optimiser and loaders; the epochs from the start or the checkpoint; the export."""
    resume_from = find_resume(config)

    train_set, val_set = _build_datasets(config, accelerator)
    label_names = list(train_set.classes)
    num_classes = config.num_classes or len(label_names)
    if num_classes < len(label_names):
        raise UsageError(f'--num-classes {num_classes} is smaller than the {len(label_names)} dataset classes.')
    model = build_model(config, num_classes, load_weights=resume_from is None)
    set_transforms(config, model, train_set, val_set)
    from_map = config.cache_features != 'off'
    train_data, val_data, frozen_maps_s = train_set, val_set, None
    if from_map:
        check_cacheable(config, model, accelerator.num_processes)
        train_data, val_data, frozen_maps_s = cache_datasets(config, model, train_set, val_set, accelerator, map_store)
    _check_train_steps(config, model, ddp_kwargs)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer)

    mixup = _build_mixup(config, num_classes)
    pin_memory = accelerator.device.type == 'cuda'
    train_loader = build_train_loader(config, train_data, accelerator.num_processes, pin_memory)
    val_loader = torch.utils.data.DataLoader(
        val_data, batch_size=config.batch_size, shuffle=False, num_workers=config.workers, pin_memory=pin_memory
    )
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    # The EMA copy is taken of the prepared model, so it lives on the device (and in the dtype) prepare gave it:
    # a copy taken before would stay on the CPU, and timm's update would mix CPU and GPU tensors.
    ema = ModelEmaV3(accelerator.unwrap_model(model), decay=config.model_ema_decay) if config.model_ema else None
    # timm schedulers step by epoch index and are not torch LR schedulers: checkpointed by us, not prepared.

    trainer_state = _resume(config, accelerator, resume_from, scheduler, ema)
    if frozen_maps_s is not None:  # this process's pass (a resumed run computes the maps again)
        trainer_state['frozen_maps_s'] = frozen_maps_s
    last_good = resume_from

    _announce(config, accelerator, trainer_state, len(train_set), num_classes)
    if resume_from is None:  # a resume loads no weights: the run's start is the one its first build recorded
        trainer_state['pretrained_weights'] = pretrained_weights_of(accelerator.unwrap_model(model), config.pretrained)

    best = _resume_best(config, resume_from)
    for epoch in range(trainer_state['epoch'], config.epochs):
        if trainer_state.get('stopped_early'):
            break
        scheduler.step(epoch)
        train_loader.set_epoch(epoch)
        row = {'epoch': epoch + 1, 'lr': optimizer.param_groups[0]['lr']}
        row |= train_one_epoch(
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
            row |= _evaluate(model, val_loader, accelerator, config.eval_split, from_map)
            if ema is not None:
                row |= _evaluate(ema.module, val_loader, accelerator, f'ema_{config.eval_split}', from_map)
            exported = ema.module if ema is not None else accelerator.unwrap_model(model)
            best = _track_best(config, trainer_state, row, exported, best)
        last_good = _record_epoch(config, accelerator, trainer_state, row, scheduler, ema, best)
        if trainer_state.get('stopped_early'):
            accelerator.print(
                f'Stopped after epoch {row["epoch"]}: {_exported_prefix(config)}top1 has not improved by more than '
                f'{config.min_delta:g} since epoch {trainer_state["best_epoch"]} (--patience {config.patience}).'
            )
    if config.keep_best and best is not None:
        (ema.module if ema is not None else accelerator.unwrap_model(model)).load_state_dict(best)
        accelerator.print(f'Exporting the weights of epoch {trainer_state["best_epoch"]}, the best held-out top-1.')

    exported = ema.module if ema is not None else accelerator.unwrap_model(model)
    results = _export_run(config, accelerator, accelerator.unwrap_model(model), ema, trainer_state, train_set, val_set)
    accelerator.end_training()
    metrics = _exported_metrics(config, trainer_state)
    return TrainResult(Path(config.output), trainer_state['history'], metrics, results, exported.eval())


def _exported_prefix(config: TrainConfig) -> str:
    """The history keys of the exported weights' held-out metrics (the EMA's with `--model-ema`): what
    `--patience` and `--keep-best` follow and results.json's `metrics` are."""
    return f'{"ema_" if config.model_ema else ""}{config.eval_split}_'


def _track_best(config: TrainConfig, trainer_state, row: dict, exported: nn.Module, best):
    """After an evaluation: the best epoch so far (and, with `--keep-best`, a CPU copy of its weights), and whether
    `--patience` epochs have passed without a gain of more than `--min-delta`. Returns the best weights."""
    metric = row[_exported_prefix(config) + 'top1']
    if 'best_epoch' not in trainer_state or metric > trainer_state['best_top1'] + config.min_delta:
        trainer_state['best_epoch'], trainer_state['best_top1'] = row['epoch'], metric
        if config.keep_best:
            best = {k: v.detach().to('cpu', copy=True) for k, v in exported.state_dict().items()}
    if config.patience and row['epoch'] - trainer_state['best_epoch'] >= config.patience:
        trainer_state['stopped_early'] = row['epoch'] < config.epochs
    return best


def _resume_best(config: TrainConfig, resume_from: Path | None) -> dict[str, torch.Tensor] | None:
    """The best epoch's weights a resumed run's checkpoint carries (`--keep-best`)."""
    if resume_from is None or not config.keep_best:
        return None
    best = load_best_weights(resume_from)
    if best is None and json.loads((resume_from / CHECKPOINT_STATE).read_text()).get('best_epoch'):
        raise FileNotFoundError(
            f'--keep-best, but checkpoint {resume_from} carries no best weights: it was trained without --keep-best. '
            f'Resume without it, or start a new --output.'
        )
    return best


def _build_mixup(config: TrainConfig, num_classes: int) -> Mixup | None:
    """timm's Mixup/CutMix (with label smoothing) when either is on; else None (label smoothing alone is the loop's)."""
    if config.mixup <= 0 and config.cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=config.mixup,
        cutmix_alpha=config.cutmix,
        prob=config.mixup_prob,
        label_smoothing=config.label_smoothing,
        num_classes=num_classes,
    )


def _resume(config: TrainConfig, accelerator, resume_from: Path | None, scheduler, ema) -> dict[str, Any]:
    """The trainer state to continue from: a fresh one, or the checkpoint's, with the weights, optimiser, random
    state, scheduler and EMA restored from it."""
    if resume_from is None:
        return {'epoch': 0, 'step': 0, 'history': []}
    restore_state(accelerator, resume_from)
    trainer_state = json.loads((resume_from / CHECKPOINT_STATE).read_text())
    saved_epochs = trainer_state.get('config', {}).get('epochs', config.epochs)
    if saved_epochs != config.epochs:
        # timm's schedulers are functions of the epoch and their length: rebuilt for the new --epochs.
        accelerator.print(f'--epochs {config.epochs} (was {saved_epochs}): the lr schedule now spans {config.epochs}.')
    _load_extra_state(resume_from, scheduler if saved_epochs == config.epochs else None, ema)
    accelerator.print(f'Resumed from {resume_from} (epoch {trainer_state["epoch"]}, step {trainer_state["step"]}).')
    return trainer_state


def _exported_epoch(config: TrainConfig, trainer_state: dict[str, Any]) -> int:
    """The epoch whose weights are exported: the best held-out one with `--keep-best`, else the last."""
    return trainer_state['best_epoch'] if config.keep_best else trainer_state['history'][-1]['epoch']


def _exported_metrics(config: TrainConfig, trainer_state: dict[str, Any]) -> dict[str, float]:
    """The held-out metrics of the exported weights at the exported epoch, named as the model card expects."""
    prefix = _exported_prefix(config)
    row = next(row for row in trainer_state['history'] if row['epoch'] == _exported_epoch(config, trainer_state))
    return {k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix)}


def _export_run(
    config: TrainConfig, accelerator, model: nn.Module, ema, trainer_state, train_set, val_set
) -> dict[str, Any] | None:
    """Check every rank ended on the same weights, then (main process) export them with results.json and curves;
    returns results.json's record (None on the other processes)."""
    output = Path(config.output)
    label_names = list(train_set.classes)
    num_classes = config.num_classes or len(label_names)
    exported = ema.module if ema is not None else model
    digest = state_dict_sha256(exported.state_dict())
    digests = gather_object([digest])
    if accelerator.is_main_process:
        if len(set(digests)) != 1:
            raise RuntimeError(f'Weights differ across ranks after training: {digests}. Please report this.')
        exported_epoch = _exported_epoch(config, trainer_state)
        final = next(row for row in trainer_state['history'] if row['epoch'] == exported_epoch)
        results = {
            # Metrics of the exported weights (the EMA's with --model-ema), named as the model card expects.
            'metrics': _exported_metrics(config, trainer_state),
            'eval_split': config.eval_split,  # the split 'metrics' and the history's held-out metrics were measured on
            'train_metrics': {k: v for k, v in final.items() if k.startswith('train_')},
            'history': trainer_state['history'],
            'dataset': {
                'name': config.dataset_name or Path(train_set.root).name,
                'layout': train_set.layout,
                'root': _portable_path(train_set.root, output),
                'train_images': len(train_set),
                'train_split': config.train_split,
                f'{config.eval_split}_images': len(val_set),
                'unreadable': {'train': train_set.unreadable, config.eval_split: val_set.unreadable},
            },
            'exported_weights': 'ema' if ema is not None else 'model',
            # Which epoch's weights were exported (the best held-out one with --keep-best), and how long it trained.
            'exported_epoch': exported_epoch,
            'train_steps_per_batch': _num_train_steps(model),
            'epochs_trained': trainer_state['history'][-1]['epoch'],
            'best_epoch': trainer_state.get('best_epoch'),
            'stopped_early': bool(trainer_state.get('stopped_early')),
            **{k: trainer_state[k] for k in ('initial_loss', 'initial_cross_entropy') if k in trainer_state},
            # --cache-features: seconds spent computing the frozen maps (0: another run of this process had them).
            **{k: trainer_state[k] for k in ('frozen_maps_s',) if k in trainer_state},
            # What --pretrained or --backbone-weights really loaded (None: random init), recorded once, here; the
            # card's base_model comes from this only. Absent for a run resumed from a checkpoint that lacks it.
            **{k: v for k, v in trainer_state.items() if k == 'pretrained_weights'},
            'weights_sha256_per_rank': digests,
            'world_size': accelerator.num_processes,
            'seed': config.seed,
            'num_classes': num_classes,
            'label_names': label_names,
            # No machine path: the data and a resumed checkpoint relative to the output folder or by name, the weights
            # file by name only (its record is above).
            'config': dict(
                trainer_state['config'],
                output='.',
                data_dir=config.data_dir and _portable_path(config.data_dir, output),
                resume=config.resume
                and (config.resume if config.resume == 'auto' else _portable_path(config.resume, output)),
                backbone_weights=config.backbone_weights and Path(config.backbone_weights).name,
            ),
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
        return results
    return None


def _portable_path(path: str | Path, output: Path) -> str:
    """A path as a record may keep it: relative to the run's output folder when inside it, else its name only (a
    machine's absolute path means nothing elsewhere)."""
    resolved, base = Path(path).resolve(), output.resolve()
    return str(resolved.relative_to(base)) if resolved.is_relative_to(base) else resolved.name


def _check_train_steps(config: TrainConfig, model: nn.Module, ddp_kwargs) -> None:
    """A model taking several optimiser steps a batch trains part of itself at each: DDP must not wait for the
    gradients of the other parts (set before `prepare` wraps the model), and gradient accumulation cannot span them."""
    if _num_train_steps(model) <= 1:
        return
    ddp_kwargs.find_unused_parameters = True
    if config.grad_accum > 1:
        raise UsageError(
            f'--model {config.model} takes {_num_train_steps(model)} optimiser steps per batch, which cannot be '
            f"combined with --grad-accum {config.grad_accum}: use --grad-accum 1 (or the head's single-step "
            f'option in --model-args).'
        )


def _announce(config: TrainConfig, accelerator, trainer_state, num_images: int, num_classes: int) -> None:
    """Record the resolved config in the trainer state (what `--resume` restores), start the trackers, say what runs."""
    if not (config.pretrained or config.backbone_weights or config.resume or config.synthetic):
        # said once the run is set up, so that an error of the setup is the only line
        _logger.warning(
            f'--model {config.model} trains from random weights: the papers and their numbers start from ImageNet '
            f'weights. Pass --pretrained (or --backbone-weights FILE) unless training from scratch is the point.'
        )
    trainer_state['config'] = asdict(config)
    if config.log_with:
        scalars = {k: v for k, v in trainer_state['config'].items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers('fgvc_zoo', config=scalars)
    accelerator.print(
        f'Training {config.model} on {num_images} images ({num_classes} classes), world size '
        f'{accelerator.num_processes}, device {accelerator.device}, {config.epochs} '
        f'epoch{"s" * (config.epochs != 1)} from epoch {trainer_state["epoch"] + 1}.'
    )


def _record_epoch(config: TrainConfig, accelerator, trainer_state, row: dict, scheduler, ema, best=None) -> Path:
    """The epoch's row into the history, its checkpoint, metrics files, trackers and the log; returns the checkpoint."""
    output = Path(config.output)
    trainer_state['epoch'] = row['epoch']
    trainer_state['history'].append(row)
    checkpoint = _save_checkpoint(accelerator, output, trainer_state, config.keep_checkpoints, scheduler, ema, best)
    if accelerator.is_main_process:
        _write_metrics(output, trainer_state['history'])
    if config.log_with:
        accelerator.log({k: v for k, v in row.items() if k != 'epoch'}, step=row['epoch'])
    accelerator.print(' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in row.items()))
    return checkpoint
