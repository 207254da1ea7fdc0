"""`build_fgvc_model`: a head built the timm way (`build_model_with_cfg`), deciding where `pretrained=True` weights come
from and what timm's factory arguments mean for a head."""

import contextlib
import difflib
import inspect
import json
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import safe_open
from timm.models import build_model_with_cfg, split_model_name_tag
from timm.models._builder import pretrained_cfg_for_features, resolve_pretrained_cfg
from timm.models._features import FeatureGetterNet

from ..errors import UnknownArgumentError
from ._backbone import check_backbone_name
from ._cfgs import DEFAULT_BACKBONE, _backbone_cfg_fields
from ._contract import FgvcModel
from ._registry import split_model_name
from .hub_io import hub_errors, local_weights_record, resolve_weights_file, safetensors_only, weights_record

__all__ = ['build_fgvc_model']

# Preprocessing fields of an export's config.json that a local weights file brings with it.
EXPORTED_DATA_KEYS = ('input_size', 'interpolation', 'crop_pct', 'crop_mode', 'mean', 'std')
# timm's factory arguments of the backbone network itself (timm's train.py `--drop-path`, `--drop-block`, `--bn-*`):
# a head takes them as timm's models do and hands them to its backbone (a head's own `drop_rate` is its dropout).
BACKBONE_FACTORY_ARGS = ('drop_path_rate', 'drop_block_rate', 'bn_momentum', 'bn_eps')


def _align_with_weights_file(pretrained_cfg: dict[str, Any], variant: str) -> None:
    """Check a local weights file against the requested head and take what it was trained with from its export.

    The registered cfg says 1000 classes at 448 px with generic mean/std; without this, timm would drop the trained
    classifiers of any local export (and load another head's file with strict=False, silently). The `config.json`
    that `fgvc_zoo.hub.save_pretrained` writes beside the weights gives the architecture, preprocessing and labels.
    """
    path = Path(pretrained_cfg['file'])
    config_path = path.with_name('config.json')
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        architecture = config.get('architecture', '')
        if split_model_name(architecture).head != split_model_name(variant).head:
            raise ValueError(
                f"{path} holds '{architecture}' weights ({config_path}), not '{variant}': load it with "
                f"timm.create_model('{architecture}', ...) or fgvc_zoo.hub.load_model('{path.parent}')."
            )
        exported_cfg = config.get('pretrained_cfg', {})
        pretrained_cfg.update({k: exported_cfg[k] for k in EXPORTED_DATA_KEYS if k in exported_cfg})
        if config.get('label_names'):
            pretrained_cfg['label_names'] = config['label_names']
    if path.suffix != '.safetensors' or not path.is_file():
        return
    classifier = pretrained_cfg['classifier'][-1] + '.weight'
    with safe_open(str(path), framework='pt') as f:
        if classifier not in f.keys():
            raise ValueError(f"{path} has no '{classifier}': it is not a '{variant}' checkpoint.")
        pretrained_cfg['num_classes'] = f.get_slice(classifier).get_shape()[0]


def _has_weights(cfg: dict[str, Any]) -> bool:
    return any(cfg.get(k) for k in ('url', 'file', 'state_dict', 'hf_hub_id'))


