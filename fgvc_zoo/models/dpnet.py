"""DP-Net: Learning Discriminative Parts for image recognition

Sicre, Zhang, Dejasmin, Daaloul, Ayache, Artieres, ICIP 2023 (arXiv 2404.15037). P = q C part detectors score
every region of a pretrained backbone's last feature map; the pooled part scores (a bag of parts) feed a linear
classifier V. Three constraints make the parts complementary (C_perp), each region decisive about its part
(C_Assign) and each part specific to its class (CS). The backbone is frozen by default, as in the paper.

Where the paper is silent, the choices of `docs/methods.md` section 2 are constructor arguments.
"""

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

from ..layers.cam import class_activation_maps, upsample_maps
from ..layers.parts import (
    ASSIGN_REDUCTIONS,
    PART_POOLS,
    assignment_loss,
    best_region_boxes,
    class_specific_loss,
    orthogonality_loss,
    part_scores,
    pool_part_scores,
)
from ._builder import build_fgvc_model
from ._cfgs import fgvc_cfg, generate_head_cfgs
from ._contract import (
    BackbonePass,
    Explanation,
    ExplanationChart,
    ExplanationPanel,
    FgvcModel,
    FgvcOutput,
    PaperInfo,
)
from ._registry import register_head

__all__ = ['DpNet']


