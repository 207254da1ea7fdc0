"""The model contract every fgvc_zoo head keeps, and the builder that makes a head a timm citizen.

A head subclasses `FgvcModel` and implements `forward_features`, `forward_head`, `forward_train`, `explain` and
`reset_classifier`. `forward` is shared so that `model(x)` is logits in train and eval mode alike, and
`model(x, target=y, step=k)` in train mode is the k-th optimiser step's `FgvcOutput`: training always goes
through `forward`, so DDP hooks see it, and one trainer serves every head (`num_train_steps` tells it how many
optimiser steps a batch takes).
"""

import contextlib
import difflib
import inspect
import json
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import timm
import torch
import torch.nn as nn
from safetensors import safe_open
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, split_model_name_tag
from timm.models._builder import pretrained_cfg_for_features, resolve_pretrained_cfg
from timm.models._features import FeatureGetterNet

from ..errors import UnknownArgumentError
from ._backbone import Backbone, check_backbone_name
from ._hub import hub_cfg, hub_errors, safetensors_only, weights_record
from ._weights import local_weights_record, resolve_weights_file

__all__ = [
    'FgvcOutput',
    'Explanation',
    'ExplanationPanel',
    'ExplanationChart',
    'BackbonePass',
    'PaperInfo',
    'FgvcModel',
    'register_head',
    'list_heads',
    'ModelName',
    'split_model_name',
    'head_name',
    'head_class',
    'model_head_name',
    'head_models',
    'build_fgvc_model',
    'fgvc_cfg',
    'generate_head_cfgs',
    'POPULAR_BACKBONES',
    'DEFAULT_BACKBONE',
    'HEAD_POOL',
    'FGVC_DATASETS',
    'PUBLISHED_TAGS',
    'fgvc_tags',
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

# The ImageNet weights of the papers' ResNet-50 (torchvision's): `<head>_resnet50.tv_in1k` loads them.
PAPER_RESNET50_TAG = 'tv_in1k'

# The backbone of a generic name (`timm.create_model('lfd')`): every registry name builds with its defaults, as timm's
# tools expect. The CLI still refuses a generic head without --backbone (a recipe names its backbone).
DEFAULT_BACKBONE = 'resnet50'
# `global_pool` of a head: its own reduction of `forward_features` to the pre-logits ('' returns them unreduced).
HEAD_POOL = 'head'

# Preprocessing fields of an export's config.json that a local weights file brings with it.
EXPORTED_DATA_KEYS = ('input_size', 'interpolation', 'crop_pct', 'crop_mode', 'mean', 'std')
# The datasets of the papers' recipes: a `<head>_resnet50.<dataset>` tag names fgvc_zoo's Hub repo for them.
FGVC_DATASETS: dict[str, int] = {'cub_200_2011': 200, 'stanford_cars': 196, 'fgvc_aircraft': 100}
# The FGVC tags (of `fgvc_tags`) whose weights are on the Hub. Only these are registered with timm, so that
# `timm.list_pretrained` never advertises a repo that does not exist. Releasing one: `fgvc-zoo push` its export to
# `fgvc-zoo/<tag>`, check `fgvc_zoo.hub.load_model('hf-hub:fgvc-zoo/<tag>')`, then add the tag here.
PUBLISHED_TAGS: frozenset[str] = frozenset()


@dataclass
class FgvcOutput:
    """What `model(x, target=y)` returns in train mode: the total loss, the logits and every named loss term."""

    loss: torch.Tensor
    logits: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Explanation:
    """What a head looks at, in input-image pixel coordinates.

    heatmaps: name -> (B, K, H, W) maps at the input resolution (K classes, parts or stages).
    boxes: (B, N, 4) xyxy boxes in input pixels; scores: (B, N) their scores.
    labels: (B,) predicted class; logits: (B, C).
    extras: head-specific tensors (e.g. DP-Net's class-level part participation).
    """

    heatmaps: dict[str, torch.Tensor]
    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class ExplanationPanel:
    """One picture of a head's explanation, in the pixels of the model's input; `fgvc_zoo.inference.explain` draws
    it over the original image (it maps the boxes and the map back through the eval transform).

    heatmap: (H, W) map at the input resolution, or None (the photo alone); boxes: (N, 4) xyxy input pixels with a
    legend text each; first_box: number (and colour) of the first box, so that a box keeps them across panels.
    """

    title: str
    heatmap: torch.Tensor | None = None
    boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4))
    box_labels: list[str] = field(default_factory=list)
    first_box: int = 0


