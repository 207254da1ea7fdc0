"""`fgvc-zoo explain IMAGE... --out DIR`: what the head looks at (its maps and boxes) over each original image, one
PNG each."""

import argparse

from ..data import load_image
from ..inference.explain import DPI, FORMATS, VIEWS, draw_explanation, explain_images, output_paths
from ..runtime import load_for_inference
from .common import add_model_arguments, positive_int

__all__ = ['add_arguments', 'main']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('images', nargs='+', help='image files')
    add_model_arguments(parser)
    parser.add_argument(
        '--out',
        required=True,
        help='output folder (one <image>_explain.<format> each, <folder>_<image>_'
        'explain.<format> when names repeat); for one image also a .png, .pdf or .svg path',
    )
    parser.add_argument(
        '--parts',
        type=positive_int,
        default=None,
        help="parts drawn, for heads that have parts (their explanation_parts; DP-Net's default 3, the largest "
        'V[pred] x score)',
    )
    parser.add_argument(
        '--format',
        choices=FORMATS,
        help='png (raster at --dpi), or pdf / svg (vector, the original embedded at its own resolution); default: '
        "--out's suffix, else png",
    )
    parser.add_argument(
        '--dpi', type=positive_int, default=DPI, help=f'pixels per inch of a png (default {DPI}; 200 doubles them)'
    )
    parser.add_argument(
        '--view',
        choices=VIEWS,
        default='full',
        help='full: explain the whole image (maps cover every pixel); crop: exactly what eval/predict see, the cut '
        'border dimmed',
    )


def main(args: argparse.Namespace) -> int:
    model, transform, names, _ = load_for_inference(args.checkpoint, args.model, args.img_size, args.device)
    if args.parts is not None and hasattr(model, 'explanation_parts'):  # a head with parts declares how many it draws
        model.explanation_parts = args.parts
    suffix = args.out.lower().rsplit('.', 1)[-1]
    fmt = args.format or (suffix if suffix in FORMATS else 'png')
    outputs = output_paths(args.images, args.out, fmt)
    for image_path, out in zip(args.images, outputs, strict=False):
        (explained,) = explain_images(model, [load_image(image_path)], transform, names, view=args.view)
        draw_explanation(explained, str(out), fmt=fmt, dpi=args.dpi)
        print(f'{image_path}: {explained.label} ({explained.probability:.1%}) -> {out}')
    return 0
