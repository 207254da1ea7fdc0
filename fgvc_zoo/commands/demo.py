"""`fgvc-zoo demo --checkpoint DIR...`: serve a page (gradio) where a person uploads a photo and sees the top-k
classes and what the head looks at."""

import argparse
from pathlib import Path

from ..errors import UsageError

__all__ = ['add_arguments', 'main']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--checkpoint',
        nargs='+',
        required=True,
        help='one or more trained/exported folders, hf-hub:ORG/NAME or tags; the page switches between them',
    )
    parser.add_argument('--examples', nargs='*', help='example images (default: a few from each synthetic_data/val)')
    parser.add_argument('--img-size', type=int, help="input side; default: each model's data config, like predict")
    parser.add_argument('--topk', type=int, default=5, help='classes shown')
    parser.add_argument('--device', default='cpu', help='torch device, e.g. cpu or cuda')
    parser.add_argument('--host', default='127.0.0.1', help='address to serve on (0.0.0.0 to reach it from others)')
    parser.add_argument('--port', type=int, default=7860, help='port to serve on')
    parser.add_argument(
        '--share',
        action=argparse.BooleanOptionalAction,
        default=False,
        help='also serve through a temporary public gradio.live link (needs internet; off by default)',
    )
    parser.add_argument('--title', help='page title')


def main(args: argparse.Namespace) -> int:
    from ..demo import build_demo, checked_examples, find_examples, import_gradio, load_demo_model, served_folders

    if args.topk < 1:
        raise UsageError(f'--topk {args.topk}: ask for at least 1 class.')
    import_gradio()
    models = [load_demo_model(source, args.img_size, args.device) for source in args.checkpoint]
    if args.examples is None:
        examples, seen = [], set()
        for path in [path for source in args.checkpoint for path in find_examples(source)]:
            content = Path(path).read_bytes()  # checkpoints trained on the same synthetic data share images
            if content not in seen:
                seen.add(content)
                examples.append(path)
    else:
        examples = checked_examples(args.examples)
    page = build_demo(models, examples, topk=args.topk, title=args.title)
    print(f'Serving {", ".join(args.checkpoint)} on http://{args.host}:{args.port} (Ctrl+C stops)', flush=True)
    page.launch(server_name=args.host, server_port=args.port, share=args.share, allowed_paths=served_folders(examples))
    return 0
