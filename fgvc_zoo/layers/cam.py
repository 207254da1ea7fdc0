"""Class activation maps (Zhou et al., CVPR 2016) and their smoothing, shared by the heads."""

import math

import torch
import torch.nn.functional as F

__all__ = ['class_activation_maps', 'gaussian_kernel', 'smooth_maps', 'upsample_maps', 'min_max_scale']


def class_activation_maps(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """M_k = sum_i W_ki Z_i for every class k: (B, n, h, w) features and (C, n) weights -> (B, C, h, w).

    The weights take the features' dtype: under CPU autocast the backbone returns bf16 features while the fp32
    classifier weight is not cast for einsum, which then fails on the mixed dtypes.
    """
    return torch.einsum('bnhw,cn->bchw', features, weight.to(features.dtype))


def gaussian_kernel(size: int, sigma: float) -> tuple[float, ...]:
    """The normalised 1D Gaussian exp(-d^2 / (2 sigma^2)), d = -(size // 2) .. size // 2, as Python floats."""
    pdf = [math.exp(-0.5 * (d / sigma) ** 2) for d in range(-(size // 2), size // 2 + 1)]
    return tuple(p / sum(pdf) for p in pdf)


def smooth_maps(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of (B, K, h, w) maps with `sigma` in feature cells; 0 returns the maps unchanged.

    What torchvision's `gaussian_blur` does (reflection padding, one 2D convolution), with the kernel a constant of
    the graph: torchvision computes it with tensor ops and expands it to the traced channel count, a kernel of
    unknown shape that the ONNX exporter cannot convolve with.
    """
    if sigma <= 0:
        return maps
    # Plain ints: the ONNX tracer hands out sizes as tensors, which would make the kernel's shape a graph value.
    height, width = (int(size) for size in maps.shape[-2:])
    # Reflection padding needs a kernel no wider than twice the map; small maps get a cut kernel.
    kernel = min(2 * math.ceil(3 * sigma) + 1, 2 * min(height, width) - 1)
    if kernel < 3:
        return maps
    kernel -= 1 - kernel % 2
    kernel_1d = torch.tensor(gaussian_kernel(kernel, sigma), dtype=maps.dtype, device=maps.device)
    weight = (kernel_1d[:, None] * kernel_1d[None, :]).view(1, 1, kernel, kernel)
    padded = F.pad(maps.reshape(-1, 1, height, width), [kernel // 2] * 4, mode='reflect')
    return F.conv2d(padded, weight).view(maps.shape)


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
