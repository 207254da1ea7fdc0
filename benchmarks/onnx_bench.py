"""Eval latency of every head: onnxruntime (CPU) and Inductor-compiled PyTorch, each against PyTorch eager.

`python benchmarks/onnx_bench.py [--backbone tf_efficientnet_lite0] [--img-size 224] [--batch-sizes 1 8]
[--compile-batch-sizes 1] [--json benchmarks/onnx_bench.json]`

Random weights, default head arguments. Each pair (onnxruntime, eager) or (compiled, eager) runs interleaved in
one process after a warm-up pair, with one thread each (torch.set_num_threads, onnxruntime's intra/inter-op
threads), timed on the process CPU clock by default: on a shared machine wall time mostly measures the
neighbours. The reported ratio is the median of the per-pair ratios (`fgvc_zoo.bench.median_ratio`); below 1 the
runtime is faster than eager. The exported graph's logits are checked against eager before timing.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch

import fgvc_zoo
from fgvc_zoo.bench import interleaved_times, median_ratio

HEADS = ('lfd', 'dpnet', 'iagn')


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def _timings(fn, model: torch.nn.Module, x: torch.Tensor, reps: int, clock: str) -> dict:
    """`fn` against the eager `model(x)` it replaces, interleaved."""

    def run_eager():
        with torch.inference_mode():
            model(x)

    fn_times, base_times = interleaved_times(fn, run_eager, reps=reps, warmup=1, clock=clock)
    return dict(
        ms=1e3 * statistics.median(fn_times),
        eager_ms=1e3 * statistics.median(base_times),
        ratio=median_ratio(fn_times, base_times),
    )


def bench_head(head: str, args: argparse.Namespace, workdir: Path) -> list[dict]:
    torch.manual_seed(0)
    model = timm.create_model(head, backbone=args.backbone, num_classes=args.num_classes).eval()
    rows = []
    start = time.perf_counter()
    path = fgvc_zoo.export_onnx(model, workdir / f'{head}.onnx', img_size=args.img_size, batch_size=1)
    export_s = time.perf_counter() - start
    session = _session(path, args.threads)
    for batch_size in args.batch_sizes:
        x = torch.randn(batch_size, 3, args.img_size, args.img_size)
        feed = {'input': x.numpy()}
        with torch.inference_mode():
            expected = model(x).numpy()
        max_diff = float(np.abs(session.run(None, feed)[0] - expected).max())

        def run_onnx(feed=feed):
            session.run(None, feed)

        row = dict(head=head, runtime='onnxruntime', batch_size=batch_size, export_s=export_s, max_abs_diff=max_diff)
        row.update(_timings(run_onnx, model, x, args.reps, args.clock))
        rows.append(row)
        print(json.dumps(row), flush=True)
    for batch_size in args.compile_batch_sizes:
        x = torch.randn(batch_size, 3, args.img_size, args.img_size)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True)
        start = time.perf_counter()
        with torch.inference_mode():
            max_diff = float((compiled(x) - model(x)).abs().max())
        compile_s = time.perf_counter() - start

        def run_compiled(x=x, compiled=compiled):
            with torch.inference_mode():
                compiled(x)

        row = dict(head=head, runtime='inductor', batch_size=batch_size, compile_s=compile_s, max_abs_diff=max_diff)
        row.update(_timings(run_compiled, model, x, args.reps, args.clock))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _cpu_name() -> str:
    cpuinfo = Path('/proc/cpuinfo')
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    return platform.processor() or platform.machine()


def format_table(rows: list[dict]) -> str:
    lines = [
        '| head | runtime | batch | runtime ms | eager ms | ratio (runtime / eager) | max abs logit diff | export or '
        'compile s |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for r in rows:
        setup = r.get('export_s', r.get('compile_s'))
        lines.append(
            f'| {r["head"]} | {r["runtime"]} | {r["batch_size"]} | {r["ms"]:.1f} | {r["eager_ms"]:.1f} | '
            f'{r["ratio"]:.3f} | {r["max_abs_diff"]:.1e} | {setup:.0f} |'
        )
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--heads', nargs='+', default=list(HEADS), choices=HEADS)
    parser.add_argument('--backbone', default='tf_efficientnet_lite0', help='any timm model name (random weights)')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--num-classes', type=int, default=200)
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8], help='onnxruntime vs eager')
    parser.add_argument(
        '--compile-batch-sizes', type=int, nargs='*', default=[1], help='Inductor vs eager (none: skip compiling)'
    )
    parser.add_argument('--reps', type=int, default=5, help='timed pairs after one warm-up pair')
    parser.add_argument('--threads', type=int, default=1, help='threads of torch and of onnxruntime alike')
    parser.add_argument('--clock', choices=('cpu', 'wall'), default='cpu')
    parser.add_argument('--json', help='write the rows and the machine to this JSON file')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        rows = [row for head in args.heads for row in bench_head(head, args, Path(workdir))]
    import onnxruntime

    machine = dict(
        processor=_cpu_name(),
        cpus=os.cpu_count(),
        load_average=os.getloadavg(),
        python=sys.version.split()[0],
        torch=torch.__version__,
        onnxruntime=onnxruntime.__version__,
        wall_s=time.perf_counter() - started,
    )
    print(format_table(rows))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != 'json'}
        Path(args.json).write_text(json.dumps(dict(settings=settings, machine=machine, rows=rows), indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
