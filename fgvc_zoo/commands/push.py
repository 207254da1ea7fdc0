"""`fgvc-zoo push DIR ORG/NAME`: upload an export folder to a Hub model repo, or with --space a Space folder."""

import argparse
from pathlib import Path

from ..errors import UsageError

__all__ = ['add_arguments', 'main']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('dir', help='an exported or trained model folder')
    parser.add_argument('repo_id', metavar='ORG/NAME', help='the Hub repo, created if it does not exist')
    parser.add_argument('--private', action='store_true', help='create the repo private')
    parser.add_argument('--token', help='Hugging Face token with write access (default: HF_TOKEN or hf auth login)')
    parser.add_argument('--keep-card', metavar='DIR', help='also copy the card to DIR/ORG--NAME.md (model_cards/)')
    parser.add_argument(
        '--space', action='store_true', help='DIR is a folder written by `fgvc-zoo space`: push it as a gradio Space'
    )


def main(args: argparse.Namespace) -> int:
    from ..hub import CARD_NAME, push, push_space

    if args.space:
        if args.keep_card:
            raise UsageError('--keep-card keeps a model card; a Space folder has none: drop --keep-card or --space.')
        print(f'Pushed the Space {args.dir} to {push_space(args.dir, args.repo_id, args.private, args.token)}')
        return 0
    url = push(args.dir, args.repo_id, private=args.private, token=args.token)
    if args.keep_card:
        kept = Path(args.keep_card) / f'{args.repo_id.replace("/", "--")}.md'
        kept.write_text((Path(args.dir) / CARD_NAME).read_text())
        print(f'Kept the card in {kept}')
    print(f'Pushed {args.dir} to {url}')
    return 0
