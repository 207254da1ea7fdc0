"""The top-k classes of images with their names and probabilities (`fgvc-zoo predict`)."""

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from PIL import Image

__all__ = ['predict', 'format_predictions']


@torch.no_grad()
def predict(
    model: nn.Module,
    images: Sequence[Image.Image],
    transform: Callable,
    label_names: Sequence[str] | None = None,
    topk: int = 5,
) -> list[list[dict[str, Any]]]:
    """Per image, the `topk` most probable classes, best first: {'index', 'label', 'probability'} (softmax)."""
    model.eval()
    device = next(model.parameters()).device
    probs = model(torch.stack([transform(image) for image in images]).to(device)).float().softmax(dim=1).cpu()
    if label_names is not None and len(label_names) != probs.shape[1]:
        raise ValueError(f'{len(label_names)} label names for a model with {probs.shape[1]} classes.')
    names = list(label_names) if label_names is not None else [str(k) for k in range(probs.shape[1])]
    values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
    return [
        [
            {'index': k, 'label': names[k], 'probability': p}
            for k, p in zip(row_indices.tolist(), row_values.tolist(), strict=False)
        ]
        for row_values, row_indices in zip(values, indices, strict=False)
    ]


def format_predictions(paths: Sequence[str], predictions: Sequence[Sequence[dict[str, Any]]]) -> str:
    """Text output: the image path, then one '  rank. label  probability%' line per class."""
    lines = []
    for path, top in zip(paths, predictions, strict=False):
        lines.append(path)
        lines += [f'  {rank}. {p["label"]}  {100 * p["probability"]:.2f}%' for rank, p in enumerate(top, 1)]
    return '\n'.join(lines)