def _check_model_args(model_cls: type[FgvcModel], variant: str, kwargs: dict[str, Any]) -> None:
    """Refuse an argument the head does not take, naming close matches (else a typo ends in a bare TypeError)."""
    parameters = inspect.signature(model_cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    head_args = sorted({*parameters, 'backbone_weights', *BACKBONE_FACTORY_ARGS} - {'self', 'pretrained_backbone'})
    builder_args = set(inspect.signature(build_model_with_cfg).parameters)  # cache_dir, feature_cfg, ...
    for key in kwargs:
        if key not in parameters and key not in builder_args and key not in BACKBONE_FACTORY_ARGS:
            close = difflib.get_close_matches(key, head_args, n=3)
            hint = f' Did you mean {" or ".join(close)}?' if close else ''
            raise UnknownArgumentError(
                f"'{variant}' ({model_cls.__name__}) has no argument '{key}'.{hint} "
                f'Its arguments: {", ".join(head_args)}.'
            )


def build_fgvc_model(
    model_cls: type[FgvcModel],
    variant: str,
    pretrained: bool = False,
    backbone: str | None = None,
    backbone_weights: str | Path | None = None,
    **kwargs: Any,
) -> FgvcModel:
    """Build a head the timm way, deciding where `pretrained=True` weights come from.

    A tag with weights of its own (`hf_hub_id`, `file`, `url`, e.g. `lfd_resnet50.cub_200_2011` or a
    `pretrained_cfg_overlay=dict(file=...)`) loads the whole model; timm drops the classifiers listed in the cfg
    when `num_classes` differs. Any other tag (`lfd_resnet50.a1_in1k`) names the backbone's ImageNet weights
    on timm's Hub repos: the backbone loads them and the head starts fresh.

    `backbone_weights` (a local safetensors file, or a folder or Hugging Face cache holding it) gives the backbone
    of a fresh head its timm weights without the Hub, whatever `pretrained` says.

    timm's factory arguments (docs/architecture.md, "The timm contract"): a generic name without `backbone` takes
    DEFAULT_BACKBONE; `num_classes=0` builds the class layers at the weights' class count (they localise) and drops
    only the classification (`reset_classifier(0)`); `global_pool=''` returns `forward_features`; `device`/`dtype`
    place the model; `features_only=True` returns timm's FeatureGetterNet over the backbone's image pass;
    `drop_path_rate`, `drop_block_rate`, `bn_momentum` and `bn_eps` go to the backbone (BACKBONE_FACTORY_ARGS).
    """
    backbone = DEFAULT_BACKBONE if backbone is None else backbone
    check_backbone_name(backbone)
    head, variant_backbone, _ = split_model_name(variant)
    if variant_backbone and split_model_name_tag(backbone)[0] != variant_backbone:
        # Else 'lfd_resnet50' would silently be LFD over another network under resnet50's name (and cfg).
        raise ValueError(
            f"'{variant}' is {head} over {variant_backbone}, not over '{backbone}': build "
            f"timm.create_model('{head}', backbone='{backbone}') instead."
        )
    device, dtype = kwargs.pop('device', None), kwargs.pop('dtype', None)
    global_pool = kwargs.pop('global_pool', None)
    features_only = kwargs.pop('features_only', False)
    feature_args = {k: kwargs.pop(k) for k in ('out_indices', 'feature_cls', 'output_fmt') if k in kwargs}
    if feature_args and not features_only:
        raise ValueError(f'{", ".join(feature_args)} only apply with features_only=True.')
    if feature_args.pop('feature_cls', 'getter') != 'getter':
        raise ValueError(
            "An fgvc_zoo head's features_only model is timm's FeatureGetterNet over its backbone's image pass: "
            "pass feature_cls='getter' or none."
        )
    _check_model_args(
        model_cls, variant, {k: v for k, v in kwargs.items() if k not in ('pretrained_cfg', 'pretrained_cfg_overlay')}
    )
    pretrained_cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.pop('pretrained_cfg', None),
        pretrained_cfg_overlay=kwargs.pop('pretrained_cfg_overlay', None),
    ).to_dict()
    full_weights = pretrained and _has_weights(pretrained_cfg)
    if full_weights and backbone_weights is not None:
        raise ValueError(
            f'backbone_weights={str(backbone_weights)!r} is for the backbone of a fresh head, but pretrained=True on '
            f"'{variant}' loads the whole model's weights: pass one of the two."
        )
    backbone_name = backbone
    tag = pretrained_cfg.get('tag')
    if '.' not in backbone and tag and f'{backbone}.{tag}' in timm.list_pretrained(f'{backbone}.*'):
        backbone_name = f'{backbone}.{tag}'
    if (
        pretrained
        and backbone_weights is None
        and not full_weights
        and not timm.models.is_model_pretrained(split_model_name_tag(backbone_name)[0])
    ):
        raise ValueError(
            f"pretrained=True, but neither '{variant}' nor timm's backbone '{backbone_name}' has weights. "
            f"Pass pretrained=False, or a pretrained_cfg_overlay=dict(file='model.safetensors')."
        )
    if not full_weights or pretrained_cfg.get('file'):
        backbone_cfg = timm.models.get_pretrained_cfg(backbone_name)
        if backbone_cfg is not None:
            pretrained_cfg.update(_backbone_cfg_fields(backbone_cfg))
    if full_weights and pretrained_cfg.get('file'):
        _align_with_weights_file(pretrained_cfg, variant)
    if full_weights:
        # Hub loads are safetensors-only (timm would fall back to a pickle) and fail naming the repo.
        pretrained_cfg = safetensors_only(pretrained_cfg)
    hub_id = pretrained_cfg.get('hf_hub_id') if full_weights else None
    build_kwargs = {k: v for k, v in kwargs.items() if k not in BACKBONE_FACTORY_ARGS}
    factory_args = {k: v for k, v in kwargs.items() if k in BACKBONE_FACTORY_ARGS}
    if backbone_weights is not None:
        factory_args['weights'] = str(backbone_weights)
    if factory_args:
        given = build_kwargs.get('backbone_args') or {}
        twice = sorted(set(given) & set(factory_args) - {'weights'})
        if twice:
            raise ValueError(f'{", ".join(twice)} given both directly and in backbone_args: pass each once.')
        build_kwargs['backbone_args'] = dict(given, **factory_args)
    no_classes = build_kwargs.get('num_classes') == 0
    if no_classes:  # the class layers localise: build them as the weights have them, then drop the classification
        build_kwargs['num_classes'] = pretrained_cfg.get('num_classes') or 1000
    with (
        hub_errors(hub_id) if hub_id else contextlib.nullcontext(),
        torch.device(device) if device else contextlib.nullcontext(),
    ):
        model = build_model_with_cfg(
            model_cls,
            variant,
            pretrained=full_weights,
            pretrained_cfg=pretrained_cfg,
            backbone=backbone_name,
            pretrained_backbone=pretrained and not full_weights and backbone_weights is None,
            **build_kwargs,
        )
    if dtype is not None:
        model.to(dtype=dtype)
    # What `config.json` needs to rebuild this model with `timm.create_model(architecture, **model_args)`.
    runtime_only = ('num_classes', 'cache_dir', 'pretrained_model_args')
    model.model_args = dict(backbone=backbone, **{k: v for k, v in kwargs.items() if k not in runtime_only})
    # Which weights were really loaded (None: random init); the model card's `base_model` comes from this only.
    if backbone_weights is not None:
        model.pretrained_weights = local_weights_record(resolve_weights_file(backbone_weights, backbone), 'backbone')
    elif not pretrained:
        model.pretrained_weights = None
    elif full_weights:
        dropped = pretrained_cfg.get('num_classes') not in (None, model.num_classes)
        model.pretrained_weights = weights_record(pretrained_cfg, 'model except classifiers' if dropped else 'model')
    else:
        model.pretrained_weights = weights_record(model.backbone.pretrained_cfg, 'backbone')
    if no_classes:
        model.reset_classifier(0, global_pool)  # keeps the class layers, loaded or not
    elif global_pool is not None:
        model._reset_pool(model.num_classes, global_pool)  # the pool alone: the class layers stay as loaded
    model.pretrained_cfg['pool_size'] = model.feature_pool_size(model.pretrained_cfg['input_size'][-2:])
    if features_only:
        info = model.backbone.model.feature_info
        out_indices = feature_args.pop('out_indices', tuple(range(len(info))))
        extractor = FeatureGetterNet(model.backbone.model, out_indices=out_indices, prune=False, **feature_args)
        extractor.pretrained_cfg = extractor.default_cfg = pretrained_cfg_for_features(model.pretrained_cfg)
        return extractor
    return model
