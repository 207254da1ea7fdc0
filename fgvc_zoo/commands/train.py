"""`fgvc-zoo train`, and `python -m fgvc_zoo.train` for the launchers (`accelerate launch`, `torchrun`) that need a
module: the flags of `fgvc_zoo.training.config`, resolved, run by `fgvc_zoo.training.loop.train`."""

import argparse
import logging
import sys
from collections.abc import Sequence

from ..training.config import add_train_arguments, resolve_config
from .common import ArgumentParser, report_errors

__all__ = ['add_arguments', 'main', 'launch']

LAUNCHED_PROG = 'python -m fgvc_zoo.train'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)


def main(args: argparse.Namespace) -> int:
    config = resolve_config(args)  # a usage error is refused before torch and timm load (seconds from a cold cache)
    from ..training.loop import train

    train(config)
    return 0


def launch(argv: Sequence[str] | None = None) -> int:
    """`python -m fgvc_zoo.train ARGS` (one process of a launcher): the errors and exit statuses of `fgvc-zoo train`."""
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')

    def run(args: list[str]) -> int:
        parser = ArgumentParser(prog=LAUNCHED_PROG, description='The one Accelerate trainer for every fgvc_zoo head.')
        add_arguments(parser)
        return main(parser.parse_args(args))

    return report_errors(run, sys.argv[1:] if argv is None else list(argv), LAUNCHED_PROG)
