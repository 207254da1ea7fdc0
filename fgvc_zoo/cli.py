"""`fgvc-zoo {train,eval,predict,explain,demo,space,export,push,list,bench,compare}`.

Each subcommand NAME is the module `fgvc_zoo.commands.NAME` (`list` is `list_models`), which exposes
`add_arguments(parser)` and `main(args) -> int`. Only the module of the subcommand that runs is imported, so
`fgvc-zoo --help` and `fgvc-zoo list` stay fast.

`run(argv)` raises what the command raises (for tests and Python callers); `main()` is the console script: an
error the package raises on purpose becomes one line `fgvc-zoo COMMAND: error: MESSAGE` with exit status 2 for a
usage error and 1 for a runtime one, and `--debug` (or FGVC_ZOO_DEBUG=1) adds the traceback. An exception raised
anywhere else (a bug) keeps its traceback.
"""

import argparse
import difflib
import importlib
import sys
from collections.abc import Sequence

from .commands.common import DEBUG_ENV, DEBUG_FLAG, ArgumentParser, report_errors
from .errors import UsageError

__all__ = ['SUBCOMMANDS', 'run', 'main']

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    'train': ('train', 'train or fine-tune a head (same code as `accelerate launch -m fgvc_zoo.train`)'),
    'eval': ('eval', 'top-1/top-5, per-class accuracy and confusion of a checkpoint or Hub model'),
    'predict': ('predict', 'top-k labels with names and probabilities for images'),
    'explain': ('explain', 'draw what a head looks at (maps and boxes) over images, as PNG'),
    'demo': ('demo', 'serve a page (gradio) to upload images and see top-k and explanations'),
    'space': ('space', 'write a Hugging Face Space folder (gradio app, model, examples) for a model'),
    'export': ('export', 'write model.safetensors + config.json + model card for the Hub (+ model.onnx)'),
    'push': ('push', 'upload an exported or trained model folder to a Hub repo'),
    'convert-weights': (
        'convert_weights',
        "turn a state dict named another way into a timm model's weights (a --backbone-weights file), checked",
    ),
    'list': ('list_models', 'list the registered fgvc_zoo models and tags, and which weights each loads'),
    'bench': ('bench', 'time each head against the backbone passes it needs'),
    'compare': ('compare', 'does a head help on my data? each head against plain fine-tuning, with a report'),
}


def _usage() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog='fgvc-zoo',
        description='Fine-grained visual classification on timm.',
        epilog=f'Errors are one line; {DEBUG_FLAG} (anywhere) or {DEBUG_ENV}=1 shows the traceback too. '
        '`fgvc-zoo COMMAND --help` lists the options of a command.',
    )
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand and return its exit status; errors propagate (`main` turns them into one line)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        if argv and not argv[0].startswith('-'):
            close = difflib.get_close_matches(argv[0], list(SUBCOMMANDS), n=3)
            hint = f' Did you mean {" or ".join(close)}?' if close else ''
            raise UsageError(f"unknown command '{argv[0]}'.{hint} Commands: {', '.join(SUBCOMMANDS)}.")
        _usage().parse_args(argv or ['--help'])  # prints the help, or an error
        return 2
    name, (module_name, help_text) = argv[0], SUBCOMMANDS[argv[0]]
    module = importlib.import_module(f'fgvc_zoo.commands.{module_name}')
    parser = ArgumentParser(prog=f'fgvc-zoo {name}', description=help_text)
    module.add_arguments(parser)
    return int(module.main(parser.parse_args(argv[1:])) or 0)


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if a != DEBUG_FLAG), None)
    prog = f'fgvc-zoo {command}' if command in SUBCOMMANDS else 'fgvc-zoo'
    sys.exit(report_errors(run, argv, prog))


if __name__ == '__main__':
    main()
