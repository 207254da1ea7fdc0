"""`fgvc-zoo predict IMAGE...`: the top-k classes of each image with their names and probabilities.

An image that cannot be read is reported (one `fgvc-zoo predict: error:` line each on stderr; an `error` entry in
the JSON) and the others are still predicted; the exit status is then 1.
"""

import argparse
import json
import sys
from typing import Any

from ..errors import UsageError
from .common import add_model_arguments

__all__ = ['add_arguments', 'main']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('images', nargs='+', help='image files')
    add_model_arguments(parser)
    parser.add_argument('--topk', type=int, default=5, help='classes shown per image')
    parser.add_argument('--json', action='store_true', help='print JSON: [{"image", "predictions": [...]}, ...]')
    parser.add_argument('--batch-size', type=int, default=16, help='images per forward pass')


def main(args: argparse.Namespace) -> int:
    from ..data import load_image
    from ..inference.predict import format_predictions, predict
    from ..runtime import load_for_inference

    if args.topk < 1:
        raise UsageError(f'--topk {args.topk}: ask for at least 1 class.')
    model, transform, names, _ = load_for_inference(args.checkpoint, args.model, args.img_size, args.device)
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
