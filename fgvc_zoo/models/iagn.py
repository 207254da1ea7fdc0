"""IAGN: Interpretable Attention Guided Network for Fine-grained Visual Classification

RECONSTRUCTION FROM THE ABSTRACT, NOT THE AUTHORS' CODE. Only the paper's abstract is available: it names an
attention guided framework that finds discriminative regions interpretably, a progressive training mechanism
that distils knowledge stage by stage, and the fusion of features of several granularities. fgvc_zoo builds
these three mechanisms on progressive multi-granularity training (PMG, Du et al., ECCV 2020), following
`docs/methods.md` section 3; every choice there is a constructor argument.

- S stage heads on the last S backbone stages (1x1 conv, 3x3 conv, BN+ReLU, global max pool, classifier
  BN-FC-BN-ELU-FC) and a fused head on the concatenation of the S pooled stage features.
- Attention: every stage classifier, applied to each cell of its stage's conv feature map, gives a class map; the
  attention map is the normalised mean of the stage maps, and the attended box bounds its cells above
  `attn_threshold` x max. Inference: logits = fused(x) + fused(zoom(x, box)).
- Progressive training: S + 1 optimiser steps per batch, stage l on jigsaw(zoom(x, box), 2^(S-l+1)) distilled
  from stage l - 1, then the fused head on x and the zoom distilled from the mean of the stage outputs.
"""

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ConvNormAct
from timm.models import register_model

from ..layers.boxes import crop_and_zoom
from ..layers.cam import min_max_scale, upsample_maps
from ..layers.distill import distillation_loss
from ..layers.jigsaw import jigsaw
from ..layers.norm_stats import frozen_norm_stats
from ._builder import build_fgvc_model
from ._cfgs import fgvc_cfg, generate_head_cfgs
from ._contract import (
    BackbonePass,
    Explanation,
    ExplanationPanel,
    FgvcModel,
    FgvcOutput,
    PaperInfo,
)
from ._registry import register_head

__all__ = ['Iagn']


class IagnClassifier(nn.Sequential):
    """PMG's classifier BN-FC-BN-ELU-FC on a pooled feature vector."""

    def __init__(self, in_features: int, hidden_features: int, num_classes: int):
        super().__init__(
            OrderedDict(
                [
                    ('norm_in', nn.BatchNorm1d(in_features)),
                    ('fc_hidden', nn.Linear(in_features, hidden_features)),
                    ('norm_hidden', nn.BatchNorm1d(hidden_features)),
                    ('act', nn.ELU(inplace=True)),
                    ('fc', nn.Linear(hidden_features, num_classes)),
                ]
            )
        )

    def forward_cells(self, cells: torch.Tensor) -> torch.Tensor:
        """Class scores of single feature-map cells, (N, in_features) -> (N, num_classes).

        Each cell is scored as if it were the pooled feature of an image. BatchNorm uses its running statistics in
        train mode too, so a cell's score does not depend on the other cells and no statistic is updated.
        """
        x = _frozen_norm(self.norm_in, cells)
        x = _frozen_norm(self.norm_hidden, self.fc_hidden(x))
        return self.fc(self.act(x))


def _frozen_norm(norm: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, training=False, eps=norm.eps)


