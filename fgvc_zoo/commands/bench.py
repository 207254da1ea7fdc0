"""`fgvc-zoo bench`: time each head against the backbone passes it cannot avoid (the library: `fgvc_zoo.bench`)."""

import argparse
import inspect
import json
import os
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

from ..bench import (
    CLOCKS,
    INFERENCE_TARGET,
    TRAIN_TARGET,
    BenchConfig,
    bench_head,
    check_compile_supported,
    describe_machine,
    format_memory_table,
    format_table,
    parse_head_args,
    profile_head,
    train_peak_memory,
)
from ..errors import UnknownArgumentError
from ..models import head_class, list_heads
from .common import positive_int

__all__ = ['add_arguments', 'main']

PACKAGE_DIR = Path(__file__).resolve().parents[1]


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


def _configs(args: argparse.Namespace, grad_checkpointing: bool) -> list[BenchConfig]:
    head_args = parse_head_args(args.head_args)
    options = {} if args.zoom_ratio is None else {'zoom_ratio': args.zoom_ratio}  # each head reads its own
    configs = []
    for head in args.heads:
        model_cls = head_class(head)
        for size in args.img_size:
            for batch in args.batch_size:
                if batch < model_cls.min_train_batch and args.train:
                    raise ValueError(
                        f'--batch-size {batch} cannot time {head} training: it needs at least '
                        f'{model_cls.min_train_batch} images per batch in train mode. Use --batch-size >= '
                        f'{model_cls.min_train_batch} or --no-train.'
                    )
                extra = {**model_cls.bench_args(size, **options), **head_args.get(head, {})}
                configs.append(
                    BenchConfig(
                        head=head,
                        backbone=args.backbone,
                        img_size=size,
                        batch_size=batch,
                        num_classes=args.num_classes,
                        head_args=extra,
                        device=args.device,
                        amp=args.amp,
                        channels_last=args.channels_last,
                        compile=args.compile,
                        grad_checkpointing=grad_checkpointing,
                    )
                )
    return configs


def _bench(cfg: BenchConfig, args: argparse.Namespace, clock: str) -> dict:
    """`bench_head`, with a head's own refusal of its arguments told in this command's syntax (--head-args)."""
    try:
        return bench_head(cfg, reps=args.reps, warmup=args.warmup, train=args.train, clock=clock)
    except (ValueError, UnknownArgumentError) as e:
        if not Path(traceback.extract_tb(e.__traceback__)[-1].filename).is_relative_to(PACKAGE_DIR):
            raise  # not a message of ours: a bug, whose traceback the report needs
        raise type(e)(
            f"{e} (fgvc-zoo bench sets a head's arguments with --head-args '{cfg.head}:key=value,...'; the default, "
            f"to change: --head-args '{cfg.head}:{_example_arg(cfg.head, str(e))}')"
        ) from e


def _example_arg(head: str, message: str) -> str:
    """A real `key=value` of the head's constructor for the hint: an argument the message names, else the first."""
    parameters = inspect.signature(head_class(head).__init__).parameters.values()
    options = [
        p for p in parameters if p.default is not inspect.Parameter.empty and p.name not in ('backbone', 'num_classes')
    ]
    named = [p for p in options if p.name in message]
    chosen = (named or options)[0]
    value = list(chosen.default) if isinstance(chosen.default, tuple) else chosen.default
    return f'{chosen.name}={value}'


def main(args: argparse.Namespace) -> int:
    if args.compile:
        check_compile_supported()
    torch.set_num_threads(args.threads)
    clock = args.clock or ('cpu' if args.device == 'cpu' else 'wall')
    print(f'# fgvc-zoo bench on {describe_machine()}, clock={clock}')
    print(f'# {" ".join(sys.argv)}')
    rows = []
    print(
        f'\nRatios ({clock} clock; median of interleaved per-pair ratios; '
        f'targets: inference <= {INFERENCE_TARGET}, train step <= {TRAIN_TARGET})'
    )
    print('\n'.join(format_table([]).splitlines()[:2]), flush=True)  # the header once, each row as it is timed
    for grad_checkpointing in (False, True) if args.grad_checkpointing else (False,):
        for cfg in _configs(args, grad_checkpointing):
            rows.append(_bench(cfg, args, clock))
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
            if args.profile:
                print(profile_head(cfg, train=False))
                if args.train:
                    print(profile_head(cfg, train=True))
    memory_rows = []
    if args.memory and args.train:
        for cfg in _configs(args, False) + _configs(args, True):
            memory_rows.append(
                dict(
                    asdict(cfg),
                    head_step_mb=train_peak_memory(cfg, backbone_only=False),
                    backbone_step_mb=train_peak_memory(cfg, backbone_only=True),
                )
            )
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
