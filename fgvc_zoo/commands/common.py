"""What the command modules share, and only that: the argument parser (one-line errors, defaults in the help), the
model source flags of eval, predict and explain, and the error reporting of the console scripts.

Imports nothing heavy, so that `fgvc-zoo --help` stays fast.
"""

import argparse
import difflib
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from ..errors import UnknownArgumentError, UsageError

__all__ = [
    'DEBUG_FLAG',
    'DEBUG_ENV',
    'HelpFormatter',
    'ArgumentParser',
    'positive_int',
    'add_model_arguments',
    'report_errors',
]

DEBUG_FLAG = '--debug'
DEBUG_ENV = 'FGVC_ZOO_DEBUG'
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (an input side, a count), refused before any work starts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a whole number') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """The model source shared by eval, predict and explain: a trained/exported folder, a Hub id or a model name.

    Returns the (required, exclusive) source group, for a command with another source (predict's `--onnx`)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        '--checkpoint',
        help='trained or exported folder (model.safetensors + config.json), '
        'hf-hub:ORG/NAME, or a registered pretrained tag',
    )
    source.add_argument('--model', help='a timm model name or tag, created with pretrained=True')
    parser.add_argument(
        '--img-size',
        type=positive_int,
        help="input side; default: the model's data config (an export's is the size it was trained at)",
    )
    parser.add_argument(
        '--device', default='auto', help='torch device: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps, ...'
    )
    return source


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
