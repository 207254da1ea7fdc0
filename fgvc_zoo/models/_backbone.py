"""Backbone adapter: any timm model -> NCHW feature maps of its last stages.

Every head in fgvc_zoo reaches its backbone through this module and nothing else, so a head never knows
whether it sits on a ResNet, a ConvNeXt, an EfficientNet, a ViT or a Swin. Feature maps come from timm's own
`forward_intermediates(..., output_fmt='NCHW')`; channels and strides come from `feature_info`. The only
model-dependent decision is asking for `dynamic_img_size=True` where the model class supports it, so that a
448 image and 224 crops go through the same weights (ViT, Swin, ...).
"""

import difflib
from typing import Any

import timm
import torch
import torch.nn as nn

__all__ = ['Backbone', 'create_backbone_model', 'check_backbone_name']


def check_backbone_name(name: str) -> None:
    """Raise a ValueError naming close matches when `name` is not a timm architecture."""
    arch = name.split('.')[0]
    if timm.is_model(arch):
        return
    candidates = timm.list_models()
    close = difflib.get_close_matches(arch, candidates, n=5, cutoff=0.6)
    hint = f' Close matches: {", ".join(close)}.' if close else ''
    raise ValueError(
        f"Unknown backbone '{name}': it is not a timm model.{hint} "
        f"See `timm.list_models('*{arch[:4]}*')` for the available names."
    )


def create_backbone_model(name: str, pretrained: bool = False, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """Create a classifier-less timm model, with a dynamic input size where its class supports one.

    `weights` loads the backbone's timm weights from a local safetensors file or folder (`_weights.py`);
    `pretrained=True` takes the Hub weights from the local Hub cache or the Hub, failing at once when neither can
    give them. A `pretrained_cfg(_overlay)` in `kwargs` leaves the loading to timm.
    """
    from ._weights import hub_weights_file, load_backbone_weights

    check_backbone_name(name)
    kwargs = dict(kwargs, num_classes=0)
    if pretrained and weights is None and not (kwargs.get('pretrained_cfg') or kwargs.get('pretrained_cfg_overlay')):
        weights = hub_weights_file(name)
    model = _create_backbone(name, pretrained=pretrained and weights is None, **kwargs)
    if weights is not None:
        load_backbone_weights(model, weights, name)
    return model


def _create_backbone(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=pretrained, dynamic_img_size=True, **kwargs)
    except TypeError as e:
        # Only CNN-like classes reject the argument; they take any input size anyway.
        if 'dynamic_img_size' not in str(e):
            raise
    return timm.create_model(name, pretrained=pretrained, **kwargs)


class Backbone(nn.Module):
    """A timm model seen as a list of NCHW maps from its last `num_stages` feature stages.

    The last map (`maps[-1]`) is the final feature map the heads pool and classify; `channels[i]` and
    `strides[i]` describe `maps[i]`.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        num_stages: int = 1,
        **kwargs: Any,
    ):
        super().__init__()
        self.model = create_backbone_model(name, pretrained=pretrained, **kwargs)
        if not hasattr(self.model, 'forward_intermediates'):
            raise ValueError(
                f"Backbone '{name}' does not implement timm's `forward_intermediates`, which fgvc_zoo needs to read "
                f'its feature maps. Pick a backbone that does (most timm CNNs, ConvNeXt, EfficientNet, ViT, Swin).'
            )
        feature_info = self.model.feature_info
        if num_stages < 1 or num_stages > len(feature_info):
            raise ValueError(
                f"num_stages={num_stages} is out of range for backbone '{name}', which has {len(feature_info)} "
                f'feature stages.'
            )
        self.name = name
        self.num_stages = num_stages
        self.stage_indices = list(range(len(feature_info) - num_stages, len(feature_info)))
        # Drop the classifier head and any layer after the last stage we read: unused parameters would get no
        # gradient (DDP's unused-parameter error) and cost memory.
        self.model.prune_intermediate_layers(self.stage_indices, prune_norm=False, prune_head=True)
        self.channels = [feature_info[i]['num_chs'] for i in self.stage_indices]
        self.strides = [feature_info[i]['reduction'] for i in self.stage_indices]
        self.num_features = self.channels[-1]
        self.stride = self.strides[-1]
        self.grad_checkpointing = False

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The timm model's pretrained cfg (its Hub id is the `base_model` of an exported card)."""
        return self.model.pretrained_cfg

    def forward(self, x: torch.Tensor, num_stages: int | None = None) -> list[torch.Tensor]:
        """Return the NCHW maps of the configured stages, shallowest first.

        `num_stages` returns only the first that many of them and stops the backbone there (a head that trains one
        stage at a time need not run the deeper ones).
        """
        indices = self.stage_indices if num_stages is None else self.stage_indices[:num_stages]
        return self.model.forward_intermediates(
            x,
            indices=indices,
            norm=True,
            stop_early=num_stages is not None,
            output_fmt='NCHW',
            intermediates_only=True,
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        self.model.set_grad_checkpointing(enable)

    def group_matcher(self, coarse: bool = False, prefix: str = 'backbone.model.') -> dict[str, Any]:
        """The backbone's own parameter groups with every regex re-rooted under `prefix`."""
        matcher = self.model.group_matcher(coarse=coarse)
        return {k: _prefix_matcher(v, prefix) for k, v in matcher.items()}

    def no_weight_decay(self, prefix: str = 'backbone.model.') -> set:
        names = self.model.no_weight_decay() if hasattr(self.model, 'no_weight_decay') else set()
        # timm lists names of optional tokens too (ViT's dist_token, reg_token); keep the ones this model has.
        existing = {n for n, _ in self.model.named_parameters()}
        return {prefix + n for n in names if n in existing}


def _prefix_regex(regex: str, prefix: str) -> str:
    # timm writes alternations as '^a|b|^c' meaning "starts with a, b or c"; group them under the prefix.
    body = regex.lstrip('^').replace('|^', '|')
    return '^' + prefix.replace('.', r'\.') + '(?:' + body + ')'


def _prefix_matcher(matcher: Any, prefix: str) -> Any:
    if isinstance(matcher, str):
        return _prefix_regex(matcher, prefix)
    if isinstance(matcher, (list, tuple)):
        return [(_prefix_regex(r, prefix), order) for r, order in matcher]
    raise TypeError(f'Unsupported group matcher {matcher!r}')
