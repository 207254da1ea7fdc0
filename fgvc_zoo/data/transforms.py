"""Train and eval transforms from a model's timm data config, at the FGVC resolution."""

import math
from collections.abc import Callable
from typing import Any

import torch.nn as nn
from timm.data import create_transform, resolve_data_config
from timm.data.transforms import str_to_interp_mode
from torchvision import transforms

__all__ = ['TRAIN_CROPS', 'create_transforms', 'resolve_fgvc_data_config']

# How a training image becomes the input square: timm's random resized crop, or the FGVC references' resize then
# random crop (NTS-Net, PMG: 512 -> 448).
TRAIN_CROPS = ('rrc', 'resize_crop')


def resolve_fgvc_data_config(
    model_or_data_config: nn.Module | dict[str, Any], img_size: int | None = None
) -> dict[str, Any]:
    """timm's data config (input_size, interpolation, mean, std, crop_pct, crop_mode) of a model or a config dict.

    `img_size` overrides the square input size; None keeps the config's, which is 448 for every fgvc_zoo head
    (`fgvc_cfg`) and the backbone's own size for a plain timm model.
    """
    if isinstance(model_or_data_config, nn.Module):
        config = resolve_data_config(model=model_or_data_config)
    else:
        config = resolve_data_config(pretrained_cfg=dict(model_or_data_config))
    if img_size is not None:
        config['input_size'] = (config['input_size'][0], img_size, img_size)
    return config


def create_transforms(
    model_or_data_config: nn.Module | dict[str, Any],
    is_training: bool,
    img_size: int | None = None,
    train_crop: str = 'rrc',
    **aug: Any,
) -> Callable:
    """PIL image -> normalised tensor.

    Train, `train_crop='rrc'` (the default, timm's): random resized crop (area `scale`, default 0.08-1) + horizontal
    flip. `train_crop='resize_crop'` (the FGVC references', NTS-Net and PMG: 512 -> 448): resize the short side to
    `img_size / crop_pct` (the data config's crop_pct; 0.875 for the heads, so 448 px crops of a 512 px image), then
    a random `img_size` crop + flip, so the object is never zoomed beyond that fixed scale and is seen at the scale
    eval sees it. Which one trains better is an experiment, not a given: the default stays timm's until measured.
    Colour jitter is off unless `color_jitter=` is given. Eval: resize so the crop is `crop_pct` of the short side,
    then centre crop. `aug` goes to `timm.data.create_transform` (scale, ratio, hflip, color_jitter, auto_augment,
    re_prob, ...); `resize_crop` takes every option but the random-resized-crop ones (scale, ratio).
    """
    if train_crop not in TRAIN_CROPS:
        raise ValueError(f"train_crop='{train_crop}' is not one of {TRAIN_CROPS}.")
    config = resolve_fgvc_data_config(model_or_data_config, img_size)
    if is_training:
        aug.setdefault('color_jitter', None)
    if not is_training or train_crop == 'rrc':
        return create_transform(**config, is_training=is_training, **aug)
    given = [name for name in ('scale', 'ratio') if aug.get(name) is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)} set the random resized crop's range, which train_crop='resize_crop' does not do: "
            f"drop them or use train_crop='rrc'."
        )
    # timm's own train pipeline with its first, cropping stage swapped: flips, colour, normalisation stay timm's.
    primary, secondary, final = create_transform(**config, is_training=True, separate=True, **aug)
    flips = [
        t for t in primary.transforms if isinstance(t, (transforms.RandomHorizontalFlip, transforms.RandomVerticalFlip))
    ]
    crop_size = tuple(config['input_size'][1:])
    resize = transforms.Resize(
        math.floor(min(crop_size) / config['crop_pct']), interpolation=str_to_interp_mode(config['interpolation'])
    )
    return transforms.Compose(
        [resize, transforms.RandomCrop(crop_size), *flips, *secondary.transforms, *final.transforms]
    )
