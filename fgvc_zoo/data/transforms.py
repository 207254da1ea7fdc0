"""Train and eval transforms from a model's timm data config, at the FGVC resolution."""

from collections.abc import Callable
from typing import Any

import torch.nn as nn
from timm.data import create_transform, resolve_data_config

__all__ = ['create_transforms', 'resolve_fgvc_data_config']


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
    model_or_data_config: nn.Module | dict[str, Any], is_training: bool, img_size: int | None = None, **aug: Any
) -> Callable:
    """PIL image -> normalised tensor.

    Train: random resized crop + horizontal flip (the FGVC papers' augmentation; colour jitter is off unless
    `color_jitter=` is given). Eval: resize so the crop is `crop_pct` of the short side, then centre crop.
    `aug` goes to `timm.data.create_transform` (scale, ratio, hflip, color_jitter, auto_augment, re_prob, ...).
    """
    config = resolve_fgvc_data_config(model_or_data_config, img_size)
    if is_training:
        aug.setdefault('color_jitter', None)
    return create_transform(**config, is_training=is_training, **aug)
