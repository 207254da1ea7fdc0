"""`fgvc-zoo eval`: top-1, top-5, mean per-class accuracy and the confusion of a model on a dataset split, written
as JSON (its `metrics` go into the model card) and a confusion PNG beside it."""

import argparse
import json
import os
from pathlib import Path

from ..data import MissingSplitError, create_dataset
from ..inference.evaluate import TTA_MODES, check_classes, evaluate, plot_confusion
from ..runtime import load_for_inference, parse_options, set_cpu_threads
from .common import add_model_arguments

__all__ = ['add_arguments', 'main']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument('--data-dir', required=True, help='dataset root (any layout fgvc_zoo.data knows)')
    parser.add_argument(
        '--split',
        choices=('val', 'validation', 'test', 'train', 'trainval'),
        help="split to evaluate, named as the data names it (CUB's held-out split is 'test'); "
        "default: 'val' where the data has one, else 'test'",
    )
    # The data flags of `fgvc-zoo train`, under the same names.
    parser.add_argument('--dataset-layout', default='auto', help='layout of --data-dir (auto detects it)')
    parser.add_argument('--dataset-args', help="layout options as 'key=value,...', e.g. 'level=family' for aircraft")
    parser.add_argument(
        '--batch-size', type=int, default=32, help='images per forward pass (results do not depend on it)'
    )
    parser.add_argument('--workers', type=int, default=2, help='data loader worker processes')
    parser.add_argument(
        '--threads', type=int, default=0, help='torch CPU threads; 0: the cores over the data workers (as train)'
    )
    parser.add_argument('--tta', choices=TTA_MODES, help='test-time augmentation (off by default; recorded)')
    parser.add_argument(
        '--out',
        default='eval_results.json',
        help='results JSON; the confusion PNG is written beside it (<stem>_confusion.png)',
    )


def main(args: argparse.Namespace) -> int:
    set_cpu_threads(args.threads, args.workers)
    options = parse_options(args.dataset_args, '--dataset-args')
    model, transform, model_names, data_config = load_for_inference(
        args.checkpoint, args.model, args.img_size, args.device
    )
    source = args.checkpoint or args.model
    splits = [args.split] if args.split else ['val', 'test']
    for split in splits:
        try:
            dataset = create_dataset(
                args.data_dir, split=split, layout=args.dataset_layout, transform=transform, **options
            )
            break
        except MissingSplitError:
            if split == splits[-1]:
                raise
    args.split = dataset.split
    check_classes(model_names, dataset.classes, model.num_classes, source)
    results = evaluate(
        model,
        dataset,
        batch_size=args.batch_size,
        tta=args.tta,
        num_workers=args.workers,
        progress=True,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_name(f'{out.stem}_confusion.png')
    plot_confusion(results['confusion'], results['label_names'], str(png), title=f'{source} on {args.split}')
    results = {
        'model': source,
        'architecture': getattr(model, 'pretrained_cfg', {}).get('architecture'),
        'dataset': {
            'name': os.path.basename(os.path.normpath(args.data_dir)),
            'root': args.data_dir,
            'split': args.split,
            'layout': dataset.layout,
        },
        'data_config': data_config,
        'batch_size': args.batch_size,
        **results,
        'confusion_png': str(png),
    }
    out.write_text(json.dumps(results, indent=2))
    metrics = results['metrics']
    print(
        f'{source} on {args.data_dir} ({args.split}, {results["num_images"]} images, tta={args.tta}): '
        f'top1 {metrics["top1"]:.2f}  top5 {metrics["top5"]:.2f}  '
        f'mean per-class {metrics["mean_class_accuracy"]:.2f}'
    )
    for pair in results['most_confused'][:5]:
        print(f'  {pair["true"]} -> {pair["predicted"]}: {pair["count"]}')
    print(f'Wrote {out} and {png}')
    return 0
