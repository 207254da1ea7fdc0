"""`fgvc-zoo predict IMAGE...`: the top-k classes of each image with their names and probabilities.

An image that cannot be read is reported (one `fgvc-zoo predict: error:` line each on stderr; an `error` entry in
the JSON) and the others are still predicted; the exit status is then 1.
"""

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from PIL import Image

__all__ = ['predict', 'format_predictions', 'add_predict_arguments', 'predict_main']


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


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    from .evaluate import add_model_arguments

    parser.add_argument('images', nargs='+', help='image files')
    add_model_arguments(parser)
    parser.add_argument('--topk', type=int, default=5, help='classes shown per image')
    parser.add_argument('--json', action='store_true', help='print JSON: [{"image", "predictions": [...]}, ...]')
    parser.add_argument('--batch-size', type=int, default=16, help='images per forward pass')


def predict_main(args: argparse.Namespace) -> int:
    from .data import load_image
    from .evaluate import load_from_args

    if args.topk < 1:
        raise SystemExit(f'--topk {args.topk}: ask for at least 1 class.')
    model, transform, names, _ = load_from_args(args)
    results: dict[str, list[dict[str, Any]] | str] = {}  # path -> its predictions, or why it could not be read
    for start in range(0, len(args.images), args.batch_size):
        paths, batch = [], []
        for path in args.images[start : start + args.batch_size]:
            try:
                batch.append(load_image(path))
                paths.append(path)
            except OSError as e:  # UnreadableImageError: missing, empty, corrupt, not an image
                results[path] = str(e)
                print(f'fgvc-zoo predict: error: {e}', file=sys.stderr)
        if batch:
            results.update(zip(paths, predict(model, batch, transform, names, args.topk), strict=True))
    good = [p for p in args.images if not isinstance(results[p], str)]
    if args.json:
        entries = [
            {'image': p, 'error': results[p]}
            if isinstance(results[p], str)
            else {'image': p, 'predictions': results[p]}
            for p in args.images
        ]
        print(json.dumps(entries, indent=2))
    elif good:
        print(format_predictions(good, [results[p] for p in good]))
    return 1 if len(good) < len(args.images) else 0
