"""A head's pretrained cfgs: the FGVC resolution over its backbone's normalisation, the named variants of the popular
backbones, and the FGVC tags whose weights are published."""

from collections.abc import Callable, Sequence
from typing import Any

import timm
from timm.models import generate_default_cfgs

from ._registry import split_model_name
from .hub_io import hub_cfg

__all__ = [
    'fgvc_cfg',
    'fgvc_tags',
    'generate_head_cfgs',
    'POPULAR_BACKBONES',
    'DEFAULT_BACKBONE',
    'FGVC_DATASETS',
    'PUBLISHED_TAGS',
]

# Backbones that get a named variant per head (`lfd_resnet50`, ...), with the ImageNet tag of timm's Hub weights
# the variant's default tag loads into the backbone. `create_model('lfd', backbone=...)` takes any other.
POPULAR_BACKBONES: dict[str, str] = {
    'resnet50': 'a1_in1k',
    'resnet101': 'a1h_in1k',
    'convnext_tiny': 'fb_in22k_ft_in1k',
    'convnext_base': 'fb_in22k_ft_in1k',
    'tf_efficientnet_lite0': 'in1k',
    'vit_base_patch16_224': 'augreg2_in21k_ft_in1k',
    'swin_base_patch4_window7_224': 'ms_in22k_ft_in1k',
}

# The papers' ImageNet ResNet-50, torchvision's as their reference code loads it: `<head>_resnet50.tv_in1k`.
PAPER_RESNET50_TAG = 'tv_in1k'

# The backbone of a generic name (`timm.create_model('lfd')`): every registry name builds with its defaults, as timm's
# tools expect. The CLI still refuses a generic head without --backbone (a recipe names its backbone).
DEFAULT_BACKBONE = 'resnet50'

# The datasets of the papers' recipes: a `<head>_resnet50.<dataset>` tag names fgvc_zoo's Hub repo for them.
FGVC_DATASETS: dict[str, int] = {'cub_200_2011': 200, 'stanford_cars': 196, 'fgvc_aircraft': 100}
# The FGVC tags (of `fgvc_tags`) whose weights are on the Hub. Only these are registered with timm, so that
# `timm.list_pretrained` never advertises a repo that does not exist. Releasing one: `fgvc-zoo push` its export to
# `fgvc-zoo/<tag>`, check `fgvc_zoo.hub.load_model('hf-hub:fgvc-zoo/<tag>')`, then add the tag here.
PUBLISHED_TAGS: frozenset[str] = frozenset()


def fgvc_cfg(backbone: str | None, classifier: Sequence[str], **kwargs: Any) -> dict:
    """A pretrained cfg at the FGVC resolution (448) with the mean/std of the backbone's ImageNet weights."""
    cfg = {
        'url': '',
        'num_classes': 1000,
        'input_size': (3, 448, 448),
        'pool_size': None,
        'crop_pct': 0.875,
        'crop_mode': 'center',
        'interpolation': 'bilinear',
        'mean': timm.data.IMAGENET_DEFAULT_MEAN,
        'std': timm.data.IMAGENET_DEFAULT_STD,
        'first_conv': '',
        'classifier': tuple(classifier),
        'license': 'apache-2.0',
    }
    if backbone is not None:
        backbone_cfg = timm.models.get_pretrained_cfg(backbone)
        if backbone_cfg is not None:
            cfg.update(_backbone_cfg_fields(backbone_cfg), license=backbone_cfg.license or 'apache-2.0')
    cfg.update(kwargs)
    return cfg


def fgvc_tags(head: str) -> dict[str, int]:
    """Every FGVC tag a head can publish (`lfd_resnet50.cub_200_2011`), with its number of classes."""
    return {f'{head}_resnet50.{dataset}': n for dataset, n in FGVC_DATASETS.items()}


def generate_head_cfgs(
    head: str,
    cfg_fn: Callable[..., dict[str, Any]],
    published: frozenset[str] | None = None,
) -> dict[str, Any]:
    """A head's `default_cfgs`: generic, ImageNet backbone tags (the defaults), then its published FGVC Hub tags.

    `published` (default `PUBLISHED_TAGS`) decides which FGVC tags exist: a tag whose weights are not on the Hub
    is not registered, so `timm.list_pretrained` and `pretrained=True` never point at a missing repo.
    """
    published = PUBLISHED_TAGS if published is None else published
    candidates = fgvc_tags(head)
    unknown = {t for t in published if split_model_name(t, heads=(head,)).head and t not in candidates}
    if unknown:
        raise ValueError(f'Published tags {sorted(unknown)} are not FGVC tags of {head}: {sorted(candidates)}.')
    entries = {head: cfg_fn(DEFAULT_BACKBONE)}
    entries.update({f'{head}_{name}.{tag}': cfg_fn(f'{name}.{tag}') for name, tag in POPULAR_BACKBONES.items()})
    # The torchvision ResNet-50 the papers and their references start from (the paper recipes use it).
    entries[f'{head}_resnet50.{PAPER_RESNET50_TAG}'] = cfg_fn(f'resnet50.{PAPER_RESNET50_TAG}')
    resnet50 = f'resnet50.{POPULAR_BACKBONES["resnet50"]}'
    entries.update(
        {name: cfg_fn(resnet50, num_classes=n, **hub_cfg(name)) for name, n in candidates.items() if name in published}
    )
    cfgs = generate_default_cfgs(entries)
    # timm makes the first tag with weights of its own the default; `pretrained=True` on a bare variant name must
    # instead mean the backbone's ImageNet weights (the FGVC tags are for their dataset's classes).
    for name, tag in POPULAR_BACKBONES.items():
        tags = cfgs[f'{head}_{name}'].tags
        tags.remove(tag)
        tags.appendleft(tag)
    return cfgs


def _backbone_cfg_fields(backbone_cfg) -> dict[str, Any]:
    # The backbone decides normalisation and where its first conv is (for in_chans adaptation on load).
    first_conv = backbone_cfg.first_conv
    if isinstance(first_conv, str):
        first_conv = 'backbone.model.' + first_conv if first_conv else ''
    else:
        first_conv = tuple('backbone.model.' + c for c in first_conv or ())
    return dict(mean=backbone_cfg.mean, std=backbone_cfg.std, first_conv=first_conv)
