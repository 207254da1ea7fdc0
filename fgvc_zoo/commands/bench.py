"""`fgvc-zoo bench`: time each head against the backbone passes it cannot avoid (the library: `fgvc_zoo.bench`)."""

import argparse
import json
import os
import sys

import torch

from ..bench import (
    CLOCKS,
    INFERENCE_TARGET,
    TRAIN_TARGET,
    BenchGrid,
    check_compile_supported,
    describe_machine,
    format_memory_table,
    format_table,
    grid_peak_memory,
    profile_head,
    run_grid,
)
from ..models import list_heads
from .common import positive_int

__all__ = ['add_arguments', 'main']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    heads = list_heads()
    parser.add_argument('--heads', nargs='+', default=heads, choices=heads, help='heads to time')
    parser.add_argument(
        '--backbone',
        default='resnet18',
        help='timm backbone, random init (default: resnet18, the largest real ResNet whose default '
        'run fits 10 minutes on 2 shared CPU cores)',
    )
    parser.add_argument(
        '--img-size', type=positive_int, nargs='+', default=[160], help='input sides to sweep (default: 160)'
    )
    parser.add_argument(
        '--batch-size', type=positive_int, nargs='+', default=[2], help='batch sizes to sweep (default: 2)'
    )
    parser.add_argument('--num-classes', type=positive_int, default=10, help='classes (default: 10)')
    parser.add_argument(
        '--zoom-ratio',
        type=float,
        default=None,
        help="a zoom's side as a fraction of the input side, for heads that zoom (default: the head's own, LFD's "
        "paper's 224 / 448 = 0.5)",
    )
    parser.add_argument(
        '--head-args',
        default=None,
        help="extra head kwargs, 'HEAD:key=value,...;HEAD2:key=value' (YAML values), e.g. 'lfd:num_regions=6'",
    )
    parser.add_argument('--reps', type=positive_int, default=5, help='interleaved timed repetitions (default: 5)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed warm-up calls of each side (default: 1)')
    parser.add_argument(
        '--threads',
        type=positive_int,
        default=1,
        help='torch.set_num_threads (default: 1, so that CPU time is not inflated by spin-waiting)',
    )
    parser.add_argument(
        '--clock',
        choices=tuple(CLOCKS),
        default=None,
        help="'cpu' (process CPU seconds, default on CPU) or 'wall' (default on CUDA)",
    )
    parser.add_argument('--no-train', dest='train', action='store_false', help='time inference only')
    parser.add_argument(
        '--memory',
        action=argparse.BooleanOptionalAction,
        default=False,
        help='also the peak memory of a train step, with and without grad checkpointing (default: off; on CPU it '
        "reads Linux's /proc peak RSS, on CUDA torch's allocator)",
    )
    parser.add_argument('--grad-checkpointing', action='store_true', help='also time train steps with checkpointing')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]' (default: cpu)")
    parser.add_argument('--amp', choices=('bf16', 'fp16'), default=None, help='autocast dtype (default: fp32)')
    parser.add_argument('--channels-last', action='store_true', help='channels-last model and inputs')
    parser.add_argument('--compile', action='store_true', help='torch.compile the head and the backbone alike')
    parser.add_argument('--profile', action='store_true', help='print torch.profiler tables of each head call')
    parser.add_argument('--json', default=None, help='also write every result to this JSON file')


def main(args: argparse.Namespace) -> int:
    if args.compile:
        check_compile_supported()
    torch.set_num_threads(args.threads)
    clock = args.clock or ('cpu' if args.device == 'cpu' else 'wall')
    grid = BenchGrid(
        heads=args.heads,
        backbone=args.backbone,
        img_sizes=args.img_size,
        batch_sizes=args.batch_size,
        num_classes=args.num_classes,
        zoom_ratio=args.zoom_ratio,
        head_args=args.head_args,
        reps=args.reps,
        warmup=args.warmup,
        clock=clock,
        train=args.train,
        grad_checkpointing=args.grad_checkpointing,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
    )
    print(f'# fgvc-zoo bench on {describe_machine()}, clock={clock}')
    print(f'# {" ".join(sys.argv)}')
    rows = []
    print(
        f'\nRatios ({clock} clock; median of interleaved per-pair ratios; '
        f'targets: inference <= {INFERENCE_TARGET}, train step <= {TRAIN_TARGET})'
    )
    print('\n'.join(format_table([]).splitlines()[:2]), flush=True)  # the header once, each row as it is timed
    for cfg, row in run_grid(grid):
        rows.append(row)
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
        if args.profile:
            print(profile_head(cfg, train=False))
            if args.train:
                print(profile_head(cfg, train=True))
    memory_rows = []
    if args.memory and args.train:
        memory_rows = grid_peak_memory(grid)
        kind = 'torch.cuda.max_memory_allocated' if args.device.startswith('cuda') else 'VmHWM, reset before the steps'
        print(f'\nPeak memory two train steps add to the built model ({kind})')
        print(format_memory_table(memory_rows))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(
                dict(machine=describe_machine(), argv=_portable_argv(), timing=rows, memory=memory_rows), f, indent=1
            )
    return 0


def _portable_argv() -> list[str]:
    """The command as a record keeps it: `fgvc-zoo` and the arguments, a path by its name (no machine path)."""
    return ['fgvc-zoo', *(os.path.basename(a) if os.path.isabs(a) else a for a in sys.argv[1:])]