@dataclass
class ExplanationChart:
    """A bar chart beside the image panels (e.g. DP-Net's class-level part participation); `highlight` are the
    indices of `names` drawn in red."""

    title: str
    names: list[str]
    values: torch.Tensor
    highlight: list[int] = field(default_factory=list)


class BackbonePass(NamedTuple):
    """One backbone pass a head's compute cannot avoid (the bench's floor): `batch_size` images of side
    `img_size`, with gradient or not, through the first `num_stages` stages (None: all)."""

    batch_size: int
    img_size: int
    grad: bool
    num_stages: int | None = None


@dataclass(frozen=True)
class PaperInfo:
    """What the model card says about a head's method: title, description, BibTeX, and the top-1 accuracies (%)
    its paper reports with `backbone`, by dataset: `{dataset: [(setting, top1), ...]}`."""

    title: str
    description: str
    bibtex: str
    results: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    backbone: str = 'resnet50'


class FgvcModel(nn.Module):
    """Shared behaviour of the heads: the forward contract and the timm model API around `self.backbone`.

    A head also declares what the generic tools read, so that none of them names a head: `paper` (the model card),
    `explanation_legend`, `explanation_panels` and `explanation_chart` (explain, demo), `backbone_passes`,
    `bench_args` and `min_train_batch` (the bench).

    timm's contract (docs/architecture.md, "The timm contract"): `forward_features` returns what the head reduces
    and classifies (DP-Net's part maps, LFD's and IAGN's per-pass feature tokens), `forward_head` reduces it
    (`global_pool=''`: not at all) and classifies (`num_classes == 0`: not at all, the pre-logits embedding).
    """

    backbone: Backbone
    num_train_steps: int = 1
    # The head's reduction of `forward_features` (HEAD_POOL), or '' for the unreduced features; set by `global_pool`.
    global_pool: str = HEAD_POOL
    paper: ClassVar[PaperInfo | None] = None
    # What the explanation panels mean (the demo's legend, Markdown).
    explanation_legend: ClassVar[str] = ''
    # Fewest images a train-mode batch may hold (e.g. BatchNorm1d over a pooled feature needs 2).
    min_train_batch: ClassVar[int] = 1

    def forward(
        self,
        x: torch.Tensor,
        target: torch.Tensor | None = None,
        step: int = 0,
    ):
        if target is None or not self.training:
            if self.training:
                self._warn_untargeted_train()
            return self.forward_head(self.forward_features(x))
        if not self.num_classes or not self.global_pool:
            raise ValueError(
                f'{type(self).__name__} with num_classes={self.num_classes}, global_pool={self.global_pool!r} has no '
                f'classifier to train: reset_classifier(num_classes, global_pool={HEAD_POOL!r}) first.'
            )
        if not 0 <= step < self.num_train_steps:
            raise ValueError(f'step={step} is out of range: this model takes {self.num_train_steps} step(s) a batch.')
        return self.forward_train(x, target, step)

    def forward_train(self, x: torch.Tensor, target: torch.Tensor, step: int = 0) -> FgvcOutput:
        raise NotImplementedError

    def logits_loss_gap(self) -> str:
        """What a loss on train-mode logits alone (`CE(model(x), y)`, timm's train.py) misses of the method, or ''."""
        return ''

    @torch.jit.ignore
    def _warn_untargeted_train(self) -> None:
        gap = self.logits_loss_gap()
        if not gap or getattr(self, '_warned_untargeted', False):
            return
        self._warned_untargeted = True
        warnings.warn(
            f'{type(self).__name__}: a train-mode forward without a target returns logits only, and a loss on them '
            f'misses {gap}. Train with `model(x, target=y).loss` (one per step of num_train_steps) or '
            '`fgvc-zoo train`.',
            UserWarning,
            stacklevel=3,
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def explain(self, x: torch.Tensor) -> Explanation:
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        raise NotImplementedError

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        raise NotImplementedError

    def _reset_pool(self, num_classes: int, global_pool: str | None) -> bool:
        """The part of `reset_classifier` every head shares; True when the head must keep its class layers.

        `num_classes == 0` keeps every class layer, because they localise (LFD's and IAGN's class maps, DP-Net's
        parts), and makes `forward` return the pre-logits. `global_pool` None keeps the reduction, '' drops it,
        HEAD_POOL restores it.
        """
        if num_classes < 0:
            raise ValueError(f'num_classes={num_classes} must be >= 0 (0: no classifier, the pre-logits embedding).')
        if global_pool is not None:
            if global_pool not in ('', HEAD_POOL):
                raise ValueError(
                    f"global_pool={global_pool!r}: an fgvc_zoo head reduces its features its own way; pass '' for the "
                    f"unreduced forward_features, or {HEAD_POOL!r} (the default) for the head's own."
                )
            self.global_pool = global_pool
        if num_classes:
            return False
        try:
            self.get_classifier()
        except AttributeError:
            raise ValueError(
                f'{type(self).__name__}(num_classes=0) has no class layers to localise with: build it with '
                "timm.create_model(name, num_classes=0), which sizes them as the weights' classes."
            ) from None
        self.num_classes = 0
        return True

    def _new_layer_kwargs(self) -> dict[str, Any]:
        """Device and dtype of the model's weights, for class layers made after construction (timm's reset)."""
        weight = next(self.backbone.parameters())
        return dict(device=weight.device, dtype=weight.dtype)

    def feature_pool_size(self, img_size: Sequence[int]) -> tuple[int, int] | None:
        """The (h, w) grid of `forward_features` at `img_size` (the cfg's `pool_size`); None: its output is not a
        feature map (LFD's and IAGN's tokens come from passes at different resolutions)."""
        return None

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """The backbone's feature_info, module names under `backbone.model.`: the image pass's feature maps."""
        return [dict(info, module=f'backbone.model.{info["module"]}') for info in self.backbone.model.feature_info]

    def forward_intermediates(self, x: torch.Tensor, **kwargs: Any):
        """The backbone's `forward_intermediates` on the image (its pass over `x`, not the head's zooms)."""
        return self.backbone.model.forward_intermediates(x, **kwargs)

    def _init_backbone(
        self,
        backbone: str,
        pretrained: bool,
        in_chans: int,
        backbone_args: dict[str, Any] | None,
        drop_rate: float,
        **backbone_kwargs: Any,
    ) -> None:
        """The constructor part every head shares: `self.backbone` over the timm model `backbone` (extra
        `backbone_args` of its timm constructor) and `self.head_drop`, the dropout before the classifiers."""
        self.drop_rate = drop_rate
        self.in_chans = in_chans
        self.backbone = Backbone(
            backbone, pretrained=pretrained, in_chans=in_chans, **backbone_kwargs, **(backbone_args or {})
        )
        self.head_drop = nn.Dropout(drop_rate)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        # Head parameters match no backbone group, so timm puts them in the last group (highest layer-decay lr).
        return self.backbone.group_matcher(coarse=coarse, prefix='backbone.model.')

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return self.backbone.no_weight_decay(prefix='backbone.model.')

    def backbone_parameters(self):
        """Parameters of the pretrained backbone (the papers train them at 0.1x the head's learning rate)."""
        return self.backbone.parameters()

    def backbone_passes(self, batch_size: int, img_size: int, train: bool) -> list[list[BackbonePass]]:
        """The backbone passes `model(x)` (or, with `train`, one train step) needs, grouped by optimiser step: the
        floor the bench compares the head with. Default: one pass on the image."""
        return [[BackbonePass(batch_size, img_size, train)]]

    @classmethod
    def bench_args(cls, img_size: int, zoom_ratio: float) -> dict[str, Any]:
        """Constructor arguments the bench sets for an `img_size` input (e.g. a zoom at `zoom_ratio` of it)."""
        return {}

    def explanation_panels(self, exp: Explanation, i: int, label: str, num_parts: int = 3) -> list[ExplanationPanel]:
        """The panels of image `i` of `exp` (`label`: its predicted class name). Default: the boxes, then each
        heatmap (its map of the predicted class when it has one per class, else its first)."""
        labels = [f'#{k + 1} {s:.2f}' for k, s in enumerate(exp.scores[i].flatten().tolist())]
        panels = [ExplanationPanel(f'boxes -> {label}', boxes=exp.boxes[i], box_labels=labels)] if labels else []
        for name, maps in exp.heatmaps.items():
            k = int(exp.labels[i]) if maps.shape[1] == exp.logits.shape[1] else 0
            panels.append(ExplanationPanel(f'{name} map', maps[i, k]))
        return panels

    def explanation_chart(self, exp: Explanation, i: int, label: str, num_parts: int = 3) -> ExplanationChart | None:
        """A bar chart drawn after the panels of image `i`, or None (the default: no chart)."""
        return None


# The registered heads by name (their generic entrypoint's), and the module each is registered from.
_HEADS: dict[str, type[FgvcModel]] = {}
_HEAD_MODULES: dict[str, str] = {}


def register_head(model_cls: type[FgvcModel]) -> Callable[[Callable[..., FgvcModel]], Callable[..., FgvcModel]]:
    """Decorate a head's generic entrypoint (`def lfd(pretrained=False, **kwargs)`): timm's `register_model`, and
    the head's name, class and module recorded for the generic tools (`list_heads`, `head_name`, `head_models`).
    Its `<name>_<backbone>` variants (one per `POPULAR_BACKBONES`) are written-out `register_model` functions."""

    def decorator(fn: Callable[..., FgvcModel]) -> Callable[..., FgvcModel]:
        if '_' in fn.__name__:
            raise ValueError(f"A head's name is its variants' prefix and cannot hold '_': '{fn.__name__}'.")
        _HEADS[fn.__name__] = model_cls
        _HEAD_MODULES[fn.__name__] = fn.__module__.split('.')[-1]
        return register_model(fn)

    return decorator


def list_heads() -> list[str]:
    """The names of the registered heads (`['dpnet', 'iagn', 'lfd']`), sorted."""
    return sorted(_HEADS)


class ModelName(NamedTuple):
    """A model name in its parts: `lfd_convnext_tiny.fb_in22k_ft_in1k` is ('lfd', 'convnext_tiny', 'fb_in22k_ft_in1k').

    head: the fgvc_zoo head, None for a plain timm model; backbone: the timm model the name builds on, None for a
    generic head (`lfd`: its backbone is an argument), the whole architecture for a plain timm model; tag: the
    pretrained tag, '' without one.
    """

    head: str | None
    backbone: str | None
    tag: str


def split_model_name(name: str, heads: Collection[str] | None = None) -> ModelName:
    """Split a `<head>_<backbone>[.tag]` name (timm's `split_model_name_tag` takes off the tag); a name whose first
    `_`-part is no head in `heads` (default: the registered heads) is a plain timm model's."""
    architecture, tag = split_model_name_tag(name)
    head, _, backbone = architecture.partition('_')
    if head not in (_HEADS if heads is None else heads):
        return ModelName(None, architecture, tag)
    return ModelName(head, backbone or None, tag)


def head_name(architecture: str) -> str | None:
    """The head a model name or tag belongs to (`lfd_resnet50.a1_in1k` -> `lfd`); None for a plain timm model."""
    return split_model_name(architecture).head


def head_class(name: str) -> type[FgvcModel]:
    """The class of the head `name` (or of the head a model name or tag belongs to)."""
    head = head_name(name)
    if head is None:
        raise ValueError(f"'{name}' is not an fgvc_zoo head; the registered heads: {', '.join(list_heads())}.")
    return _HEADS[head]


def model_head_name(model: nn.Module) -> str | None:
    """The head a built model is (by class); None for a plain timm model."""
    return next((name for name, cls in _HEADS.items() if isinstance(model, cls)), None)


def head_models(filter: str = '', include_tags: bool = False) -> list[str]:
    """Every registered model name (and tag, with `include_tags`) of every head, as `timm.list_models` gives them."""
    return timm.list_models(filter, module=sorted(set(_HEAD_MODULES.values())), include_tags=include_tags)


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
    head_args = sorted({*parameters, 'backbone_weights'} - {'self', 'pretrained_backbone'})
    builder_args = set(inspect.signature(build_model_with_cfg).parameters)  # cache_dir, feature_cfg, ...
    for key in kwargs:
        if key not in parameters and key not in builder_args:
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
    place the model; `features_only=True` returns timm's FeatureGetterNet over the backbone's image pass.
    """
    backbone = DEFAULT_BACKBONE if backbone is None else backbone
    check_backbone_name(backbone)
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
    build_kwargs = dict(kwargs)
    if backbone_weights is not None:
        build_kwargs['backbone_args'] = dict(kwargs.get('backbone_args') or {}, weights=str(backbone_weights))
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
