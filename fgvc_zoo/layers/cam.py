"""Class activation maps (Zhou et al., CVPR 2016) and their smoothing, shared by the heads."""

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import gaussian_blur

__all__ = ['class_activation_maps', 'smooth_maps', 'upsample_maps', 'min_max_scale']


def class_activation_maps(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """M_k = sum_i W_ki Z_i for every class k: (B, n, h, w) features and (C, n) weights -> (B, C, h, w).

    The weights take the features' dtype: under CPU autocast the backbone returns bf16 features while the fp32
    classifier weight is not cast for einsum, which then fails on the mixed dtypes.
    """
    return torch.einsum('bnhw,cn->bchw', features, weight.to(features.dtype))


def smooth_maps(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of (B, K, h, w) maps with `sigma` in feature cells; 0 returns the maps unchanged."""
    if sigma <= 0:
        return maps
    # torchvision pads by reflection, which needs a kernel no wider than twice the map; small maps get a cut kernel.
    kernel = min(2 * math.ceil(3 * sigma) + 1, 2 * min(maps.shape[-2:]) - 1)
    if kernel < 3:
        return maps
    kernel -= 1 - kernel % 2
    return gaussian_blur(maps, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def upsample_maps(maps: torch.Tensor, size) -> torch.Tensor:
    """Feature-cell maps to input pixels; cell centres land on the pixel centres the box proposals use."""
    return F.interpolate(maps, size=tuple(size), mode='bilinear', align_corners=False)


def min_max_scale(maps: torch.Tensor, dim: tuple[int, ...] = (-2, -1)) -> torch.Tensor:
    """Scale `maps` to [0, 1] over `dim` (per map: every other dimension keeps its own range); a constant map
    becomes all zeros rather than NaN. The one min-max of the package: IAGN's attention, explain's colour scale,
    a float image's grey levels."""
    low = maps.amin(dim=dim, keepdim=True)
    high = maps.amax(dim=dim, keepdim=True)
    return (maps - low) / (high - low).clamp_min(torch.finfo(maps.dtype).tiny)
