"""`fgvc-zoo {train,eval,predict,explain,demo,space,export,push,list,bench}`.

Each subcommand NAME lives in a module that exposes `add_NAME_arguments(parser)` and `NAME_main(args) -> int`.
Only the module of the subcommand that runs is imported, so `fgvc-zoo --help` and `fgvc-zoo list` stay fast.

`run(argv)` raises what the command raises (for tests and Python callers); `main()` is the console script: an
error the package raises on purpose becomes one line `fgvc-zoo COMMAND: error: MESSAGE` with exit status 2 for a
usage error and 1 for a runtime one, and `--debug` (or FGVC_ZOO_DEBUG=1) adds the traceback. An exception raised
anywhere else (a bug) keeps its traceback.
"""

import argparse
import difflib
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from .errors import UnknownArgumentError, UsageError

__all__ = ['SUBCOMMANDS', 'HelpFormatter', 'ArgumentParser', 'run', 'main', 'report_errors']

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    'train': ('fgvc_zoo.train', 'train or fine-tune a head (same code as `accelerate launch -m fgvc_zoo.train`)'),
    'eval': ('fgvc_zoo.evaluate', 'top-1/top-5, per-class accuracy and confusion of a checkpoint or Hub model'),
    'predict': ('fgvc_zoo.predict', 'top-k labels with names and probabilities for images'),
    'explain': ('fgvc_zoo.explain', 'draw what a head looks at (maps and boxes) over images, as PNG'),
    'demo': ('fgvc_zoo.demo', 'serve a page (gradio) to upload images and see top-k and explanations'),
    'space': ('fgvc_zoo.demo', 'write a Hugging Face Space folder (gradio app, model, examples) for a model'),
    'export': ('fgvc_zoo.hub', 'write model.safetensors + config.json + model card for the Hub (+ model.onnx)'),
    'push': ('fgvc_zoo.hub', 'upload an exported or trained model folder to a Hub repo'),
    'list': ('fgvc_zoo.cli', 'list the registered fgvc_zoo models and tags, and which weights each loads'),
    'bench': ('fgvc_zoo.bench', 'time each head against the backbone passes it needs'),
}
DEBUG_FLAG = '--debug'
DEBUG_ENV = 'FGVC_ZOO_DEBUG'
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# What the package raises on purpose, with a message written for the user (see `_is_deliberate`).
_DELIBERATE = (ValueError, TypeError, OSError, RuntimeError, FloatingPointError, ImportError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every help line shows its default, except where there is none to show (None, False, or already said)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or 'default' in (action.help or ''):
            return action.help or ''
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors that name close matches of a mistyped option, and defaults in the help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault('formatter_class', HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:
        if message.startswith('unrecognized arguments:'):
            options = [s for action in self._actions for s in action.option_strings]
            hints = []
            for arg in message.split(':', 1)[1].split():
                close = difflib.get_close_matches(arg.split('=')[0], options, n=3) if arg.startswith('-') else []
                if close:
                    hints.append(f'{arg}: did you mean {" or ".join(close)}?')
            if hints:
                message = f'{message} ({"; ".join(hints)})'
        self.exit(2, f'{self.prog}: error: {message} (see `{self.prog} --help`)\n')


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('filter', nargs='?', default='*', help='wildcard filter, e.g. "lfd*"')


def _weights_of(name: str) -> str:
    """What `pretrained=True` loads for a registered name (the tag's own weights, or the backbone's)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None and cfg.hf_hub_id:
        return f'published weights: hf-hub:{cfg.hf_hub_id}'
    architecture, _, tag = name.partition('.')
    backbone = architecture.split('_', 1)[1] if '_' in architecture else None
    if backbone is None:
        return "any timm backbone (backbone=...): pretrained=True loads the backbone's default weights"
    backbone_cfg = timm.models.get_pretrained_cfg(f'{backbone}.{tag}' if tag else backbone)
    hub_id = getattr(backbone_cfg, 'hf_hub_id', None)
    return f'backbone weights {hub_id}, head from random init' if hub_id else 'no weights'


def list_main(args: argparse.Namespace) -> int:
    from fgvc_zoo.models import PUBLISHED_TAGS, head_models  # importing fgvc_zoo.models registers the heads

    names = head_models(args.filter, include_tags=True)
    width = max((len(n) for n in names), default=0)
    print('\n'.join(f'{name:<{width}}  {_weights_of(name)}' for name in names))
    published = ', '.join(sorted(PUBLISHED_TAGS)) or 'none yet'
    print(f'\nFine-grained (FGVC) weights published on the Hub: {published}.')
    return 0


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
    module = importlib.import_module(module_name)
    parser = ArgumentParser(prog=f'fgvc-zoo {name}', description=help_text)
    getattr(module, f'add_{name}_arguments')(parser)
    args = parser.parse_args(argv[1:])
    return int(getattr(module, f'{name}_main')(args) or 0)


def _is_deliberate(e: BaseException) -> bool:
    """True for an error with a message meant for the user: raised by fgvc_zoo's own code, or a file error."""
    if isinstance(e, OSError) and e.filename is not None:
        return True  # "[Errno 2] No such file or directory: 'x'" says all, wherever it was raised
    if not isinstance(e, _DELIBERATE) or e.__traceback__ is None:
        return False
    frames = traceback.extract_tb(e.__traceback__)
    return os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR + os.sep)


def _one_line(e: BaseException) -> str:
    return ' '.join(str(e).split()) or type(e).__name__


def report_errors(func: Callable[[list[str]], int], argv: Sequence[str], prog: str) -> int:
    """`func(argv)` with the package's errors printed as `PROG: error: MESSAGE`; returns the exit status.

    `--debug` in `argv` (removed before `func` sees it) or FGVC_ZOO_DEBUG=1 also prints the traceback.
    """
    argv = list(argv)
    end = argv.index('--') if '--' in argv else len(argv)
    debug = DEBUG_FLAG in argv[:end] or os.environ.get(DEBUG_ENV, '').strip() not in ('', '0')
    argv = [a for a in argv[:end] if a != DEBUG_FLAG] + argv[end:]
    try:
        return func(argv)
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        return 130
    except SystemExit as e:
        if not isinstance(e.code, str):  # argparse (already reported) or an explicit status
            return e.code if isinstance(e.code, int) else 0
        if debug:
            traceback.print_exc()
        print(f'{prog}: error: {_one_line(e.code)}', file=sys.stderr)
        return 2
    except Exception as e:
        if not _is_deliberate(e):
            raise  # a bug: the traceback is what the report needs
        if debug:
            traceback.print_exc()
        print(f'{prog}: error: {_one_line(e)}', file=sys.stderr)
        return 2 if isinstance(e, (UsageError, UnknownArgumentError)) else 1


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if a != DEBUG_FLAG), None)
    prog = f'fgvc-zoo {command}' if command in SUBCOMMANDS else 'fgvc-zoo'
    sys.exit(report_errors(run, argv, prog))


if __name__ == '__main__':
    main()
