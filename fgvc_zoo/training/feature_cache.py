"""Training on a frozen backbone's maps computed once (`--cache-features`), instead of one backbone pass per image
per epoch.

A linear probe (`--freeze-backbone`) and a head that trains only on its frozen backbone's map (DP-Net's default,
`FgvcModel.trains_on_frozen_map`) spend almost all of their time in a backbone that never changes. Here the map of
each image is computed once, before the first epoch, for a fixed set of views, and every epoch trains the trainable
layers on those maps. What augmentation means then:

- 'flip': the eval view (resize, centre crop: the pixels val and test see) and, when `--hflip` > 0, its mirror; an
  epoch gives each image once, mirrored with probability `--hflip` (drawn from torch's random state per image, as
  torchvision's RandomHorizontalFlip does). The random crop of `--train-crop` is not reproduced.
- 'crops': the five crops (four corners and centre) of the image resized as `--train-crop resize_crop` resizes it,
  each also mirrored: an epoch gives each image once, one crop drawn uniformly, mirrored with probability `--hflip`;
  a discrete stand-in for resize_crop's random crop (its `--train-crop-padding` is not reproduced).

Colour jitter and mixup change the image itself, so they cannot be cached and are refused. With a deterministic
training transform (no crop to draw: `crop_pct` 1 with resize_crop) the cached run trains on the very inputs the
uncached one does, in the same order with the same flips: both end on the same weights (tests/test_feature_cache.py).
"""

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import transforms
from torchvision.transforms.functional import five_crop
from tqdm.auto import tqdm

from ..errors import UsageError
from ..models import FgvcModel, FgvcOutput
from .checkpoints import state_dict_sha256
from .config import TrainConfig

__all__ = [
    'CachedViews',
    'MapStore',
    'maps_key',
    'check_cacheable',
    'frozen_map',
    'forward_map',
    'cache_datasets',
    'views_transform',
    'views_per_image',
]


def check_cacheable(config: TrainConfig, model: nn.Module, num_processes: int) -> None:
    """Refuse `--cache-features` where the maps are not frozen (a layer before them trains, or the head reads the
    image again), or where more than one process trains (the cached forward bypasses DDP's gradient hooks)."""
    flag = f'--cache-features {config.cache_features}'
    if isinstance(model, FgvcModel) and not model.trains_on_frozen_map:
        raise UsageError(
            f'{flag}: {config.model} trains on more than a frozen map of the image (its backbone trains, or it reads '
            f'the image again, e.g. zooms or crops): drop {flag}.'
        )
    if not isinstance(model, FgvcModel) and not config.freeze_backbone:
        raise UsageError(
            f'{flag}: {config.model} is a plain timm classifier fine-tuned whole; only a linear probe of it '
            f'(--freeze-backbone) trains on frozen maps: add --freeze-backbone or drop {flag}.'
        )
    if num_processes > 1:
        raise UsageError(
            f'{flag} trains in one process ({num_processes} were launched): launch one process, or drop {flag}.'
        )


