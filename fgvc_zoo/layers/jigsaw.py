"""Jigsaw patches (PMG, Du et al., ECCV 2020): shuffle the n x n cells of every image, the whole batch at once.

Written by hand because neither timm nor torchvision ships a jigsaw transform that works on a batch of tensors;
one `gather` over the cell axis permutes every image with its own permutation, with no Python loop over images.
"""

import torch

__all__ = ['jigsaw']


def jigsaw(images: torch.Tensor, granularity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cut each (B, C, H, W) image into granularity x granularity cells and permute them at random, per image.

    Cells are (H // n) x (W // n) pixels; when n does not divide a side, the few rows or columns left over at the
    bottom and right stay where they are. Granularity 1 returns the images unchanged.
    """
    if granularity < 1:
        raise ValueError(f'jigsaw: granularity={granularity} must be a positive number of cells per side.')
    batch_size, channels, height, width = images.shape
    n = granularity
    cell_h, cell_w = height // n, width // n
    if cell_h == 0 or cell_w == 0:
        raise ValueError(f'jigsaw: a {height}x{width} image cannot be cut into {n}x{n} cells; use a larger input.')
    if n == 1:
        return images
    grid = images[..., : n * cell_h, : n * cell_w]
    cells = grid.reshape(batch_size, channels, n, cell_h, n, cell_w).permute(0, 2, 4, 1, 3, 5)
    cells = cells.reshape(batch_size, n * n, channels, cell_h, cell_w)
    order = torch.rand(batch_size, n * n, generator=generator, device=images.device).argsort(dim=1)
    cells = cells.gather(1, order.view(batch_size, n * n, 1, 1, 1).expand_as(cells))
    grid = cells.reshape(batch_size, n, n, channels, cell_h, cell_w).permute(0, 3, 1, 4, 2, 5)
    shuffled = images.clone()
    shuffled[..., : n * cell_h, : n * cell_w] = grid.reshape(batch_size, channels, n * cell_h, n * cell_w)
    return shuffled
