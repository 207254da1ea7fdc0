"""`fgvc-zoo list [FILTER]`: the registered models and tags, and which weights `pretrained=True` loads for each."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('filter', nargs='?', default='*', help='wildcard filter, e.g. "lfd*"')


def main(args: argparse.Namespace) -> int:
    from ..hub import describe_pretrained
    from ..models import PUBLISHED_TAGS, head_models

    names = head_models(args.filter, include_tags=True)
    width = max((len(n) for n in names), default=0)
    print('\n'.join(f'{name:<{width}}  {describe_pretrained(name)}' for name in names))
    published = ', '.join(sorted(PUBLISHED_TAGS)) or 'none yet'
    print(f'\nFine-grained (FGVC) weights published on the Hub: {published}.')
    return 0