class DpNet(FgvcModel):
    """DP-Net head over any timm backbone.

    Regions are the h x w cells of the backbone's last map (X: D x R). `self.parts.weight` is U (P, D), part p
    belonging to class p // q; `self.head` is V, whose first P columns weigh the parts (and the last D the
    global feature when `use_global=True`). `model(x)` returns V's logits. The last map is the one timm's
    classifier pools (`Backbone`); over a token- or attention-pooled backbone (ViT, DINOv2, CLIP, SigLIP) the regions
    are the patch tokens after the final norm.
    """

    paper = PaperInfo(
        title='DP-Net (Discriminative Part Network)',
        description=(
            "Part detectors (q per class) score the cells of the backbone's feature map; the bag-of-parts vector is "
            'classified linearly, with optional orthogonality, decisive-assignment and class-specific constraints. '
            'The paper keeps a pretrained backbone frozen (`freeze_backbone`, true unless the model arguments below '
            'say false).'
        ),
        bibtex=(
            '@inproceedings{sicre2023dpnet,\n'
            '  title = {DP-Net: Learning Discriminative Parts for image recognition},\n'
            '  author = {Sicre, Ronan and Zhang, Hanwei and Dejasmin, Julien and Daaloul, Chiheb and '
            "Ayache, St{\\'e}phane and Arti{\\`e}res, Thierry},\n"
            '  booktitle = {IEEE International Conference on Image Processing (ICIP)},\n'
            '  year = {2023},\n'
            '  eprint = {2404.15037},\n'
            '  archivePrefix = {arXiv}\n'
            '}'
        ),
        # Top-1 accuracy (%) the paper reports with a ResNet-50 (docs/methods.md).
        results={
            'cub_200_2011': [('DP-Net, ResNet-50, no constraint', 84.9), ('DP-Net, ResNet-50, all constraints', 85.0)],
        },
        # Its claim: parts of the frozen CNN beat its global feature (Birds, ResNet-50: global 81.5, parts 84.9).
        baseline='probe',
    )
    # How many parts the explanation draws, the heaviest in the prediction (`fgvc-zoo explain --parts`).
    explanation_parts: int = 3
    explanation_legend = (
        'DP-Net (Discriminative Part Network) scores every cell of the backbone feature map with learnt **part** '
        "detectors; a part map is one detector's response and its box the best-scoring region. The parts drawn "
        'are those that weigh most in the predicted class: V[pred, p] (how much the class uses part p, learnt) '
        "times the part's score. The bar chart shows V[pred] for the parts with the largest |V|, the drawn parts "
        'in red.'
    )

    def __init__(
        self,
        backbone: str = 'resnet50',
        num_classes: int = 1000,
        parts_per_class: int = 2,
        pool: str = 'max',
        use_global: bool = False,
        freeze_backbone: bool = True,
        w_perp: float = 1.0,
        w_assign: float = 0.0,
        w_cs: float = 0.1,
        assign_reduction: str = 'sum',
        part_box_cells: float = 3.0,
        drop_rate: float = 0.0,
        in_chans: int = 3,
        pretrained_backbone: bool = False,
        backbone_args: dict[str, Any] | None = None,
    ):
        """
        Args:
            backbone: any timm model name (with an optional pretrained tag).
            num_classes: number of fine-grained classes C.
            parts_per_class: q, so that there are P = q C part detectors.
            pool: how a part's region scores become its image score: 'max' (paper), 'lse' or 'avg'.
            use_global: concatenate GAP(X) to the part scores (the paper's "global" row).
            freeze_backbone: keep the backbone's weights and BatchNorm statistics fixed (paper); False fine-tunes.
            w_perp: weight of the orthogonality constraint C_perp (0 switches it off).
            w_assign: weight of the decisive assignment constraint C_Assign; 0 (default) switches it off. Chosen by
                experiment (`benchmarks/frozen_probe.py`): on a frozen ImageNet map every weight from 0.001 to 0.1
                (with 'sum') hands one part 89-100 % of all regions, C_Assign's trivial minimum, and costs val
                accuracy; the paper's own table moves by under a point with it (docs/methods.md section 2).
            assign_reduction: how C_Assign adds up its regions. 'sum' (default): the formula of the slides,
                - sum_r sum_p s_pr log s_pr per image (mean over the batch), so `w_assign` has the formula's
                strength. 'mean': also divided by the R = h w regions, independent of the input size; `w_assign`
                then acts R times weaker (R = 196 at 448 px on a stride-32 backbone: `w_assign=0.1` with 'sum'
                is `w_assign=19.6` with 'mean').
            w_cs: weight of the class-specific parts constraint CS (0 switches it off).
            part_box_cells: side of a part's best box in backbone strides. 3: the best cell and one neighbour
                each side, because a cell of the last map sees well beyond its own stride x stride patch.
            drop_rate: dropout on the bag of parts before the classifier.
            in_chans: input image channels.
            pretrained_backbone: load the backbone's ImageNet weights (set by the pretrained tag).
            backbone_args: extra keyword arguments of the backbone's timm constructor (e.g. global_pool); timm's
                drop_path_rate, drop_block_rate, bn_momentum and bn_eps are also taken directly, as timm's models do.
        """
        super().__init__()
        if pool not in PART_POOLS:
            raise ValueError(f"pool='{pool}' is not one of {PART_POOLS}.")
        if parts_per_class < 1:
            raise ValueError(f'parts_per_class={parts_per_class} must be at least 1.')
        if min(w_perp, w_assign, w_cs) < 0:
            raise ValueError(f'Constraint weights must be >= 0, got w_perp={w_perp}, w_assign={w_assign}, w_cs={w_cs}.')
        if assign_reduction not in ASSIGN_REDUCTIONS:
            raise ValueError(f"assign_reduction='{assign_reduction}' is not one of {ASSIGN_REDUCTIONS}.")
        if part_box_cells <= 0:
            raise ValueError(f'part_box_cells={part_box_cells} must be positive.')
        self.parts_per_class = parts_per_class
        self.pool = pool
        self.use_global = use_global
        self.freeze_backbone = freeze_backbone
        self.w_perp = w_perp
        self.w_assign = w_assign
        self.w_cs = w_cs
        self.assign_reduction = assign_reduction
        self.part_box_cells = part_box_cells

        self._init_backbone(backbone, pretrained_backbone, in_chans, backbone_args, drop_rate)
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        self.region_dim = self.backbone.num_features  # D, the width of a region descriptor (a cell of X)
        self.reset_classifier(num_classes)

    def train(self, mode: bool = True) -> 'DpNet':
        """Train mode for the head; a frozen backbone stays in eval mode so its BatchNorm statistics never move."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New part detectors U (q k, D) and classifier V for k = `num_classes` classes; 0 keeps both (the parts
        belong to the trained classes) and `model(x)` is the bag of parts."""
        if self._reset_pool(num_classes, global_pool):
            return
        self.num_classes = num_classes
        self.num_parts = self.parts_per_class * num_classes
        self.num_features = self.head_hidden_size = self.num_parts + (self.region_dim if self.use_global else 0)
        like = self._new_layer_kwargs()
        self.parts = nn.Linear(self.region_dim, self.num_parts, bias=False, **like)
        self.head = nn.Linear(self.num_features, num_classes, **like)
        self.train(self.training)

    def logits_loss_gap(self) -> str:
        weights = {'C_perp': self.w_perp, 'C_Assign': self.w_assign, 'CS': self.w_cs}
        terms = [name for name, weight in weights.items() if weight]
        return f'its constraint terms ({", ".join(terms)})' if terms else ''

    def feature_pool_size(self, img_size: Sequence[int]) -> tuple[int, int]:
        return tuple(math.ceil(side / self.backbone.stride) for side in img_size)

    def get_classifier(self) -> nn.Module:
        return self.head

    def part_participation(self) -> torch.Tensor:
        """Class-level explanation: how much each part takes part in each class, the part columns of V (C, P)."""
        return self.head.weight[:, : self.num_parts]

    def _part_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The region descriptors X (B, D, h, w) and the part scores S (B, P, h, w)."""
        features = self.backbone(x)
        return features, part_scores(features, self.parts.weight)

    @property
    def trains_on_frozen_map(self) -> bool:
        """A frozen backbone's map X is all the parts and V read: it can be computed once per image."""
        return self.freeze_backbone

    def _bag_of_parts(self, features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        bag = pool_part_scores(scores, self.pool)
        if self.use_global:
            bag = torch.cat([bag, features.mean(dim=(2, 3))], dim=1)
        return bag

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The part maps S (B, P, h, w), with the region descriptors X after them when `use_global=True`."""
        features, scores = self._part_maps(x)
        return self._head_input(features, scores)

    def _head_input(self, features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return torch.cat([scores, features], dim=1) if self.use_global else scores

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The bag of parts b (B, P) pooled from the maps of `forward_features` (with GAP(X) appended when
        `use_global=True`), then V; `global_pool=''` returns the maps."""
        if not self.global_pool:
            return x
        x = self.head_drop(self._bag_of_parts(x[:, self.num_parts :], x[:, : self.num_parts]))
        return x if pre_logits or not self.num_classes else self.head(x)

    def constraint_losses(self, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted constraints whose weight is not 0; a switched-off term is neither computed nor listed."""
        losses = {}
        if self.w_perp:
            losses['perp'] = orthogonality_loss(self.parts.weight)
        if self.w_assign:
            losses['assign'] = assignment_loss(scores, self.assign_reduction)
        if self.w_cs:
            losses['cs'] = class_specific_loss(self.part_participation(), self.parts_per_class)
        return losses

    def forward_train(self, x: torch.Tensor, target: torch.Tensor, step: int = 0) -> FgvcOutput:
        """Cross-entropy plus the weighted constraints; every unweighted term is in `.losses`."""
        return self._loss(*self._part_maps(x), target)

    def forward_map(
        self, features: torch.Tensor, target: torch.Tensor | None = None, step: int = 0
    ) -> torch.Tensor | FgvcOutput:
        """`forward` from the backbone's map X (`frozen_map`): the logits, or in train mode with a target the loss."""
        scores = part_scores(features, self.parts.weight)
        if target is None or not self.training:
            return self.forward_head(self._head_input(features, scores))
        return self._loss(features, scores, target)

    def _loss(self, features: torch.Tensor, scores: torch.Tensor, target: torch.Tensor) -> FgvcOutput:
        logits = self.head(self.head_drop(self._bag_of_parts(features, scores)))
        losses = {'ce': F.cross_entropy(logits, target), **self.constraint_losses(scores)}
        weights = {'ce': 1.0, 'perp': self.w_perp, 'assign': self.w_assign, 'cs': self.w_cs}
        loss = sum(weights[name] * term for name, term in losses.items())
        return FgvcOutput(loss=loss, logits=logits, losses=losses)

    @torch.no_grad()
    def explain(self, x: torch.Tensor) -> Explanation:
        """Each part's map and the predicted class's map in input pixels, each part's best box and score.

        The class map is V's logit before pooling, per region: sum_p V_kp s_pr (+ V_k,global x_r).
        `extras['part_participation']` is V's part columns (C, P), the class-level explanation.
        """
        features, scores = self._part_maps(x)
        logits = self.head(self._bag_of_parts(features, scores))
        labels = logits.argmax(dim=1)
        class_maps = class_activation_maps(scores, self.part_participation())
        if self.use_global:
            class_maps = class_maps + class_activation_maps(features, self.head.weight[:, self.num_parts :])
        predicted_map = class_maps.gather(1, labels.view(-1, 1, 1, 1).expand(-1, 1, *class_maps.shape[-2:]))
        box_side = self.part_box_cells * self.backbone.stride
        boxes, box_scores = best_region_boxes(scores, x.shape[-2:], box_side)
        heatmaps = {
            'parts': upsample_maps(scores, x.shape[-2:]),
            'predicted_class': upsample_maps(predicted_map, x.shape[-2:]),
        }
        return Explanation(
            heatmaps=heatmaps,
            boxes=boxes,
            scores=box_scores,
            labels=labels,
            logits=logits,
            extras={'part_participation': self.part_participation()},
        )

    def backbone_passes(self, batch_size: int, img_size: int, train: bool) -> list[list[BackbonePass]]:
        """The image, without gradient when the backbone is frozen."""
        return [[BackbonePass(batch_size, img_size, train and not self.freeze_backbone)]]

    @staticmethod
    def top_parts(exp: Explanation, i: int, num_parts: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """V[pred] (P,), the parts' weight in the prediction V[pred, p] x score_p (P,), and the `num_parts` heaviest."""
        participation = exp.extras['part_participation'][exp.labels[i]].cpu()
        weight = participation * exp.scores[i].cpu()
        return participation, weight, weight.topk(min(num_parts, weight.numel())).indices.tolist()

    def explanation_panels(self, exp: Explanation, i: int, label: str) -> list[ExplanationPanel]:
        """The best boxes of the `explanation_parts` parts weighing most in the prediction, then each of their maps."""
        participation, weight, top = self.top_parts(exp, i, self.explanation_parts)
        boxes = exp.boxes[i, top]
        box_labels = [f'part {p}: {weight[p]:.2f}' for p in top]
        panels = [ExplanationPanel(f'parts weighing most in {label} (V x score)', boxes=boxes, box_labels=box_labels)]
        for rank, p in enumerate(top):
            panels.append(
                ExplanationPanel(
                    f'part {p} map (V={participation[p]:.2f}, score={exp.scores[i, p]:.2f})',
                    exp.heatmaps['parts'][i, p],
                    boxes[rank : rank + 1],
                    box_labels[rank : rank + 1],
                    first_box=rank,
                )
            )
        return panels

    def explanation_chart(self, exp: Explanation, i: int, label: str) -> ExplanationChart:
        """V[pred], the class-level part participation, with the drawn parts highlighted."""
        values, _, top = self.top_parts(exp, i, self.explanation_parts)
        title = f'part participation in {label}, V[pred] (red: the parts drawn)'
        return ExplanationChart(title, [f'part {p}' for p in range(len(values))], values, top)


def _create_dpnet(variant: str, pretrained: bool = False, **kwargs) -> DpNet:
    return build_fgvc_model(DpNet, variant, pretrained=pretrained, **kwargs)


def _cfg(backbone: str | None = None, **kwargs) -> dict[str, Any]:
    # DP-Net publishes no preprocessing; choice: LFD's (NTS-Net's squash to 600x600, centre crop 448), so that the
    # heads compare on the same pixels.
    return fgvc_cfg(backbone, classifier=('parts', 'head'), crop_pct=448 / 600, crop_mode='squash', **kwargs)


default_cfgs = generate_head_cfgs('dpnet', _cfg)


@register_head(DpNet)
def dpnet(pretrained: bool = False, **kwargs) -> DpNet:
    """DP-Net over any timm backbone: `timm.create_model('dpnet', backbone='resnet50', num_classes=200)`."""
    return _create_dpnet('dpnet', pretrained=pretrained, **kwargs)


@register_model
def dpnet_resnet50(pretrained: bool = False, **kwargs) -> DpNet:
    """DP-Net over ResNet-50; pretrained=True loads the backbone's `a1_in1k` weights."""
    kwargs.setdefault('backbone', 'resnet50')
    return _create_dpnet('dpnet_resnet50', pretrained=pretrained, **kwargs)


@register_model
def dpnet_resnet101(pretrained: bool = False, **kwargs) -> DpNet:
    """DP-Net over ResNet-101; pretrained=True loads the backbone's `a1h_in1k` weights."""
    kwargs.setdefault('backbone', 'resnet101')
    return _create_dpnet('dpnet_resnet101', pretrained=pretrained, **kwargs)


@register_model
def dpnet_convnext_tiny(pretrained: bool = False, **kwargs) -> DpNet:
    """DP-Net over ConvNeXt-Tiny; pretrained=True loads the backbone's `fb_in22k_ft_in1k` weights."""
    kwargs.setdefault('backbone', 'convnext_tiny')
    return _create_dpnet('dpnet_convnext_tiny', pretrained=pretrained, **kwargs)


@register_model
def dpnet_convnext_base(pretrained: bool = False, **kwargs) -> DpNet:
    """DP-Net over ConvNeXt-Base; pretrained=True loads the backbone's `fb_in22k_ft_in1k` weights."""
    kwargs.setdefault('backbone', 'convnext_base')
    return _create_dpnet('dpnet_convnext_base', pretrained=pretrained, **kwargs)


@register_model
def dpnet_tf_efficientnet_lite0(pretrained: bool = False, **kwargs) -> DpNet:
    """DP-Net over EfficientNet-Lite0; pretrained=True loads the backbone's `in1k` weights."""
    kwargs.setdefault('backbone', 'tf_efficientnet_lite0')
    return _create_dpnet('dpnet_tf_efficientnet_lite0', pretrained=pretrained, **kwargs)


@register_model
def dpnet_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> DpNet:
    """DP-Net over ViT-B/16; pretrained=True loads the backbone's `augreg2_in21k_ft_in1k` weights."""
    kwargs.setdefault('backbone', 'vit_base_patch16_224')
    return _create_dpnet('dpnet_vit_base_patch16_224', pretrained=pretrained, **kwargs)


@register_model
def dpnet_swin_base_patch4_window7_224(pretrained: bool = False, **kwargs) -> DpNet:
    """DP-Net over Swin-B (window 7); pretrained=True loads the backbone's `ms_in22k_ft_in1k` weights."""
    kwargs.setdefault('backbone', 'swin_base_patch4_window7_224')
    return _create_dpnet('dpnet_swin_base_patch4_window7_224', pretrained=pretrained, **kwargs)
