"""The model contract every fgvc_zoo head keeps, and what it returns and declares.

A head subclasses `FgvcModel` and implements `forward_features`, `forward_head`, `forward_train`, `explain` and
`reset_classifier`. `forward` is shared so that `model(x)` is logits in train and eval mode alike, and
`model(x, target=y, step=k)` in train mode is the k-th optimiser step's `FgvcOutput`: training always goes
through `forward`, so DDP hooks see it, and one trainer serves every head (`num_train_steps` tells it how many
optimiser steps a batch takes).
"""

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn as nn

from ._backbone import Backbone

__all__ = [
    'FgvcOutput',
    'Explanation',
    'ExplanationPanel',
    'ExplanationChart',
    'BackbonePass',
    'PaperInfo',
    'FgvcModel',
    'HEAD_POOL',
]

# `global_pool` of a head: its own reduction of `forward_features` to the pre-logits ('' returns them unreduced).
HEAD_POOL = 'head'


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
    its paper reports with `backbone`, by dataset: `{dataset: [(setting, top1), ...]}`; and the baseline the paper
    claims to beat, which `fgvc-zoo compare` pairs the head with: 'plain' (a fine-tune of the backbone's own
    classifier) or 'probe' (that classifier trained alone on the frozen backbone)."""

    title: str
    description: str
    bibtex: str
    results: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    backbone: str = 'resnet50'
    baseline: str = 'plain'


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

    @property
    def trains_on_frozen_map(self) -> bool:
        """Whether every layer that trains reads nothing of the image but `frozen_map(x)`, made by layers whose
        weights and statistics never change: then a trainer may compute that map once per image and train with
        `forward_map` (`fgvc-zoo train --cache-features`). False unless a head says so (DP-Net, frozen)."""
        return False

    def frozen_map(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's map of `x`, all that `forward_map` reads (see `trains_on_frozen_map`)."""
        return self.backbone(x)

    def forward_map(
        self, features: torch.Tensor, target: torch.Tensor | None = None, step: int = 0
    ) -> torch.Tensor | FgvcOutput:
        """`forward` from `frozen_map(x)`: `forward_map(frozen_map(x), ...) == forward(x, ...)`. A head implements it
        where `trains_on_frozen_map` can be true."""
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

    def forward_intermediates(self, x: torch.Tensor, intermediates_only: bool = False, **kwargs: Any):
        """timm's contract: `(forward_features(x), intermediates)`, so that `forward_head` of the first gives
        `model(x)`'s logits; the intermediates are the backbone's `forward_intermediates` on the image (`kwargs`:
        its `indices`, `norm`, `stop_early`, `output_fmt`), not on the head's zooms.

        The final features take a pass of their own: the head's zooms and parts need the whole backbone.
        """
        intermediates = self.backbone.model.forward_intermediates(x, intermediates_only=True, **kwargs)
        return intermediates if intermediates_only else (self.forward_features(x), intermediates)

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
    def bench_args(cls, img_size: int, **options: Any) -> dict[str, Any]:
        """Constructor arguments the bench sets for an `img_size` input. `options` are the bench's head options
        (`fgvc-zoo bench --zoom-ratio`): a head reads those it knows and ignores the rest."""
        return {}

    def explanation_panels(self, exp: Explanation, i: int, label: str) -> list[ExplanationPanel]:
        """The panels of image `i` of `exp` (`label`: its predicted class name). Default: the boxes, then each
        heatmap (its map of the predicted class when it has one per class, else its first)."""
        labels = [f'#{k + 1} {s:.2f}' for k, s in enumerate(exp.scores[i].flatten().tolist())]
        panels = [ExplanationPanel(f'boxes -> {label}', boxes=exp.boxes[i], box_labels=labels)] if labels else []
        for name, maps in exp.heatmaps.items():
            k = int(exp.labels[i]) if maps.shape[1] == exp.logits.shape[1] else 0
            panels.append(ExplanationPanel(f'{name} map', maps[i, k]))
        return panels

    def explanation_chart(self, exp: Explanation, i: int, label: str) -> ExplanationChart | None:
        """A bar chart drawn after the panels of image `i`, or None (the default: no chart)."""
        return None
