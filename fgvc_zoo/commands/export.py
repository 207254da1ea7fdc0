"""`fgvc-zoo export DIR`: write an export folder (model.safetensors, config.json, model card, optionally
model.onnx) from a trainer's output or from --model and --checkpoint."""

import argparse
from pathlib import Path

import timm
from timm.models import load_checkpoint

from ..errors import UsageError
from ..hub import (
    NOT_RECORDED,
    ONNX_NAME,
    export_onnx,
    load_model,
    model_label_names,
    read_label_names,
    read_results,
    save_pretrained,
    write_card,
)
from ..runtime import parse_options
from .common import positive_int

__all__ = ['add_arguments', 'main']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        'dir',
        help='a trainer output folder (model.safetensors, config.json, results.json), '
        'or the folder to export --model/--checkpoint into',
    )
    parser.add_argument('--model', help='model name, e.g. lfd_resnet50 (with --checkpoint)')
    parser.add_argument('--checkpoint', help='weights file of --model (safetensors, or a local torch checkpoint)')
    parser.add_argument('--num-classes', type=int, help='classes of the checkpoint')
    parser.add_argument('--label-names', help='class names: a .json list or a text file with one name a line')
    parser.add_argument(
        '--model-kwargs',
        nargs='*',
        help='more model arguments: key=value words (or one YAML mapping), e.g. backbone=convnext_tiny num_regions=4',
    )
    parser.add_argument('--repo-id', help='ORG/NAME the card tells users to load (default: the local folder)')
    parser.add_argument(
        '--onnx', action='store_true', help='also write model.onnx (needs `pip install fgvc-zoo[onnx]`)'
    )
    parser.add_argument(
        '--img-size', type=positive_int, help="input side of model.onnx (default: the export's data config)"
    )


def _write_onnx(folder: Path, img_size: int | None) -> None:
    """`model.onnx` beside the weights, from the export as `fgvc-zoo predict` loads it (same preprocessing, names)."""
    model = load_model(str(folder))
    path = export_onnx(model, folder / ONNX_NAME, img_size=img_size, label_names=model_label_names(model))
    print(f'Wrote {path}')


def main(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    if args.img_size is not None and not args.onnx:
        raise UsageError(f'--img-size {args.img_size} sets the input size of model.onnx: add --onnx.')
    if args.model is None:
        if args.checkpoint is not None:
            raise UsageError('--checkpoint needs --model NAME (the architecture the weights belong to).')
        card = write_card(folder, repo_id=args.repo_id)
        print(f'Wrote {card}')
        if args.onnx:
            _write_onnx(folder, args.img_size)
        return 0
    if args.checkpoint is None:
        raise UsageError(f'--model {args.model} needs --checkpoint FILE (the weights to export).')
    model_kwargs = parse_options(args.model_kwargs, '--model-kwargs')
    if args.num_classes is not None:
        model_kwargs['num_classes'] = args.num_classes
    model = timm.create_model(args.model, **model_kwargs)
    load_checkpoint(model, args.checkpoint)
    # The weights are the checkpoint's, not the random init this model was built with: where they started from is
    # known only from the trainer's results.json beside it, if any.
    model.pretrained_weights = NOT_RECORDED
    folder.mkdir(parents=True, exist_ok=True)
    save_pretrained(model.eval(), folder, label_names=read_label_names(args.label_names), results=read_results(folder))
    if args.repo_id:
        write_card(folder, repo_id=args.repo_id)
    print(f'Exported {args.model} to {folder}')
    if args.onnx:
        _write_onnx(folder, args.img_size)
    return 0
