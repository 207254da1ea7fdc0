"""What each head costs (`fgvc-zoo bench`) on top of the backbone passes it cannot avoid.

A head's floor is physical: LFD at inference is one backbone pass on the image plus l passes on zoomed crops,
DP-Net one pass, IAGN a pass on the image and one on its attended zoom. The bench times `model(x)` against exactly
those passes through the model's own backbone, in the same process, interleaved (head, backbone, head, ...) so
that load drifting on a shared machine hits both alike, and reports the median of the per-pair ratios. Training
compares one full train step (all `num_train_steps` optimiser steps) with the backbone's forward+backward+step on
the same inputs. Peak memory of a train step (`fgvc_zoo.runtime.PeakMemory`, the meter compare uses too) is what the
steps add above the memory before them: the kernel's peak RSS on CPU (torch's CPU allocations are invisible to
tracemalloc), reset just before the steps, and `torch.cuda.max_memory_allocated` on CUDA; it is opt-in
(`--memory`), as the CPU probe needs Linux.
"""

import contextlib
import inspect
import os
import platform
import statistics
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn as nn

from .errors import UnknownArgumentError, UsageError
from .models import head_class, list_heads
from .runtime import PeakMemory, parse_options, split_named_options

__all__ = [
    'CLOCKS',
    'INFERENCE_TARGET',
    'TRAIN_TARGET',
    'BenchConfig',
    'BenchGrid',
    'median_ratio',
    'interleaved_times',
    'bench_head',
    'grid_configs',
    'bench_in_grid',
    'run_grid',
    'grid_peak_memory',
    'train_peak_memory',
    'profile_head',
    'parse_head_args',
    'format_table',
    'format_memory_table',
    'describe_machine',
]

INFERENCE_TARGET = 1.05
# torch.compile(fullgraph=True) of the heads over timm's backbones: torch 2.4's dynamo rejects what timm's
# forward_intermediates uses (enumerate(..., start=1)); 2.5 traces it.
COMPILE_MIN_TORCH = (2, 5)
TRAIN_TARGET = 1.10


@dataclass
class BenchConfig:
    """One benchmarked setting; `head_args` go to `timm.create_model` next to the backbone and classes."""

    head: str
    backbone: str = 'resnet18'
    img_size: int = 160
    batch_size: int = 2
    num_classes: int = 10
    head_args: dict = field(default_factory=dict)
    device: str = 'cpu'
    amp: str | None = None
    channels_last: bool = False
    compile: bool = False
    grad_checkpointing: bool = False


@dataclass
class BenchGrid:
    """One `fgvc-zoo bench` run: each head at each input side and batch size, timed `reps` times after `warmup`
    calls (again with grad checkpointing when `grad_checkpointing`); `head_args` is 'HEAD:key=value,...;HEAD2:...'."""

    heads: Sequence[str]
    backbone: str = 'resnet18'
    img_sizes: Sequence[int] = (160,)
    batch_sizes: Sequence[int] = (2,)
    num_classes: int = 10
    zoom_ratio: float | None = None
    head_args: str | None = None
    reps: int = 5
    warmup: int = 1
    clock: str = 'cpu'
    train: bool = True
    grad_checkpointing: bool = False
    device: str = 'cpu'
    amp: str | None = None
    channels_last: bool = False
    compile: bool = False


def median_ratio(head_times: Sequence[float], base_times: Sequence[float]) -> float:
    """Median over repetitions of head_time / base_time of the same repetition (pairs share the machine's load)."""
    if len(head_times) != len(base_times) or not head_times:
        raise ValueError(
            f'Need as many head as backbone timings, at least one: {len(head_times)} vs {len(base_times)}.'
        )
    return statistics.median(h / b for h, b in zip(head_times, base_times, strict=False))


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}


def _timed(fn: Callable[[], None], device: torch.device, clock: Callable[[], float]) -> float:
    _sync(device)
    start = clock()
    fn()
    _sync(device)
    return clock() - start


def interleaved_times(
    head_fn: Callable[[], None],
    base_fn: Callable[[], None],
    reps: int,
    warmup: int = 1,
    device: torch.device | None = None,
    clock: str = 'wall',
) -> tuple[list[float], list[float]]:
    """Seconds of `head_fn` and `base_fn` over `reps` interleaved repetitions, after `warmup` untimed ones each.

    clock='cpu' counts this process's CPU seconds: on a CPU shared with other jobs it measures the work done, not
    the time spent waiting for a core (wall time on a loaded 2-core machine mostly measures the neighbours).
    """
    device = device if device is not None else torch.device('cpu')
    for _ in range(warmup):
        head_fn()
        base_fn()
    head_times, base_times = [], []
    for _ in range(reps):
        head_times.append(_timed(head_fn, device, CLOCKS[clock]))
        base_times.append(_timed(base_fn, device, CLOCKS[clock]))
    return head_times, base_times


