"""`fgvc-zoo predict SOURCE...`: the top-k classes of each image with their names and probabilities.

A source is an image, a folder (recursive), a glob or a `.txt` list of paths. With `--output FILE` (.csv, .jsonl or
.parquet) one row per image is streamed to the file, batch by batch, and `--resume` continues a killed run;
without it the predictions are printed (text, or `--json`), for a handful of images. An image that cannot be read
gets its error (a row, an `error` entry in the JSON, a `fgvc-zoo predict: error:` line on stderr) and the others
are still predicted; the exit status is then 1. Several GPUs: `accelerate launch -m fgvc_zoo.cli predict ...`
(each process a shard, merged into FILE in source order).
"""

import argparse
import json
import sys
from typing import Any

from ..errors import UsageError
from .common import add_model_arguments

__all__ = ['add_arguments', 'main']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('sources', nargs='+', metavar='SOURCE', help='image files, folders, globs or .txt path lists')
    add_model_arguments(parser).add_argument(
        '--onnx', metavar='FILE', help='run this ONNX export with onnxruntime (its recorded preprocessing and names)'
    )
    parser.add_argument('--topk', type=int, default=5, help='classes per image')
    parser.add_argument(
        '--output', metavar='FILE', help='stream one row per image to FILE: .csv, .jsonl or .parquet (at the end)'
    )
    parser.add_argument('--resume', action='store_true', help='skip the images FILE already has a row for')
    parser.add_argument('--json', action='store_true', help='without --output: print [{"image", "predictions"}, ...]')
    parser.add_argument('--batch-size', type=int, default=16, help='images per forward pass')
    parser.add_argument('--workers', type=int, default=2, help='data loader processes decoding the images')
    parser.add_argument(
        '--threads', type=int, default=0, help='torch CPU threads; 0: the cores over the data workers (as train)'
    )
    parser.add_argument('--amp', nargs='?', const='bfloat16', metavar='DTYPE', help='autocast (bfloat16, float16)')
    parser.add_argument('--channels-last', action='store_true', help='channels-last memory format')
    parser.add_argument('--compile', action='store_true', help='torch.compile the model')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar on stderr')


def _report(error: str) -> None:
    print(f'fgvc-zoo predict: error: {error}', file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    import torch

    from ..inference.predict import (
        OnnxRunner,
        TorchRunner,
        expand_sources,
        format_predictions,
        iter_predictions,
        predict_to_file,
        process_shard,
        table_path,
    )
    from ..runtime import load_for_inference, resolve_device, set_cpu_threads

    if args.topk < 1:
        raise UsageError(f'--topk {args.topk}: ask for at least 1 class.')
    if args.batch_size < 1 or args.workers < 0:
        raise UsageError('--batch-size must be at least 1 and --workers at least 0.')
    if args.resume and not args.output:
        raise UsageError('--resume continues an --output FILE: pass the FILE of the run to continue.')
    set_cpu_threads(args.threads, args.workers)
    rank, world_size, device, barrier = process_shard(args.device, args.output)
    if args.onnx:
        if args.amp or args.channels_last or args.compile:
            raise UsageError('--amp, --channels-last and --compile are PyTorch options; drop them with --onnx.')
        runner = OnnxRunner(args.onnx, resolve_device(str(device)), torch.get_num_threads(), args.img_size)
        transform, names, pin_memory = runner.transform, runner.label_names, False
    else:
        model, transform, names, _ = load_for_inference(args.checkpoint, args.model, args.img_size, str(device))
        torch_device = next(model.parameters()).device
        runner = TorchRunner(model, torch_device, args.amp, args.channels_last, args.compile)
        pin_memory = torch_device.type == 'cuda'
    paths = expand_sources(args.sources)
    if args.output:
        failed = predict_to_file(
            paths,
            args.output,
            runner,
            transform,
            names,
            topk=args.topk,
            batch_size=args.batch_size,
            workers=args.workers,
            resume=args.resume,
            rank=rank,
            world_size=world_size,
            barrier=barrier,
            pin_memory=pin_memory,
            progress=not args.no_progress,
            on_error=_report,
        )
        return 1 if failed else 0

    rows: list[dict[str, Any]] = []
    for batch in iter_predictions(paths, runner, transform, names, args.topk, args.batch_size, args.workers):
        for row in batch:
            if row['error'] is not None:
                _report(row['error'])
        rows += batch
    tops = {
        row['path']: [
            {'index': k, 'label': label, 'probability': p}
            for k, label, p in zip(row['indices'], row['labels'], row['probabilities'], strict=True)
        ]
        for row in rows
        if row['error'] is None
    }
    if args.json:
        entries = [
            {'image': table_path(row['path']), 'error': row['error']}
            if row['error'] is not None
            else {'image': table_path(row['path']), 'predictions': tops[row['path']]}
            for row in rows
        ]
        print(json.dumps(entries, indent=2))
    elif tops:
        print(format_predictions(list(tops), list(tops.values())))
    return 1 if len(tops) < len(rows) else 0
