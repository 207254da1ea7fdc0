"""`fgvc-zoo space DIR OUT`: write a folder that runs as a Hugging Face Space (gradio app, model, examples)."""

import argparse

__all__ = ['add_arguments', 'main']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('dir', help='a trained or exported folder (model.safetensors + config.json)')
    parser.add_argument('out', help='the Space folder to write (new or empty)')
    parser.add_argument('--examples', nargs='*', help='example images (default: a few from DIR/synthetic_data/val)')
    parser.add_argument('--title', help='Space title')
    parser.add_argument('--topk', type=int, default=5, help='classes shown')


def main(args: argparse.Namespace) -> int:
    from ..demo import write_space

    out = write_space(args.dir, args.out, args.examples, title=args.title, topk=args.topk)
    print(
        f'Wrote the Space {out}: try it with `python {out / "app.py"}`, '
        f'push it with `fgvc-zoo push {out} ORG/NAME --space`'
    )
    return 0