def build_model(cfg: BenchConfig) -> nn.Module:
    model = timm.create_model(cfg.head, backbone=cfg.backbone, num_classes=cfg.num_classes, **cfg.head_args)
    model.to(cfg.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def _autocast(cfg: BenchConfig):
    if cfg.amp is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(cfg.device).type, dtype={'bf16': torch.bfloat16, 'fp16': torch.float16}[cfg.amp])


def _image(cfg: BenchConfig, batch_size: int, size: int) -> torch.Tensor:
    x = torch.randn(batch_size, 3, size, size, device=cfg.device)
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x


# One backbone pass a head needs: its input, whether the loss back-propagates through it, and which of the
# backbone's maps the loss reads (None: all of them; IAGN's stage step k runs the backbone up to map k and reads it).
Pass = tuple[torch.Tensor, bool, int | None]


def backbone_passes(model: nn.Module, cfg: BenchConfig, train: bool) -> list[list[Pass]]:
    """The backbone passes the head needs, grouped by optimiser step, as inputs: what the head declares
    (`model.backbone_passes`, e.g. LFD's image and its l crops at `zoom_size`)."""
    return [
        [
            (_image(cfg, p.batch_size, p.img_size), p.grad, None if p.num_stages is None else p.num_stages - 1)
            for p in step
        ]
        for step in model.backbone_passes(cfg.batch_size, cfg.img_size, train)
    ]


def _compiled(fn: Callable, cfg: BenchConfig) -> Callable:
    # fullgraph: every head is one static-shape graph, so a graph break is a regression, not something to time.
    return torch.compile(fn, fullgraph=True) if cfg.compile else fn


def inference_fns(model: nn.Module, cfg: BenchConfig) -> tuple[Callable[[], None], Callable[[], None]]:
    """`model(x)` in eval mode, and the backbone passes it needs, both without autograd. `no_grad`, not
    `inference_mode`: torch 2.4's FlopCounterMode counts no operation under inference mode (`flop_ratio`)."""
    model.eval()
    x = _image(cfg, cfg.batch_size, cfg.img_size)
    (passes,) = backbone_passes(model, cfg, train=False)
    head, backbone = _compiled(model, cfg), _compiled(model.backbone, cfg)

    def run_head() -> None:
        with torch.no_grad(), _autocast(cfg):
            head(x)

    def run_backbone() -> None:
        with torch.no_grad(), _autocast(cfg):
            for inputs, _, _ in passes:
                backbone(inputs)

    return run_head, run_backbone


def train_fns(model: nn.Module, cfg: BenchConfig) -> tuple[Callable[[], None], Callable[[], None]]:
    """One full train step of the head (every optimiser step of a batch), and the backbone's passes for it.

    Both use SGD with momentum over their trainable parameters, so the optimiser's own cost is on both sides.
    """
    model.train()
    x = _image(cfg, cfg.batch_size, cfg.img_size)
    y = torch.randint(cfg.num_classes, (cfg.batch_size,), device=cfg.device)
    steps = backbone_passes(model, cfg, train=True)
    head, backbone = _compiled(model, cfg), _compiled(model.backbone, cfg)
    head_opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    backbone_opt = torch.optim.SGD(backbone_params, lr=1e-4, momentum=0.9) if backbone_params else None

    def run_head() -> None:
        for step in range(model.num_train_steps):
            head_opt.zero_grad(set_to_none=True)
            with _autocast(cfg):
                loss = head(x, target=y, step=step).loss
            loss.backward()
            head_opt.step()

    def run_backbone() -> None:
        for passes in steps:
            if backbone_opt is not None:
                backbone_opt.zero_grad(set_to_none=True)
            loss = 0.0
            for inputs, needs_grad, stage in passes:
                with torch.set_grad_enabled(needs_grad), _autocast(cfg):
                    maps = backbone(inputs) if stage is None else backbone(inputs, num_stages=stage + 1)
                if needs_grad:
                    maps = [maps] if torch.is_tensor(maps) else maps if stage is None else maps[stage : stage + 1]
                    loss = loss + sum(m.float().mean() for m in maps)
            if torch.is_tensor(loss):
                loss.backward()
                backbone_opt.step()

    return run_head, run_backbone


