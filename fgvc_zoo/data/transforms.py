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
# random crop (NTS-Net: 600x600 -> 448; PMG: 550x550 -> 448 with padding 8).
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
    padding: int = 0,
    **aug: Any,
) -> Callable:
    """PIL image -> normalised tensor.

    Train, `train_crop='rrc'` (the default, timm's): random resized crop (area `scale`, default 0.08-1) + horizontal
    flip. `train_crop='resize_crop'` (the FGVC references'): the eval resize, then a random `img_size` crop (with
    `padding` zero pixels around the resized image first) + flip, so the object is seen at the scale eval sees it.
    With the heads' `crop_mode='squash'` the resize is to the square `img_size / crop_pct`: NTS-Net's
    `Resize((600, 600)) -> RandomCrop(448) -> RandomHorizontalFlip` (LFD, crop_pct 448/600) and PMG's
    `Resize((550, 550)) -> RandomCrop(448, padding=8) -> RandomHorizontalFlip` (IAGN, crop_pct 448/550, padding 8);
    with `crop_mode='center'` the short side is resized to `img_size / crop_pct`, aspect kept.
    Colour jitter is off unless `color_jitter=` is given. Eval: timm's, from the data config: `crop_mode='squash'`
    resizes both sides to `img_size / crop_pct` and centre-crops (NTS-Net's `Resize((600, 600)) -> CenterCrop(448)`,
    PMG's 550 -> 448), `'center'` resizes the short side. `aug` goes to `timm.data.create_transform` (scale, ratio,
    hflip, color_jitter, auto_augment, re_prob, ...); `resize_crop` takes every option but the random-resized-crop
    ones (scale, ratio).
    """
    if train_crop not in TRAIN_CROPS:
        raise ValueError(f"train_crop='{train_crop}' is not one of {TRAIN_CROPS}.")
    config = resolve_fgvc_data_config(model_or_data_config, img_size)
    if is_training:
        aug.setdefault('color_jitter', None)
    if padding and (not is_training or train_crop != 'resize_crop'):
        raise ValueError(f"padding={padding} pads the random crop of train_crop='resize_crop' only.")
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
    if config.get('crop_mode') == 'squash':
        scale_size = tuple(math.floor(side / config['crop_pct']) for side in crop_size)
    else:
        scale_size = math.floor(min(crop_size) / config['crop_pct'])
    resize = transforms.Resize(scale_size, interpolation=str_to_interp_mode(config['interpolation']))
    crop = transforms.RandomCrop(crop_size, padding=padding or None)
    return transforms.Compose([resize, crop, *flips, *secondary.transforms, *final.transforms])
