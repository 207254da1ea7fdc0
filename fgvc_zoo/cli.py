"""`fgvc-zoo {train,eval,predict,explain,export,push,list,bench}`.

Each subcommand NAME lives in a module that exposes `add_NAME_arguments(parser)` and `NAME_main(args) -> int`.
Only the module of the subcommand that runs is imported, so `fgvc-zoo --help` and `fgvc-zoo list` stay fast.
"""

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    'train': ('fgvc_zoo.train', 'train or fine-tune a head (same code as `accelerate launch -m fgvc_zoo.train`)'),
    'eval': ('fgvc_zoo.evaluate', 'top-1/top-5, per-class accuracy and confusion of a checkpoint or Hub model'),
    'predict': ('fgvc_zoo.predict', 'top-k labels with names and probabilities for images'),
    'explain': ('fgvc_zoo.explain', 'draw what a head looks at (maps and boxes) over images, as PNG'),
    'export': ('fgvc_zoo.hub', 'write model.safetensors + config.json + model card for the Hub (+ model.onnx)'),
    'push': ('fgvc_zoo.hub', 'upload an exported or trained model folder to a Hub repo'),
    'list': ('fgvc_zoo.cli', 'list the registered fgvc_zoo models'),
    'bench': ('fgvc_zoo.bench', 'time each head against the backbone passes it needs'),
}


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('filter', nargs='?', default='*', help='wildcard filter, e.g. "lfd*"')


def list_main(args: argparse.Namespace) -> int:
    import timm

    import fgvc_zoo  # noqa: F401  (registers the heads)

    print('\n'.join(timm.list_models(args.filter, module=['lfd', 'dpnet', 'iagn'])))
    return 0


def _usage() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='fgvc-zoo', description='Fine-grained visual classification on timm.')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        _usage().parse_args(argv or ['--help'])  # prints help, or an error naming the valid commands
        return 2
    name, (module_name, help_text) = argv[0], SUBCOMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f'fgvc-zoo {name}', description=help_text)
    getattr(module, f'add_{name}_arguments')(parser)
    args = parser.parse_args(argv[1:])
    return int(getattr(module, f'{name}_main')(args) or 0)


def main() -> None:
    sys.exit(run())


if __name__ == '__main__':
    main()