def frozen_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the cache holds of `x`: a head's `frozen_map`, a plain classifier's `forward_features`."""
    return model.frozen_map(x) if isinstance(model, FgvcModel) else model.forward_features(x)


def forward_map(
    model: nn.Module, features: torch.Tensor, target: torch.Tensor | None = None, step: int = 0
) -> torch.Tensor | FgvcOutput:
    """The model's forward from a cached map: logits, or with `target` the step's `FgvcOutput` (a plain classifier's:
    the cross-entropy of its `forward_head`, as the loop takes it of its logits)."""
    if isinstance(model, FgvcModel):
        return model.forward_map(features, target, step)
    logits = model.forward_head(features)
    return logits if target is None else FgvcOutput(loss=F.cross_entropy(logits, target), logits=logits)


def views_transform(eval_transform: transforms.Compose, views: str, img_size: int, hflip: float) -> Callable:
    """PIL image -> (crops, mirrors, C, H, W): the views `views` caches of an image, from the eval transform (its
    centre crop, or, for 'crops', the five crops of its resized image); mirrors is 2 when `hflip` > 0, else 1."""
    if views == 'crops':
        centre = [t for t in eval_transform.transforms if isinstance(t, transforms.CenterCrop)]
        if len(centre) != 1:
            raise ValueError(f'The eval transform {eval_transform} has no single centre crop to replace by five crops.')
        resize = transforms.Compose([t for t in eval_transform.transforms if t is not centre[0]])

        def crops(image) -> torch.Tensor:
            return torch.stack(five_crop(resize(image), [img_size, img_size]))
    else:

        def crops(image) -> torch.Tensor:
            return eval_transform(image)[None]

    def both(image) -> torch.Tensor:
        seen = crops(image)
        return torch.stack([seen, seen.flip(-1)], dim=1) if hflip > 0 else seen[:, None]

    return both


def views_per_image(views: str, hflip: float) -> int:
    """How many maps `views` caches of an image: its crops (five for 'crops'), each also mirrored when `hflip` > 0."""
    return (5 if views == 'crops' else 1) * (2 if hflip > 0 else 1)


class CachedViews(torch.utils.data.Dataset):
    """Cached maps (crops, mirrors, N, ...) and their targets; item i is image i's map in one view: a crop drawn
    uniformly, mirrored with probability `hflip` (torch's random state, drawn per item as RandomHorizontalFlip does;
    nothing is drawn where there is no choice)."""

    def __init__(self, maps: torch.Tensor, targets: list[int], hflip: float):
        self.maps, self.targets, self.hflip = maps, torch.as_tensor(targets), hflip

    def __len__(self) -> int:
        return self.maps.shape[2]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        crop = int(torch.randint(self.maps.shape[0], (1,))) if self.maps.shape[0] > 1 else 0
        mirrored = self.maps.shape[1] > 1 and bool(torch.rand(1) < self.hflip)
        return self.maps[crop, int(mirrored), index], self.targets[index]


@torch.no_grad()
def _maps(model: nn.Module, dataset, config: TrainConfig, accelerator, desc: str) -> torch.Tensor:
    """The frozen maps of every image of `dataset` (its transform gives (crops, mirrors, C, H, W) an image), on the
    CPU: (crops, mirrors, N, ...)."""
    # A generator of its own: the pass draws nothing from the random state that the training's flips then draw from.
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, num_workers=config.workers, generator=torch.Generator()
    )
    batches = []
    for images, _ in tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process):
        crops, mirrors = images.shape[1:3]
        flat = images.flatten(0, 2).to(accelerator.device)
        if config.channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            maps = frozen_map(model, flat)
        batches.append(maps.float().cpu().unflatten(0, (len(images), crops, mirrors)))
    return torch.cat(batches).movedim(0, 2).contiguous()


class MapStore:
    """Frozen maps kept across the runs of one process, keyed by everything they are computed from (`maps_key`): the
    runs of a comparison that share a frozen backbone (lrs, seeds) compute its maps once. Holds the `entries` most
    recently used sets (each a run's training views and held-out maps) in memory; nothing is written to disk."""

    def __init__(self, entries: int = 2):
        self.entries = entries
        self._maps: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        if key in self._maps:
            self._maps.move_to_end(key)
        return self._maps.get(key)

    def put(self, key: str, maps: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._maps[key] = maps
        while len(self._maps) > self.entries:
            self._maps.popitem(last=False)


def maps_key(config: TrainConfig, model: nn.Module, train_set, val_set, hflip: float, device: torch.device) -> str:
    """A digest of what the maps depend on: the model's frozen tensors (its parameters without gradient and its
    buffers, by name) and which forward reads them, the images and their order, the transforms and views, the batch
    (a convolution's numbers can depend on it), device, precision and memory format."""
    frozen = {name: p for name, p in model.named_parameters() if not p.requires_grad}
    frozen |= {f'buffer:{name}': b for name, b in model.named_buffers()}
    what = dict(
        forward=type(model).__qualname__ if isinstance(model, FgvcModel) else 'forward_features',
        weights=state_dict_sha256(frozen),
        train=train_set.samples, val=val_set.samples, transform=repr(val_set.transform), views=config.cache_features,
        mirrored=hflip > 0, img_size=config.img_size, batch_size=config.batch_size, device=str(device),
        amp=config.amp, channels_last=config.channels_last,
    )  # fmt: skip
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def cache_datasets(
    config: TrainConfig, model: nn.Module, train_set, val_set, accelerator, store: MapStore | None = None
) -> tuple[Any, Any, float]:
    """The training views' and the held-out images' frozen maps, as datasets of (map, target), from the transforms
    `set_transforms` gave them (the eval one and the train one's mirror probability), and the seconds computing them
    took. The model runs once over each, in eval mode (its frozen part's mode in training too), on the accelerator's
    device; with a `store` holding maps of the same key, not at all (0 seconds)."""
    flips = [t.p for t in train_set.transform.transforms if isinstance(t, transforms.RandomHorizontalFlip)]
    hflip = flips[0] if flips else 0.0
    model.to(accelerator.device).eval()
    key = maps_key(config, model, train_set, val_set, hflip, accelerator.device)
    stored = store.get(key) if store is not None else None
    start = time.perf_counter()
    if stored is not None:
        accelerator.print(f'Frozen maps: those an earlier run of this process computed (key {key[:12]}).')
        train_maps, val_maps = stored
    else:
        eval_transform = val_set.transform
        train_set.transform = views_transform(eval_transform, config.cache_features, config.img_size, hflip)
        val_set.transform = views_transform(eval_transform, 'flip', config.img_size, 0.0)
        views = views_per_image(config.cache_features, hflip)
        train_maps = _maps(model, train_set, config, accelerator, f'frozen maps: train ({views} views an image)')
        val_maps = _maps(model, val_set, config, accelerator, f'frozen maps: {config.eval_split}')[0, 0]
        if store is not None:
            store.put(key, (train_maps, val_maps))
    cached_val = torch.utils.data.TensorDataset(val_maps, torch.as_tensor(val_set.targets))
    seconds = 0.0 if stored is not None else time.perf_counter() - start
    return CachedViews(train_maps, train_set.targets, hflip), cached_val, seconds