class Iagn(FgvcModel):
    """IAGN head over any timm backbone (a reconstruction from the paper's abstract, see the module docstring).

    `model(x)` returns fused(x) + fused(zoom(x, box)). In train mode `model(x, target=y, step=k)` returns the loss
    of optimiser step k of `num_train_steps`: steps 0 .. S-1 train stage 1 .. S, step S the fused head.
    """

    paper = PaperInfo(
        title='IAGN (Interpretable Attention Guided Network)',
        description=(
            "**Reconstruction notice:** reconstructed from the paper's abstract; not the authors' code. The "
            "paper's method section and results were not available to us (no paper number to compare). It follows the "
            'closest published mechanism its abstract names (progressive multi-granularity training with '
            'stage-by-stage knowledge distillation), with class-activation attention that picks the region '
            'to zoom into.'
        ),
        bibtex=(
            '@inproceedings{huang2020iagn,\n'
            '  title = {Interpretable Attention Guided Network for Fine-grained Visual Classification},\n'
            '  author = {Huang, Zhenhuan and Duan, Xiaoyue and Zhao, Bo and L{\\"u}, Jinhu and Zhang, Baochang},\n'
            '  booktitle = {ICPR 2020 Workshops, LNCS},\n'
            '  pages = {52--63},\n'
            '  year = {2020},\n'
            '  eprint = {2103.04701},\n'
            '  archivePrefix = {arXiv}\n'
            '}'
        ),
    )
    explanation_legend = (
        "IAGN (Interpretable Attention Guided Network, reconstructed from the paper's abstract) computes a "
        'class-activation map per backbone **stage** and fuses them into an **attention** map; the **attended '
        'box** is the region it zooms into for the second look (score: share of the attention mass inside it).'
    )
    # Its classifiers use BatchNorm1d over the batch, which needs 2 images in train mode.
    min_train_batch = 2

    def __init__(
        self,
        backbone: str = 'resnet50',
        num_classes: int = 1000,
        num_stages: int = 3,
        mid_channels: int | None = None,
        feature_channels: int | None = None,
        hidden_features: int | None = None,
        attn_threshold: float = 0.5,
        zoom_size: int | None = None,
        jigsaw_sizes: Sequence[int] | None = None,
        progressive: bool = True,
        kd_weight: float = 1.0,
        kd_temperature: float = 4.0,
        fused_loss_weight: float = 2.0,
        drop_rate: float = 0.0,
        in_chans: int = 3,
        pretrained_backbone: bool = False,
        backbone_args: dict[str, Any] | None = None,
    ):
        """
        Args:
            backbone: any timm model name (with an optional pretrained tag).
            num_classes: number of fine-grained classes C.
            num_stages: S, the number of last backbone stages with a stage head.
            mid_channels: output channels of each stage head's 1x1 conv; None is 1/4 of the backbone's final
                channels (PMG's 512 on ResNet-50's 2048).
            feature_channels: output channels of each stage head's 3x3 conv (the pooled stage feature); None is 1/2
                of the backbone's final channels (PMG's 1024 on ResNet-50).
            hidden_features: width of the hidden layer of every classifier BN-FC-BN-ELU-FC; None is 1/4 of the
                backbone's final channels (PMG's 512 on ResNet-50).
            attn_threshold: the attended box bounds the pixels of the attention map >= this fraction of its max.
            zoom_size: side of the zoomed attended crop in pixels; None zooms to the input height.
            jigsaw_sizes: cells per side of the jigsaw fed to stage 1 .. S; None is PMG's 2^(S-l+1) (8, 4, 2).
            progressive: S + 1 optimiser steps per batch; False folds their losses into one step.
            kd_weight: weight of the distillation terms.
            kd_temperature: T of the distillation terms T^2 KL(p_teacher || p_student).
            fused_loss_weight: weight of the fused head's cross-entropies (PMG's 2).
            drop_rate: dropout on pooled features before the classifiers.
            in_chans: input image channels.
            pretrained_backbone: load the backbone's ImageNet weights (set by the pretrained tag).
            backbone_args: extra keyword arguments of the backbone's timm constructor (e.g. global_pool); timm's
                drop_path_rate, drop_block_rate, bn_momentum and bn_eps are also taken directly, as timm's models do.
        """
        super().__init__()
        if jigsaw_sizes is None:
            jigsaw_sizes = tuple(2 ** (num_stages - stage + 1) for stage in range(1, num_stages + 1))
        if len(jigsaw_sizes) != num_stages or not all(n >= 1 for n in jigsaw_sizes):
            raise ValueError(f'jigsaw_sizes={jigsaw_sizes} must hold {num_stages} positive cell counts, one per stage.')
        if not 0 <= attn_threshold <= 1:
            raise ValueError(f'attn_threshold={attn_threshold} must be a fraction of the attention maximum in [0, 1].')
        self.num_classes = num_classes
        self.num_stages = num_stages
        self.attn_threshold = attn_threshold
        self.zoom_size = zoom_size
        self.jigsaw_sizes = tuple(jigsaw_sizes)
        self.progressive = progressive
        self.num_train_steps = num_stages + 1 if progressive else 1
        self.kd_weight = kd_weight
        self.kd_temperature = kd_temperature
        self.fused_loss_weight = fused_loss_weight

        self._init_backbone(backbone, pretrained_backbone, in_chans, backbone_args, drop_rate, num_stages=num_stages)
        # PMG's widths are fractions of ResNet-50's 2048 final channels: on a narrower backbone (EfficientNet-Lite0's
        # 320) fixed 512/1024 heads would cost many times the backbone itself.
        final_channels = self.backbone.channels[-1]
        mid_channels = mid_channels or max(1, final_channels // 4)
        feature_channels = feature_channels or max(1, final_channels // 2)
        self.hidden_features = hidden_features = hidden_features or max(1, final_channels // 4)
        self.mid_channels, self.feature_channels = mid_channels, feature_channels
        self.stage_convs = nn.ModuleList(
            [
                nn.Sequential(
                    ConvNormAct(channels, mid_channels, kernel_size=1),
                    ConvNormAct(mid_channels, feature_channels, kernel_size=3),
                )
                for channels in self.backbone.channels
            ]
        )
        # A fused feature per view (image or zoom); the pre-logits hold both views side by side.
        self.num_features = num_stages * feature_channels
        self.head_hidden_size = 2 * self.num_features
        self.stage_classifiers = nn.ModuleList(
            [IagnClassifier(feature_channels, hidden_features, num_classes) for _ in range(num_stages)]
        )
        self.fused_classifier = IagnClassifier(self.num_features, hidden_features, num_classes)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New class layers (the last FC of every stage classifier and of the fused one) for `num_classes`; 0 keeps
        them (the stage class maps place the zoom, the fused prediction picks their class) and `model(x)` is the
        pre-logits."""
        if self._reset_pool(num_classes, global_pool):
            return
        self.num_classes = num_classes
        like = self._new_layer_kwargs()
        for classifier in [*self.stage_classifiers, self.fused_classifier]:
            classifier.fc = nn.Linear(self.hidden_features, num_classes, **like)
        self.train(self.training)

    def logits_loss_gap(self) -> str:
        return 'the stage heads (their class maps place the zoom) and the progressive, distilled schedule'

    def get_classifier(self) -> nn.Module:
        return self.fused_classifier.fc

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The S stage heads' conv feature maps (B, feature_channels, h_l, w_l), shallowest first."""
        return [conv(stage_map) for conv, stage_map in zip(self.stage_convs, self.backbone(x), strict=False)]

    def stage_logits(self, features: torch.Tensor, stage: int) -> torch.Tensor:
        """Stage `stage` (0-based) classifier on its max-pooled conv features."""
        return self.stage_classifiers[stage](self.head_drop(features.amax(dim=(2, 3))))

    @torch.no_grad()
    def attention_maps(
        self,
        features: Sequence[torch.Tensor],
        class_index: torch.Tensor,
        image_size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage class maps (B, S, H, W) and the attention map (B, 1, H, W) in input pixels, each in [0, 1].

        Grad-free CAM: stage l's classifier scores every cell of its conv feature map (`forward_cells`, a 1x1
        application of BN-FC-BN-ELU-FC) and the map keeps the channel of `class_index`. Each stage map is min-max
        normalised per image so that no stage dominates; A is the min-max normalised mean of the upsampled maps.
        """
        stage_maps = []
        for classifier, stage_features in zip(self.stage_classifiers, features, strict=False):
            batch_size, channels, height, width = stage_features.shape
            cells = stage_features.permute(0, 2, 3, 1).reshape(-1, channels)
            # float32: min-max of near-constant maps and pixel box corners are not safe in half precision.
            scores = classifier.forward_cells(cells).float().view(batch_size, height * width, -1)
            class_map = scores.gather(2, class_index.view(-1, 1, 1).expand(-1, height * width, 1))
            stage_maps.append(upsample_maps(class_map.view(batch_size, 1, height, width), image_size))
        stage_maps = min_max_scale(torch.cat(stage_maps, dim=1))
        return stage_maps, min_max_scale(stage_maps.mean(dim=1, keepdim=True))

    @torch.no_grad()
    def attended_boxes(self, attention: torch.Tensor) -> torch.Tensor:
        """The (B, 1, 4) xyxy pixel box bounding the pixels of `attention` (B, 1, H, W) >= threshold x max."""
        mask = attention[:, 0] >= self.attn_threshold * attention.flatten(1).amax(dim=1).view(-1, 1, 1)
        y1, y2 = _first_last(mask.any(dim=2))
        x1, x2 = _first_last(mask.any(dim=1))
        # Pixel i covers [i, i + 1): the box ends one past its last pixel.
        return torch.stack([x1, y1, x2 + 1, y2 + 1], dim=1).float().unsqueeze(1)

    def zoom(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return crop_and_zoom(x, boxes, self.zoom_size or x.shape[-2])

    def _fused_feature(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([f.amax(dim=(2, 3)) for f in features], dim=1)

    def _image_and_zoom(
        self,
        x: torch.Tensor,
        target: torch.Tensor | None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage features of x and of its attended zoom, the stage maps, the attention map and the boxes.

        The maps look at the target class when one is given (training), else at the fused head's prediction on x.
        """
        features = self.stage_features(x)
        if target is None:
            with torch.no_grad():
                class_index = self.fused_classifier(self._fused_feature(features)).argmax(dim=1)
        else:
            class_index = _class_index(target)
        stage_maps, attention = self.attention_maps(features, class_index, x.shape[-2:])
        boxes = self.attended_boxes(attention)
        return features, self.stage_features(self.zoom(x, boxes)), stage_maps, attention, boxes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The fused features of the image and of its attended zoom as two tokens: (B, 2, S * feature_channels)."""
        features, zoom_features, _, _, _ = self._image_and_zoom(x, None)
        return torch.stack([self._fused_feature(features), self._fused_feature(zoom_features)], dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """fused(x) + fused(zoom(x, box)) from the (B, 2, S * feature_channels) tokens of `forward_features`.

        `pre_logits=True` returns both fused features side by side (`head_hidden_size` wide), the input of the fused
        classifier BN-FC-BN-ELU-FC, which scores each of the two: there is no single vector before
        `get_classifier()`. `global_pool=''` returns the tokens.
        """
        if not self.global_pool:
            return x
        x = self.head_drop(x)
        return x.flatten(1) if pre_logits or not self.num_classes else self._fused_logits(x)

    def _fused_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fused_classifier(tokens.flatten(0, 1)).view(tokens.shape[0], 2, -1).sum(dim=1)

    def _stage_step(self, x: torch.Tensor, target: torch.Tensor, stage: int) -> FgvcOutput:
        """Stage `stage` (0-based) on the jigsaw of the attended zoom, distilled from the stage before it.

        The box comes from a no-grad pass over x (recomputed at every step, so no state crosses steps). The teacher
        is stage - 1 on the same jigsaw input, detached; the first stage has no teacher and no KD term. The loss
        reaches only the backbone up to this stage and this stage's head: other heads get no gradient at all.
        """
        # The box and teacher passes only pick a box and soft targets: they leave the BatchNorm statistics alone.
        with torch.no_grad(), frozen_norm_stats(self):
            features = self.stage_features(x)
            _, attention = self.attention_maps(features, _class_index(target), x.shape[-2:])
        puzzle = jigsaw(self.zoom(x, self.attended_boxes(attention)), self.jigsaw_sizes[stage])
        stage_maps = self.backbone(puzzle, num_stages=stage + 1)  # deeper stages do not feed this step
        logits = self.stage_logits(self.stage_convs[stage](stage_maps[stage]), stage)
        losses = {f'ce_stage{stage + 1}': F.cross_entropy(logits, target)}
        loss = losses[f'ce_stage{stage + 1}']
        if stage > 0:
            with torch.no_grad(), frozen_norm_stats(self):
                teacher = self.stage_logits(self.stage_convs[stage - 1](stage_maps[stage - 1]), stage - 1)
            losses[f'kd_stage{stage + 1}'] = distillation_loss(logits, teacher, self.kd_temperature)
            loss = loss + self.kd_weight * losses[f'kd_stage{stage + 1}']
        return FgvcOutput(loss=loss, logits=logits, losses=losses)

    def _fused_step(self, x: torch.Tensor, target: torch.Tensor) -> FgvcOutput:
        """The fused head on x and on the attended zoom, distilled from the mean of the S stage logits on each."""
        features, zoom_features, _, _, _ = self._image_and_zoom(x, target)
        losses, loss, logits = {}, 0.0, 0.0
        for name, stage_features in (('fused', features), ('fused_zoom', zoom_features)):
            fused_logits = self.fused_classifier(self.head_drop(self._fused_feature(stage_features)))
            with torch.no_grad(), frozen_norm_stats(self):
                teacher = torch.stack([self.stage_logits(f, stage) for stage, f in enumerate(stage_features)]).mean(
                    dim=0
                )
            losses[f'ce_{name}'] = F.cross_entropy(fused_logits, target)
            losses[f'kd_{name}'] = distillation_loss(fused_logits, teacher, self.kd_temperature)
            loss = loss + self.fused_loss_weight * losses[f'ce_{name}'] + self.kd_weight * losses[f'kd_{name}']
            logits = logits + fused_logits
        return FgvcOutput(loss=loss, logits=logits, losses=losses)

    def _train_step(self, x: torch.Tensor, target: torch.Tensor, step: int) -> FgvcOutput:
        return self._fused_step(x, target) if step == self.num_stages else self._stage_step(x, target, step)

    def forward_train(self, x: torch.Tensor, target: torch.Tensor, step: int = 0) -> FgvcOutput:
        """Step `step` of the progressive schedule, or (progressive=False) all S + 1 step losses summed.

        Folded, every term is computed exactly as in its own step (each recomputes its attended box), so the
        folded loss is the sum of the progressive losses and the two modes compare like for like.
        """
        if self.training and x.shape[0] < 2:
            raise ValueError(
                'IAGN trains on batches of at least 2 images: its classifiers use BatchNorm over the batch. '
                'Use a larger batch size (the trainer drops a last partial batch).'
            )
        if self.progressive:
            return self._train_step(x, target, step)
        outputs = [self._train_step(x, target, k) for k in range(self.num_stages + 1)]
        losses = {name: term for output in outputs for name, term in output.losses.items()}
        return FgvcOutput(loss=sum(o.loss for o in outputs), logits=outputs[-1].logits, losses=losses)

    @torch.no_grad()
    def explain(self, x: torch.Tensor) -> Explanation:
        """Stage class maps and the attention map in input pixels, the attended box and its attention share.

        The box's score is the fraction of the attention map's total mass that falls inside the box.
        """
        features, zoom_features, stage_maps, attention, boxes = self._image_and_zoom(x, None)
        fused = torch.stack([self._fused_feature(features), self._fused_feature(zoom_features)], dim=1)
        logits = self._fused_logits(fused)
        height, width = x.shape[-2:]
        ys = torch.arange(height, device=x.device).view(1, -1, 1) + 0.5
        xs = torch.arange(width, device=x.device).view(1, 1, -1) + 0.5
        box = boxes[:, 0].view(-1, 4, 1, 1)
        inside = (xs >= box[:, 0]) & (xs < box[:, 2]) & (ys >= box[:, 1]) & (ys < box[:, 3])
        mass = attention[:, 0]
        scores = (mass * inside).flatten(1).sum(dim=1) / mass.flatten(1).sum(dim=1).clamp_min(1e-12)
        return Explanation(
            heatmaps={'stages': stage_maps, 'attention': attention},
            boxes=boxes,
            scores=scores.unsqueeze(1),
            labels=logits.argmax(dim=1),
            logits=logits,
        )

    def backbone_passes(self, batch_size: int, img_size: int, train: bool) -> list[list[BackbonePass]]:
        """The image and its zoom; in training, each stage step k a grad-free pass on the image (the box) and a
        pass on the zoomed jigsaw up to map k, then the fused step on the image and the zoom."""
        zoom = self.zoom_size or img_size
        if not train:
            return [[BackbonePass(batch_size, img_size, False), BackbonePass(batch_size, zoom, False)]]
        stage_steps = [
            [BackbonePass(batch_size, img_size, False), BackbonePass(batch_size, zoom, True, stage + 1)]
            for stage in range(self.num_stages)
        ]
        fused_step = [BackbonePass(batch_size, img_size, True), BackbonePass(batch_size, zoom, True)]
        if self.progressive:
            return stage_steps + [fused_step]
        return [[p for step in stage_steps + [fused_step] for p in step]]

    def explanation_panels(self, exp: Explanation, i: int, label: str) -> list[ExplanationPanel]:
        """The attended box, each stage's map, and the fused attention under the box."""
        boxes = exp.boxes[i]
        box_labels = [f'attended {exp.scores[i, 0]:.2f}']
        stages = exp.heatmaps['stages'][i]
        return [
            ExplanationPanel(f'attended box (attention share) -> {label}', boxes=boxes, box_labels=box_labels),
            *[ExplanationPanel(f'stage {s + 1} map', stage_map) for s, stage_map in enumerate(stages)],
            ExplanationPanel('fused attention', exp.heatmaps['attention'][i, 0], boxes, box_labels),
        ]


def _class_index(target: torch.Tensor) -> torch.Tensor:
    """Class indices from (B,) indices or (B, C) soft targets (mixup, label smoothing)."""
    return target if target.ndim == 1 else target.argmax(dim=1)


def _first_last(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the first and of the last True of every row of a (B, N) mask with at least one True per row."""
    first = mask.int().argmax(dim=1)
    last = mask.shape[1] - 1 - mask.flip(1).int().argmax(dim=1)
    return first, last


def _classifier_names(num_stages: int) -> tuple[str, ...]:
    """The class layers timm drops from weights trained for other classes: every stage's, then the fused one."""
    return (*(f'stage_classifiers.{i}.fc' for i in range(num_stages)), 'fused_classifier.fc')


def _create_iagn(variant: str, pretrained: bool = False, **kwargs) -> Iagn:
    # The registered cfgs name the class layers of the default 3 stages; another `num_stages` has other layers.
    if 'num_stages' in kwargs:
        overlay = dict(kwargs.pop('pretrained_cfg_overlay', None) or {})
        overlay.setdefault('classifier', _classifier_names(kwargs['num_stages']))
        kwargs['pretrained_cfg_overlay'] = overlay
    return build_fgvc_model(Iagn, variant, pretrained=pretrained, **kwargs)


def _cfg(backbone: str | None = None, **kwargs) -> dict[str, Any]:
    # Eval as PMG: squash the image to 550x550, centre-crop 448 (timm's crop_mode='squash').
    return fgvc_cfg(backbone, classifier=_classifier_names(3), crop_pct=448 / 550, crop_mode='squash', **kwargs)


default_cfgs = generate_head_cfgs('iagn', _cfg)


@register_head(Iagn)
def iagn(pretrained: bool = False, **kwargs) -> Iagn:
    """IAGN over any timm backbone: `timm.create_model('iagn', backbone='convnext_tiny', num_classes=100)`."""
    return _create_iagn('iagn', pretrained=pretrained, **kwargs)


@register_model
def iagn_resnet50(pretrained: bool = False, **kwargs) -> Iagn:
    """IAGN over ResNet-50; pretrained=True loads the backbone's `a1_in1k` weights."""
    kwargs.setdefault('backbone', 'resnet50')
    return _create_iagn('iagn_resnet50', pretrained=pretrained, **kwargs)


@register_model
def iagn_resnet101(pretrained: bool = False, **kwargs) -> Iagn:
    """IAGN over ResNet-101; pretrained=True loads the backbone's `a1h_in1k` weights."""
    kwargs.setdefault('backbone', 'resnet101')
    return _create_iagn('iagn_resnet101', pretrained=pretrained, **kwargs)


@register_model
def iagn_convnext_tiny(pretrained: bool = False, **kwargs) -> Iagn:
    """IAGN over ConvNeXt-Tiny; pretrained=True loads the backbone's `fb_in22k_ft_in1k` weights."""
    kwargs.setdefault('backbone', 'convnext_tiny')
    return _create_iagn('iagn_convnext_tiny', pretrained=pretrained, **kwargs)


@register_model
def iagn_convnext_base(pretrained: bool = False, **kwargs) -> Iagn:
    """IAGN over ConvNeXt-Base; pretrained=True loads the backbone's `fb_in22k_ft_in1k` weights."""
    kwargs.setdefault('backbone', 'convnext_base')
    return _create_iagn('iagn_convnext_base', pretrained=pretrained, **kwargs)


@register_model
def iagn_tf_efficientnet_lite0(pretrained: bool = False, **kwargs) -> Iagn:
    """IAGN over EfficientNet-Lite0; pretrained=True loads the backbone's `in1k` weights."""
    kwargs.setdefault('backbone', 'tf_efficientnet_lite0')
    return _create_iagn('iagn_tf_efficientnet_lite0', pretrained=pretrained, **kwargs)


@register_model
def iagn_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> Iagn:
    """IAGN over ViT-B/16; pretrained=True loads the backbone's `augreg2_in21k_ft_in1k` weights."""
    kwargs.setdefault('backbone', 'vit_base_patch16_224')
    return _create_iagn('iagn_vit_base_patch16_224', pretrained=pretrained, **kwargs)


@register_model
def iagn_swin_base_patch4_window7_224(pretrained: bool = False, **kwargs) -> Iagn:
    """IAGN over Swin-B (window 7); pretrained=True loads the backbone's `ms_in22k_ft_in1k` weights."""
    kwargs.setdefault('backbone', 'swin_base_patch4_window7_224')
    return _create_iagn('iagn_swin_base_patch4_window7_224', pretrained=pretrained, **kwargs)