def flop_ratio(head_fn: Callable[[], None], base_fn: Callable[[], None]) -> float:
    """FLOPs of one head call over FLOPs of its backbone passes (torch's FlopCounterMode: convs, matmuls, their
    backward). Unlike time, it is immune to machine load and tells compute the method needs from overhead."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    for fn in (head_fn, base_fn):
        with FlopCounterMode(display=False) as counter:
            fn()
        counts.append(counter.get_total_flops())
    return counts[0] / counts[1]


def bench_head(cfg: BenchConfig, reps: int, warmup: int = 1, train: bool = True, clock: str = 'wall') -> dict:
    """Inference and train-step timings and their median ratios for one configuration."""
    torch.manual_seed(0)
    device = torch.device(cfg.device)
    model = build_model(cfg)
    result = dict(asdict(cfg), clock=clock)
    timing = dict(reps=reps, warmup=warmup, device=device, clock=clock)
    phases = dict(infer=inference_fns, train=train_fns) if train else dict(infer=inference_fns)
    for phase, make_fns in phases.items():
        fns = make_fns(model, cfg)
        head_t, base_t = interleaved_times(*fns, **timing)
        result.update(
            {
                f'{phase}_flop_ratio': flop_ratio(*fns) if not cfg.compile else float('nan'),
                f'{phase}_head_ms': 1e3 * statistics.median(head_t),
                f'{phase}_backbone_ms': 1e3 * statistics.median(base_t),
                f'{phase}_ratio': median_ratio(head_t, base_t),
            }
        )
    return result


def train_peak_memory(cfg: BenchConfig, backbone_only: bool) -> float:
    """Peak memory (MiB) that two train steps of the head (or of its backbone passes) add to the built model.

    The first step allocates the optimiser's momentum, so two steps include it. CUDA: max allocated above the
    allocated memory before the steps. CPU: the kernel's peak RSS (VmHWM, reset just before) above the RSS then.
    """
    torch.manual_seed(0)
    model = build_model(cfg)
    head_fn, base_fn = train_fns(model, cfg)
    fn = base_fn if backbone_only else head_fn
    meter = PeakMemory(cfg.device)
    if not meter.resettable:
        raise RuntimeError(
            f'--memory on {cfg.device} reads the peak RSS from Linux /proc, which {platform.system()} does not have: '
            f'drop --memory, or measure on a CUDA device (--device cuda).'
        )
    meter.start()
    fn()
    fn()
    return meter.read(above_start=True)


def profile_head(cfg: BenchConfig, train: bool, row_limit: int = 15) -> str:
    """torch.profiler's table of the operators of one head call (self CPU time), to find where overhead goes."""
    from torch.profiler import ProfilerActivity, profile

    model = build_model(cfg)
    head_fn, _ = (train_fns if train else inference_fns)(model, cfg)
    head_fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cfg.device.startswith('cuda') else [])
    with profile(activities=activities) as prof:
        head_fn()
    sort_by = 'self_cuda_time_total' if cfg.device.startswith('cuda') else 'self_cpu_time_total'
    return prof.key_averages().table(sort_by=sort_by, row_limit=row_limit)


def parse_head_args(text: str | None) -> dict[str, dict]:
    """'HEAD:key=value,key=[0.3,0.4];HEAD2:key=value' -> {HEAD: {...}, HEAD2: {...}}: `split_named_options`, each
    head's options parsed as `--model-args` are (`fgvc_zoo.runtime.parse_options`)."""
    heads = split_named_options(text, '--head-args', list_heads())
    return {head: parse_options(options, f'--head-args {head}') for head, options in heads.items()}


def format_table(rows: Sequence[dict]) -> str:
    """Markdown table of the ratios, flagging those above target."""
    lines = [
        '| head | backbone | img | batch | infer head ms | infer backbone ms | infer ratio | infer FLOP ratio | '
        'train head ms | train backbone ms | train ratio | train FLOP ratio |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for r in rows:
        infer_flag = '' if r['infer_ratio'] <= INFERENCE_TARGET else ' (>1.05)'
        train = (
            '| n/a | n/a | n/a | n/a |'
            if 'train_ratio' not in r
            else f'| {r["train_head_ms"]:.1f} | {r["train_backbone_ms"]:.1f} | {r["train_ratio"]:.3f}'
            f'{"" if r["train_ratio"] <= TRAIN_TARGET else " (>1.10)"} | {r["train_flop_ratio"]:.3f} |'
        )
        lines.append(
            f'| {r["head"]}{" +ckpt" if r["grad_checkpointing"] else ""} | {r["backbone"]} | {r["img_size"]} | '
            f'{r["batch_size"]} | {r["infer_head_ms"]:.1f} | {r["infer_backbone_ms"]:.1f} | '
            f'{r["infer_ratio"]:.3f}{infer_flag} | {r["infer_flop_ratio"]:.3f} {train}'
        )
    return '\n'.join(lines)


def format_memory_table(rows: Sequence[dict]) -> str:
    lines = [
        '| head | backbone | img | batch | grad ckpt | head train-step MiB | backbone passes MiB | ratio |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for r in rows:
        lines.append(
            f'| {r["head"]} | {r["backbone"]} | {r["img_size"]} | {r["batch_size"]} | {r["grad_checkpointing"]} | '
            f'{r["head_step_mb"]:.0f} | {r["backbone_step_mb"]:.0f} | '
            f'{r["head_step_mb"] / max(r["backbone_step_mb"], 1e-9):.2f} |'
        )
    return '\n'.join(lines)


def describe_machine() -> str:
    cpu = platform.processor() or 'unknown CPU'
    with contextlib.suppress(OSError), open('/proc/cpuinfo') as f:
        cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), cpu)
    load = ' '.join(f'{v:.2f}' for v in os.getloadavg())
    return (
        f'{cpu}, nproc={os.cpu_count()}, torch threads={torch.get_num_threads()}, torch {torch.__version__}, '
        f'load average {load}, {time.strftime("%Y-%m-%d %H:%M %Z")}'
    )


