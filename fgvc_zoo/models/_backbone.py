"""Backbone adapter: any timm model -> its final NCHW feature map, and the maps of its last stages.

Every head in fgvc_zoo reaches its backbone through this module and nothing else, so a head never knows
whether it sits on a ResNet, a ConvNeXt, an EfficientNet, a ViT or a Swin. Feature maps come from timm's own
`forward_intermediates(..., output_fmt='NCHW')`; channels and strides come from `feature_info`. The final map
is the one timm's own classifier pools (see `Backbone` for the one rule, per kind of pool), so a head keeps every
pretrained layer that can act on a map and none that cannot. The only model-dependent decision is asking for
`dynamic_img_size=True` where the model class supports it, so that a 448 image and 224 crops go through the same
weights (ViT, Swin, ...).
"""

import difflib
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.layers import RmsNorm, SelectAdaptivePool2d

from ..layers.norm_stats import freeze_stats_in_recompute
from .hub_io import hub_weights_file, load_backbone_weights

__all__ = ['Backbone', 'create_backbone_model', 'check_backbone_name', 'backbone_pool']

# timm's average pools (SelectAdaptivePool2d's 'fast' is a mean too).
AVERAGE_POOLS = ('avg', 'fast')
# Pools that read a token or attention over the map: the map they read is kept, the pool itself is removed.
MAP_READ_POOLS = ('token', 'map', 'attention')


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
    """A timm model seen as its final feature map and, on request, the NCHW maps of its last `num_stages` stages.

    `forward` returns the final map (B, num_features, h, w): the map timm's own classifier pools, after every layer
    timm runs before pooling (EfficientNet's conv_head/bn2, ViT's final norm). One rule by the backbone's pool
    (`pool`, from `backbone_pool`):

    - an average pool: a LayerNorm the classifier applies after pooling (ConvNeXt's `head.norm`, ViT's/EVA's
      `fc_norm`) is folded in per image, so the map's average is exactly `forward_head(forward_features(x),
      pre_logits=True)`: a head starts from the features the pretrained classifier was trained on;
    - a token or attention pool (ViT/DINOv2/CLIP `'token'`: the CLS token; SigLIP/ViT `'map'`, CLIP ResNets'
      attention pool), or layers after an average pool that cannot act per position (MobileNetV3's `conv_head`,
      MambaOut's MLP head): the map is the one the pool reads (ViT: the patch tokens after the final norm) and
      the layers after it are removed (`removed`), so no parameter is left without a gradient. The CLS token
      stays: every patch token attends to it. The registered weights load before the removal;
    - any other pool ('max', 'avgmax', 'catavgmax', none) is refused: the heads average the map, which would
      silently change what the backbone was trained to give.

    `forward_stages` returns the stage maps of `forward_intermediates`; `channels[i]` and `strides[i]` describe
    them, `stride` is the final map's.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        num_stages: int = 0,
        **kwargs: Any,
    ):
        """
        Args:
            name: any timm model name (with an optional pretrained tag).
            pretrained: load the model's pretrained weights.
            num_stages: how many last stages `forward_stages` reads; 0 for a head that reads only the final map. A
                head that reads stage maps never runs the layers after the last stage, so they are removed (unused
                parameters would get no gradient: DDP's unused-parameter error).
            kwargs: keyword arguments of the timm constructor.
        """
        super().__init__()
        self.model = create_backbone_model(name, pretrained=pretrained, **kwargs)
        if not hasattr(self.model, 'forward_intermediates'):
            raise ValueError(
                f"Backbone '{name}' does not implement timm's `forward_intermediates`, which fgvc_zoo needs to read "
                f'its feature maps. Pick a backbone that does (most timm CNNs, ConvNeXt, EfficientNet, ViT, Swin).'
            )
        feature_info = self.model.feature_info
        if num_stages < 0 or num_stages > len(feature_info):
            raise ValueError(
                f"num_stages={num_stages} is out of range for backbone '{name}', which has {len(feature_info)} "
                f'feature stages.'
            )
        self.name = name
        self.num_stages = num_stages
        self.stage_indices = list(range(len(feature_info) - max(num_stages, 1), len(feature_info)))
        self.channels = [feature_info[i]['num_chs'] for i in self.stage_indices]
        self.strides = [feature_info[i]['reduction'] for i in self.stage_indices]
        self.stride = self.strides[-1]
        # The classifier's pool decides the final map; a stage reader never pools through it (None).
        self.pool = None if num_stages else backbone_pool(self.model)
        self.removed: list[str] = []
        if num_stages:
            self._prune_head(self.stage_indices)
            self.num_features = self.channels[-1]
        elif self.pool in AVERAGE_POOLS and not _has_post_pool_layers(self.model):
            self.num_features = self.model.num_features
            _pooled_norm(self.model)  # refuse an unsupported norm now rather than at the first forward
        elif self.pool in AVERAGE_POOLS + MAP_READ_POOLS:
            self._prune_head(self.stage_indices[-1:])
            self.num_features = self.channels[-1]
        else:
            raise ValueError(
                f"Backbone '{name}' pools its features with global_pool='{self.pool}', which fgvc_zoo's heads cannot "
                f"reproduce on a map (they average it): build it with backbone_args={{'global_pool': 'avg'}}."
            )
        # The layout of the timm model's own feature maps (its `output_fmt`); `forward` returns NCHW whatever it is.
        self.feature_fmt = getattr(self.model, 'output_fmt', 'NCHW')
        self.grad_checkpointing = False
        self._recompute_hooks: list = []

    def _prune_head(self, indices: list[int]) -> None:
        """Remove the layers after the map the head reads (pool, post-pool layers, classifier) and record them."""
        before = {n.split('.')[0] for n, _ in self.model.named_parameters()}
        self.model.prune_intermediate_layers(indices, prune_norm=False, prune_head=True)
        after = {n.split('.')[0] for n, _ in self.model.named_parameters()}
        self.removed = sorted(before - after)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The timm model's pretrained cfg: the weights `pretrained=True` loads (or would have loaded)."""
        return self.model.pretrained_cfg

    def forward(self, x: torch.Tensor, num_stages: int | None = None) -> torch.Tensor | list[torch.Tensor]:
        """The final feature map (B, num_features, h, w), whose average pool is timm's pre-logits feature; the stage
        maps (`forward_stages`) for a backbone built with `num_stages > 0`."""
        if self.num_stages:
            return self.forward_stages(x, num_stages)
        final, stage_maps = self.model.forward_intermediates(
            x, indices=self.stage_indices[-1:], norm=True, output_fmt='NCHW'
        )
        final = self._as_nchw(final, stage_maps[-1].shape[-2:])
        norm = _pooled_norm(self.model)  # looked up, not stored: a second reference would duplicate state-dict keys
        if norm is None:
            return final
        # The classifier normalises the pooled vector; the same per-image affine map applied to every position
        # keeps the map linear (class maps stay class maps) and makes its average the normalised vector.
        pooled = final.mean(dim=(2, 3))
        if isinstance(norm, RmsNorm):
            scale = torch.rsqrt(pooled.pow(2).mean(dim=1) + norm.eps).view(-1, 1, 1, 1)
            return final * scale * norm.weight.view(1, -1, 1, 1)
        scale = torch.rsqrt(pooled.var(dim=1, unbiased=False) + norm.eps).view(-1, 1, 1, 1)
        centred = (final - pooled.mean(dim=1).view(-1, 1, 1, 1)) * scale
        return centred * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)

    def _as_nchw(self, final: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if final.ndim == 3:  # tokens (B, prefix + h * w, C): drop the prefix tokens, lay the rest on the grid
            patches = final[:, final.shape[1] - grid[0] * grid[1] :]
            return patches.transpose(1, 2).reshape(final.shape[0], -1, *grid)
        if self.feature_fmt == 'NHWC':
            return final.permute(0, 3, 1, 2)
        return final

    def forward_stages(self, x: torch.Tensor, num_stages: int | None = None) -> list[torch.Tensor]:
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
        """timm's checkpointing, with BatchNorm statistics updated once per forward (not again by the recompute)."""
        self.grad_checkpointing = enable
        self.model.set_grad_checkpointing(enable)
        for handle in self._recompute_hooks:
            handle.remove()
        self._recompute_hooks = freeze_stats_in_recompute(self.model) if enable else []

    def group_matcher(self, coarse: bool = False, prefix: str = 'backbone.model.') -> dict[str, Any]:
        """The backbone's own parameter groups with every regex re-rooted under `prefix`."""
        matcher = self.model.group_matcher(coarse=coarse)
        return {k: _prefix_matcher(v, prefix) for k, v in matcher.items()}

    def no_weight_decay(self, prefix: str = 'backbone.model.') -> set:
        names = self.model.no_weight_decay() if hasattr(self.model, 'no_weight_decay') else set()
        # timm lists names of optional tokens too (ViT's dist_token, reg_token); keep the ones this model has.
        existing = {n for n, _ in self.model.named_parameters()}
        return {prefix + n for n in names if n in existing}


def backbone_pool(model: nn.Module) -> str:
    """The global pool of a timm model's classifier: an `AVERAGE_POOLS` or `MAP_READ_POOLS` name, or another timm
    pool type ('max', 'catavgmax', '' for none, ...).

    timm keeps it as `global_pool` (a string or a `SelectAdaptivePool2d`) on the model or on its head, or as the
    head's `pool_type`; an attention-pool module in its place (`attn_pool`, CLIP ResNets' `AttentionPool2d` head)
    is 'attention' whatever the string says.
    """
    head = getattr(model, 'head', None)
    if getattr(model, 'attn_pool', None) is not None or 'Attention' in type(head).__name__:
        return 'attention' if getattr(model, 'global_pool', None) != 'map' else 'map'
    for owner in (model, head):
        pool = getattr(owner, 'global_pool', None)
        if isinstance(pool, SelectAdaptivePool2d):
            return pool.pool_type
        if isinstance(pool, str):
            return pool
        if isinstance(getattr(owner, 'pool_type', None), str):
            return owner.pool_type
    raise ValueError(
        f'Cannot tell how {type(model).__name__} pools its features (no global_pool or pool_type): fgvc_zoo '
        f'needs to know which map its classifier reads. Pick a timm backbone that declares its global_pool.'
    )


def _has_post_pool_layers(model: nn.Module) -> bool:
    """Whether layers other than a norm act on the pooled vector before the classifier (MobileNetV3's conv_head,
    an MLP head): timm then reports their width as `head_hidden_size`."""
    return getattr(model, 'head_hidden_size', model.num_features) != model.num_features


def _pooled_norm(model: nn.Module) -> nn.LayerNorm | RmsNorm | None:
    """The LayerNorm (or RmsNorm) that timm's classifier applies after average pooling, if any.

    timm's two places for it: a `NormMlpClassifierHead`'s `head.norm` (ConvNeXt and its kin) and `fc_norm`
    (ViT and its kin with average pooling). Any other non-identity norm there is refused rather than skipped.
    """
    for norm in (getattr(getattr(model, 'head', None), 'norm', None), getattr(model, 'fc_norm', None)):
        if norm is None or isinstance(norm, nn.Identity):
            continue
        if isinstance(norm, nn.LayerNorm) and norm.elementwise_affine and norm.weight.ndim == 1:
            return norm
        if isinstance(norm, RmsNorm) and norm.weight is not None and norm.weight.ndim == 1:
            return norm
        raise ValueError(
            f'The backbone normalises pooled features with {type(norm).__name__}, which fgvc_zoo cannot '
            f'fold into its feature map; pick a backbone whose classifier uses a LayerNorm, an RmsNorm or none.'
        )
    return None


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
