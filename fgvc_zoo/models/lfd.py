"""LFD: Learning to Focus and Discriminate for Fine-grained Classification

Feng, Fu, Zhao, ICIP 2019. An image-level classifier's class activation maps, max-pooled over all classes,
score square regions of the input; NMS keeps the m most discriminative ones, which are cropped, zoomed and
passed through the same backbone. A hybrid classifier on [image feature, top-l region features] predicts.

Where the paper is silent, the choices of `docs/methods.md` section 1 are constructor arguments.
"""

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

from ..layers.boxes import cell_boxes, crop_and_zoom, select_boxes
from ..layers.cam import class_activation_maps, smooth_maps, upsample_maps
from ..layers.norm_stats import SecondaryNormStats
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

__all__ = ['Lfd']

CAM_MODES = ('max', 'pred', 'target')


class Lfd(FgvcModel):
    """LFD head over any timm backbone.

    `model(x)` returns the hybrid classifier's logits (the image classifier's with `hybrid=False` or
    `cam_baseline=True`).
    Z is the map timm's classifier pools (`Backbone`); over a token- or attention-pooled backbone (ViT, DINOv2, CLIP,
    SigLIP) it is the patch tokens after the final norm, so F^I is their average, not the CLS token.
    """

    paper = PaperInfo(
        title='LFD (Learning to Focus and Discriminate)',
        description=(
            'Class activation maps of an image-level classifier, max-pooled over all classes, score square regions '
            'of the image; NMS keeps the most discriminative ones, which are cropped, zoomed and passed through the '
            'same backbone. A hybrid classifier on the image feature and the top region features predicts.'
        ),
        bibtex=(
            '@inproceedings{feng2019lfd,\n'
            '  title = {Learning to Focus and Discriminate for Fine-grained Classification},\n'
            '  author = {Feng, Zhicong and Fu, Keren and Zhao, Qijun},\n'
            '  booktitle = {IEEE International Conference on Image Processing (ICIP)},\n'
            '  year = {2019}\n'
            '}'
        ),
        # Top-1 accuracy (%) the paper reports with a ResNet-50 (docs/methods.md).
        results={
            'cub_200_2011': [('LFD, ResNet-50', 87.6)],
            'fgvc_aircraft': [('LFD, ResNet-50', 92.1)],
            'stanford_cars': [('LFD, ResNet-50', 94.1)],
        },
    )
    explanation_legend = (
        'LFD (Learning to Focus and Discriminate) max-pools the class activation maps of its image-level '
        'classifier over all classes into an **attention map**: where any class finds evidence. Square '
        '**regions** centred on the cells of highest attention (score: the attention there) survive NMS; they are '
        'cropped, zoomed and classified with the whole image. The **class map** is the predicted class alone.'
    )

    def __init__(
        self,
        backbone: str = 'resnet50',
        num_classes: int = 1000,
        num_regions: int = 6,
        num_hybrid_regions: int = 4,
        region_sizes: Sequence[float] = (160 / 448,),
        zoom_size: int | None = None,
        nms_iou: float = 0.25,
        cam_sigma: float = 1.0,
        cam_mode: str = 'max',
        hybrid: bool = True,
        cam_baseline: bool = False,
        hybrid_scale: float | None = None,
        crop_norm_stats: bool = True,
        loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        drop_rate: float = 0.0,
        in_chans: int = 3,
        pretrained_backbone: bool = False,
        backbone_args: dict[str, Any] | None = None,
    ):
        """
        Args:
            backbone: any timm model name (with an optional pretrained tag).
            num_classes: number of fine-grained classes C.
            num_regions: m, regions kept after NMS and used by the region classifier in training.
            num_hybrid_regions: l, top regions in the hybrid feature; the only ones computed at inference.
            region_sizes: region sides as fractions of the shorter input side (160 px at 448).
            zoom_size: side of a zoomed crop in pixels; None is the paper's 224/448 of the input height.
            nms_iou: IoU threshold of the NMS over candidate regions.
            cam_sigma: Gaussian smoothing of the attention map, in feature cells (0 disables).
            cam_mode: 'max' over all class maps (paper), or the single map of the 'pred' or 'target' class.
            hybrid: False is the paper's "image level only" ablation (86.7 on CUB): regions are still cropped, zoomed
                and trained with the region loss, but there is no hybrid classifier and the image classifier predicts.
            cam_baseline: no regions at all: backbone, GAP and the bias-free image classifier, trained with its
                cross-entropy alone, whose class maps explain it (the plain CAM baseline of `benchmarks/pointing.py`;
                not an ablation of the paper).
            hybrid_scale: factor on the hybrid feature before its classifier. None: 1 / sqrt(l + 1), so that the
                concatenation of l + 1 features has the squared norm of one and the hybrid classifier takes the
                image classifier's effective step at the shared lr (unscaled, it takes l + 1 times larger ones and
                diverges); 1.0 is the paper's plain concatenation.
            crop_norm_stats: zoomed crops get their own BatchNorm running statistics (whole images and close-ups
                differ); False shares the image's, as a plain reading of the paper would.
            loss_weights: weights of the image, mean region and hybrid cross-entropies.
            drop_rate: dropout before the classifiers.
            in_chans: input image channels.
            pretrained_backbone: load the backbone's ImageNet weights (set by the pretrained tag).
            backbone_args: extra keyword arguments of the backbone's timm constructor (e.g. global_pool); timm's
                drop_path_rate, drop_block_rate, bn_momentum and bn_eps are also taken directly, as timm's models do.
        """
        super().__init__()
        if cam_mode not in CAM_MODES:
            raise ValueError(f"cam_mode='{cam_mode}' is not one of {CAM_MODES}.")
        if not 1 <= num_hybrid_regions <= num_regions:
            raise ValueError(f'Need 1 <= num_hybrid_regions ({num_hybrid_regions}) <= num_regions ({num_regions}).')
        if not region_sizes or not all(0 < s <= 1 for s in region_sizes):
            raise ValueError(f'region_sizes={region_sizes} must be fractions of the input side in (0, 1].')
        self.num_classes = num_classes
        self.num_regions = num_regions
        self.num_hybrid_regions = num_hybrid_regions
        self.region_sizes = tuple(region_sizes)
        self.zoom_size = zoom_size
        self.nms_iou = nms_iou
        self.cam_sigma = cam_sigma
        self.cam_mode = cam_mode
        self.hybrid = hybrid and not cam_baseline
        self.cam_baseline = cam_baseline
        self.hybrid_scale = (num_hybrid_regions + 1) ** -0.5 if hybrid_scale is None else hybrid_scale
        self.crop_norm_stats = crop_norm_stats
        self.loss_weights = tuple(loss_weights)

        self._init_backbone(backbone, pretrained_backbone, in_chans, backbone_args, drop_rate)
        self.num_features = self.backbone.num_features
        self.head_hidden_size = self.num_features * (num_hybrid_regions + 1 if self.hybrid else 1)
        # Crop statistics start from the backbone's current ones (the ImageNet weights' when pretrained).
        self.crop_stats = SecondaryNormStats(self.backbone) if crop_norm_stats and not cam_baseline else None
        self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New image, region and hybrid classifiers for `num_classes` classes; 0 keeps them all (the image
        classifier's class maps place the regions) and `model(x)` is the pre-logits hybrid feature."""
        if self._reset_pool(num_classes, global_pool):
            return
        self.num_classes = num_classes
        like = self._new_layer_kwargs()
        # Eq. (1) of the paper has no bias: the class maps M_k = W_k Z are exactly the image classifier's scores.
        self.image_head = nn.Linear(self.num_features, num_classes, bias=False, **like)
        self.region_head = nn.Linear(self.num_features, num_classes, **like)
        self.hybrid_head = nn.Linear(self.num_features * (self.num_hybrid_regions + 1), num_classes, **like)
        # Unused classifiers are kept for the cfg's classifier names, frozen: no gradient for DDP to wait for.
        if self.cam_baseline:
            self.region_head.requires_grad_(False)
        if not self.hybrid:
            self.hybrid_head.requires_grad_(False)
        self.train(self.training)

    def logits_loss_gap(self) -> str:
        if self.cam_baseline:
            return ''
        if not self.hybrid:
            return "the region classifier's loss (the regions it trains are what the paper's ablation keeps)"
        return "the image classifier's and the region classifier's losses (its class maps place the regions)"

    def get_classifier(self) -> nn.Module:
        return self.hybrid_head if self.hybrid else self.image_head

    def attention_map(self, features: torch.Tensor, class_index: torch.Tensor | None = None) -> torch.Tensor:
        """The smoothed attention map M (B, 1, h, w): max over all class maps, or the map of `class_index`.

        Always in float32, autocast or not: on a flat map half precision ties and reorders the cells that pick the
        regions (the top region of bf16 maps differed from fp32 in 31 % of images). A device autocast does not know
        (meta, where tools size a model) has no autocast to leave.
        """
        device_type = features.device.type
        has_autocast = torch.amp.is_autocast_available(device_type)
        with torch.autocast(device_type, enabled=False) if has_autocast else contextlib.nullcontext():
            maps = class_activation_maps(features.float(), self.image_head.weight.float())
            if class_index is None:
                attention = maps.amax(dim=1, keepdim=True)
            else:
                attention = maps.gather(1, class_index.view(-1, 1, 1, 1).expand(-1, 1, *maps.shape[-2:]))
            return smooth_maps(attention, self.cam_sigma)

    def _cam_class(self, image_logits: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor | None:
        if self.cam_mode == 'max':
            return None
        if self.cam_mode == 'target' and target is not None:
            return target if target.ndim == 1 else target.argmax(dim=1)
        return image_logits.argmax(dim=1)

    @torch.no_grad()
    def select_regions(
        self,
        features: torch.Tensor,
        image_logits: torch.Tensor,
        image_size: tuple[int, int],
        num: int,
        target: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The `num` most discriminative regions per image: (B, num, 4) xyxy input-pixel boxes and their scores."""
        attention = self.attention_map(features, self._cam_class(image_logits, target))
        num_candidates = attention.shape[-2] * attention.shape[-1] * len(self.region_sizes)
        if num_candidates < num:
            raise ValueError(
                f'LFD needs {num} candidate regions but a {tuple(image_size)} input gives a '
                f'{tuple(attention.shape[-2:])} feature map with {len(self.region_sizes)} region size(s), '
                f'{num_candidates} candidates. Use a larger input (the backbone stride is {self.backbone.stride}), '
                f'more region_sizes, or a smaller num_regions.'
            )
        boxes = cell_boxes(attention.shape[-2:], image_size, self.region_sizes, device=features.device)
        scores = attention.flatten(1).repeat(1, len(self.region_sizes))
        return select_boxes(boxes, scores, num, self.nms_iou)

    def crop_size(self, img_size: int) -> int:
        """Side of the zoomed crops: `zoom_size`, or the paper's 224 / 448 of the input height."""
        # int(): under the ONNX tracer the input height is a tensor; the crop side is a constant of the graph.
        return self.zoom_size or max(1, round(int(img_size) * 224 / 448))

    def _region_features(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """GAP features of the zoomed crops of (B, N, 4) boxes through the shared backbone: (B, N, n)."""
        crops = crop_and_zoom(x, boxes, self.crop_size(x.shape[-2]))
        features = self.backbone(crops) if self.crop_stats is None else self.crop_stats(self.backbone, crops)
        return features.mean(dim=(2, 3)).view(*boxes.shape[:2], -1)

    def _image_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        image_feature = features.mean(dim=(2, 3))
        return features, image_feature, self.image_head(self.head_drop(image_feature))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The tokens of the hybrid feature, [F^I, F^R_1 .. F^R_l] (B, l + 1, n), each the GAP of its own backbone
        pass ((B, 1, n) with `hybrid=False`); only the top-l crops are computed."""
        features, image_feature, image_logits = self._image_forward(x)
        if not self.hybrid:
            return image_feature.unsqueeze(1)
        boxes, _ = self.select_regions(features, image_logits, x.shape[-2:], self.num_hybrid_regions)
        return torch.cat([image_feature.unsqueeze(1), self._region_features(x, boxes)], dim=1)

    def _hybrid_feature(self, image_feature: torch.Tensor, region_features: torch.Tensor) -> torch.Tensor:
        return torch.cat([image_feature, region_features.flatten(1)], dim=1) * self.hybrid_scale

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The tokens of `forward_features` flattened into the hybrid feature (scaled by `hybrid_scale`), then
        classified; `global_pool=''` returns the tokens."""
        if not self.global_pool:
            return x
        x = self.head_drop(x.flatten(1) if not self.hybrid else self._hybrid_feature(x[:, 0], x[:, 1:]))
        return x if pre_logits or not self.num_classes else self.get_classifier()(x)

    def forward_train(self, x: torch.Tensor, target: torch.Tensor, step: int = 0) -> FgvcOutput:
        """All three cross-entropies; `target` holds class indices (B,) or soft targets (B, C) from mixup."""
        features, image_feature, image_logits = self._image_forward(x)
        losses = {'image': F.cross_entropy(image_logits, target)}
        if self.cam_baseline:
            return FgvcOutput(loss=losses['image'], logits=image_logits, losses=losses)
        boxes, _ = self.select_regions(features, image_logits, x.shape[-2:], self.num_regions, target)
        region_features = self._region_features(x, boxes)
        region_logits = self.region_head(self.head_drop(region_features))
        region_target = target.repeat_interleave(self.num_regions, dim=0)
        losses['region'] = F.cross_entropy(region_logits.flatten(0, 1), region_target)
        if not self.hybrid:
            loss = self.loss_weights[0] * losses['image'] + self.loss_weights[1] * losses['region']
            return FgvcOutput(loss=loss, logits=image_logits, losses=losses)
        hybrid = self._hybrid_feature(image_feature, region_features[:, : self.num_hybrid_regions])
        logits = self.hybrid_head(self.head_drop(hybrid))
        losses['hybrid'] = F.cross_entropy(logits, target)
        loss = sum(w * term for w, term in zip(self.loss_weights, losses.values(), strict=False))
        return FgvcOutput(loss=loss, logits=logits, losses=losses)

    @torch.no_grad()
    def explain(self, x: torch.Tensor) -> Explanation:
        """The attention map and the predicted class's map in input pixels, and the top-l regions with scores."""
        features, image_feature, image_logits = self._image_forward(x)
        num = self.num_hybrid_regions
        boxes, scores = self.select_regions(features, image_logits, x.shape[-2:], num)
        if not self.hybrid:
            logits = image_logits
        else:
            hybrid = self._hybrid_feature(image_feature, self._region_features(x, boxes))
            logits = self.hybrid_head(hybrid)
        labels = logits.argmax(dim=1)
        heatmaps = {
            'attention': self.attention_map(features, self._cam_class(image_logits, None)),
            'predicted_class': self.attention_map(features, labels),
        }
        heatmaps = {k: upsample_maps(v, x.shape[-2:]) for k, v in heatmaps.items()}
        return Explanation(heatmaps=heatmaps, boxes=boxes, scores=scores, labels=labels, logits=logits)

    def backbone_passes(self, batch_size: int, img_size: int, train: bool) -> list[list[BackbonePass]]:
        """The image, and l crops per image at `zoom_size` (m crops in training)."""
        if self.cam_baseline or (not self.hybrid and not train):
            return [[BackbonePass(batch_size, img_size, train)]]
        crops = batch_size * (self.num_regions if train else self.num_hybrid_regions)
        return [[BackbonePass(batch_size, img_size, train), BackbonePass(crops, self.crop_size(img_size), train)]]

    @classmethod
    def bench_args(cls, img_size: int, zoom_ratio: float = 0.5, **options: Any) -> dict[str, Any]:
        """The zoom at `zoom_ratio` of the input side (default: the paper's 224 / 448)."""
        return dict(zoom_size=int(round(img_size * zoom_ratio)))

    def explanation_panels(self, exp: Explanation, i: int, label: str) -> list[ExplanationPanel]:
        """The top-l regions with their scores, the attention map under them, and the predicted class's map."""
        boxes = exp.boxes[i]
        box_labels = [f'#{r + 1} {s:.2f}' for r, s in enumerate(exp.scores[i].tolist())]
        return [
            ExplanationPanel(f'top-{len(boxes)} regions (attention score)', boxes=boxes, box_labels=box_labels),
            ExplanationPanel('attention map (max over class maps)', exp.heatmaps['attention'][i, 0], boxes, box_labels),
            ExplanationPanel(f'class map of {label}', exp.heatmaps['predicted_class'][i, 0]),
        ]


def _create_lfd(variant: str, pretrained: bool = False, **kwargs) -> Lfd:
    return build_fgvc_model(Lfd, variant, pretrained=pretrained, **kwargs)


def _cfg(backbone: str | None = None, **kwargs) -> dict[str, Any]:
    # Eval as NTS-Net: squash the image to 600x600, centre-crop 448 (timm's crop_mode='squash').
    return fgvc_cfg(
        backbone,
        classifier=('image_head', 'region_head', 'hybrid_head'),
        crop_pct=448 / 600,
        crop_mode='squash',
        **kwargs,
    )


default_cfgs = generate_head_cfgs('lfd', _cfg)


@register_head(Lfd)
def lfd(pretrained: bool = False, **kwargs) -> Lfd:
    """LFD over any timm backbone: `timm.create_model('lfd', backbone='convnext_tiny', num_classes=100)`."""
    return _create_lfd('lfd', pretrained=pretrained, **kwargs)


@register_model
def lfd_resnet50(pretrained: bool = False, **kwargs) -> Lfd:
    """LFD over ResNet-50; pretrained=True loads the backbone's `a1_in1k` weights."""
    kwargs.setdefault('backbone', 'resnet50')
    return _create_lfd('lfd_resnet50', pretrained=pretrained, **kwargs)


@register_model
def lfd_resnet101(pretrained: bool = False, **kwargs) -> Lfd:
    """LFD over ResNet-101; pretrained=True loads the backbone's `a1h_in1k` weights."""
    kwargs.setdefault('backbone', 'resnet101')
    return _create_lfd('lfd_resnet101', pretrained=pretrained, **kwargs)


@register_model
def lfd_convnext_tiny(pretrained: bool = False, **kwargs) -> Lfd:
    """LFD over ConvNeXt-Tiny; pretrained=True loads the backbone's `fb_in22k_ft_in1k` weights."""
    kwargs.setdefault('backbone', 'convnext_tiny')
    return _create_lfd('lfd_convnext_tiny', pretrained=pretrained, **kwargs)


@register_model
def lfd_convnext_base(pretrained: bool = False, **kwargs) -> Lfd:
    """LFD over ConvNeXt-Base; pretrained=True loads the backbone's `fb_in22k_ft_in1k` weights."""
    kwargs.setdefault('backbone', 'convnext_base')
    return _create_lfd('lfd_convnext_base', pretrained=pretrained, **kwargs)


@register_model
def lfd_tf_efficientnet_lite0(pretrained: bool = False, **kwargs) -> Lfd:
    """LFD over EfficientNet-Lite0; pretrained=True loads the backbone's `in1k` weights."""
    kwargs.setdefault('backbone', 'tf_efficientnet_lite0')
    return _create_lfd('lfd_tf_efficientnet_lite0', pretrained=pretrained, **kwargs)


@register_model
def lfd_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> Lfd:
    """LFD over ViT-B/16; pretrained=True loads the backbone's `augreg2_in21k_ft_in1k` weights."""
    kwargs.setdefault('backbone', 'vit_base_patch16_224')
    return _create_lfd('lfd_vit_base_patch16_224', pretrained=pretrained, **kwargs)


@register_model
def lfd_swin_base_patch4_window7_224(pretrained: bool = False, **kwargs) -> Lfd:
    """LFD over Swin-B (window 7); pretrained=True loads the backbone's `ms_in22k_ft_in1k` weights."""
    kwargs.setdefault('backbone', 'swin_base_patch4_window7_224')
    return _create_lfd('lfd_swin_base_patch4_window7_224', pretrained=pretrained, **kwargs)