def torch_version() -> tuple[int, int]:
    """(major, minor) of the installed torch."""
    return tuple(int(part) for part in torch.__version__.split('.')[:2])


def check_compile_supported() -> None:
    """Refuse `--compile` in one line on a torch whose compiler cannot trace timm's backbones."""
    if torch_version() < COMPILE_MIN_TORCH:
        need = '.'.join(map(str, COMPILE_MIN_TORCH))
        raise UsageError(
            f'--compile needs torch>={need} (fullgraph tracing of timm backbones); this is torch '
            f'{torch.__version__}: upgrade torch or drop --compile.'
        )


def grid_configs(grid: BenchGrid, grad_checkpointing: bool = False) -> list[BenchConfig]:
    """The settings of `grid` in the order they are timed: head, then input side, then batch size."""
    head_args = parse_head_args(grid.head_args)
    options = {} if grid.zoom_ratio is None else {'zoom_ratio': grid.zoom_ratio}  # each head reads its own
    configs = []
    for head in grid.heads:
        model_cls = head_class(head)
        for size in grid.img_sizes:
            for batch in grid.batch_sizes:
                if batch < model_cls.min_train_batch and grid.train:
                    raise ValueError(
                        f'--batch-size {batch} cannot time {head} training: it needs at least '
                        f'{model_cls.min_train_batch} images per batch in train mode. Use --batch-size >= '
                        f'{model_cls.min_train_batch} or --no-train.'
                    )
                extra = {**model_cls.bench_args(size, **options), **head_args.get(head, {})}
                configs.append(
                    BenchConfig(
                        head=head,
                        backbone=grid.backbone,
                        img_size=size,
                        batch_size=batch,
                        num_classes=grid.num_classes,
                        head_args=extra,
                        device=grid.device,
                        amp=grid.amp,
                        channels_last=grid.channels_last,
                        compile=grid.compile,
                        grad_checkpointing=grad_checkpointing,
                    )
                )
    return configs


PACKAGE_DIR = Path(__file__).resolve().parent


def bench_in_grid(cfg: BenchConfig, grid: BenchGrid) -> dict:
    """`bench_head`, with a head's own refusal of its arguments told in the grid's syntax (`head_args`).

    The refusal is ours when the error was raised in fgvc_zoo's code; anything else (torch, timm) is a bug whose
    traceback the report needs, and goes up unchanged."""
    try:
        return bench_head(cfg, reps=grid.reps, warmup=grid.warmup, train=grid.train, clock=grid.clock)
    except (ValueError, UnknownArgumentError) as e:
        if not Path(traceback.extract_tb(e.__traceback__)[-1].filename).is_relative_to(PACKAGE_DIR):
            raise
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


def run_grid(grid: BenchGrid) -> Iterator[tuple[BenchConfig, dict]]:
    """Each setting of `grid` and its timing row, as it is timed (a caller prints each row at once)."""
    for grad_checkpointing in (False, True) if grid.grad_checkpointing else (False,):
        for cfg in grid_configs(grid, grad_checkpointing):
            yield cfg, bench_in_grid(cfg, grid)


def grid_peak_memory(grid: BenchGrid) -> list[dict]:
    """Each setting of `grid`, without then with grad checkpointing, and the peak memory two train steps add to the
    built model, of the head and of its backbone passes alone (`train_peak_memory`)."""
    return [
        dict(
            asdict(cfg),
            head_step_mb=train_peak_memory(cfg, backbone_only=False),
            backbone_step_mb=train_peak_memory(cfg, backbone_only=True),
        )
        for cfg in grid_configs(grid, False) + grid_configs(grid, True)
    ]
