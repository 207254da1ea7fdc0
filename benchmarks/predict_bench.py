"""How much of the model's speed `fgvc-zoo predict` delivers: images/s of the whole command (JPEG files on disk,
decoded by a loader worker, rows written to a CSV) over images/s of the bare forward on pre-decoded tensors.

`python benchmarks/predict_bench.py [--images 2000] [--configs dpnet:resnet50:torch ...] [--json
benchmarks/predict_bench.json]`

The benchmark writes a folder of real-sized JPEGs (500x375, a smooth random colour field plus pixel noise, ~50 KB each)
in a temporary directory outside the repository, exports each model with random weights (an export folder, or an
ONNX file), and per round, interleaved, measures:

- forward: the model (eager PyTorch in eval mode, or onnxruntime) on batches of tensors decoded and transformed
  beforehand, in this process, with the same batch size and thread count as the command;
- pipeline: `fgvc-zoo predict LIST --output preds.csv` as a subprocess (`--threads 1 --workers 1` by default) on
  `n` images and on one batch; the difference of the two wall times is the time of `n - batch` images without the
  start-up (imports, model loading, worker start), which a million-image run pays once.

The ratio is the median over rounds of pipeline images/s / forward images/s, both on the wall clock: the question
is whether the loader keeps the model fed. On a shared machine the wall clock also measures the neighbours, so the
CPU seconds per image of both (the command's including its worker, `RUSAGE_CHILDREN`) are reported beside it, and
`cpu_ratio`: the forward's CPU per image over the slower stage of the command's (its main process: its CPU per
image less the decoding, timed here on the same files; or the decoding in the worker), the ratio on a machine with
a free core for the worker.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

import fgvc_zoo
from fgvc_zoo.data import create_transforms, load_image, resolve_fgvc_data_config
from fgvc_zoo.hub import save_pretrained
from fgvc_zoo.hub.onnx import export_onnx

REPO = Path(__file__).resolve().parents[1]


def write_jpegs(folder: Path, count: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> list[str]:
    """`count` photo-like JPEGs: a smooth random colour field (bicubic from 8x6) plus per-pixel noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (size[1], size[0], 3), dtype=np.int16)
        path = folder / f'{k:05d}.jpg'
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_command(
    list_file: Path, source_args: list[str], args: argparse.Namespace, workdir: Path
) -> tuple[float, float]:
    """(wall seconds, CPU seconds incl. the loader worker) of one `fgvc-zoo predict` run over `list_file`."""
    output = workdir / 'preds.csv'
    output.unlink(missing_ok=True)
    command = [sys.executable, '-m', 'fgvc_zoo.cli', 'predict', str(list_file), *source_args, '--output', str(output)]
    command += ['--batch-size', str(args.batch_size), '--threads', str(args.threads), '--workers', str(args.workers)]
    command += ['--img-size', str(args.img_size), '--no-progress']
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': str(args.threads)}
    cpu, start = _children_cpu(), time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if result.returncode != 0:
        raise RuntimeError(f'{" ".join(command)} failed:\n{result.stderr[-3000:]}')
    return wall, cpu


def forward_fn(runtime: str, model: torch.nn.Module, onnx_path: Path | None, threads: int):
    if runtime == 'torch':

        def forward(x: torch.Tensor) -> None:
            with torch.inference_mode():
                model(x)

        return forward
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=['CPUExecutionProvider'])
    return lambda x: session.run(['logits'], {'input': x.numpy()})


def time_forward(forward, batches: list[torch.Tensor]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of `forward` over every batch."""
    cpu, start = time.process_time(), time.perf_counter()
    for x in batches:
        forward(x)
    return time.perf_counter() - start, time.process_time() - cpu


def bench_config(spec: str, paths: list[str], args: argparse.Namespace, workdir: Path) -> dict:
    head, backbone, runtime = spec.split(':')
    count = args.images_per_run.get(backbone, args.default_images_per_run)
    torch.manual_seed(0)
    model = timm.create_model(head, backbone=backbone, num_classes=args.num_classes).eval()
    folder = workdir / f'{head}_{backbone}'
    save_pretrained(model, folder)
    onnx_path = None
    if runtime == 'onnx':
        onnx_path = export_onnx(model, workdir / f'{head}_{backbone}.onnx', img_size=args.img_size)
        source_args = ['--onnx', str(onnx_path)]
    else:
        source_args = ['--checkpoint', str(folder)]
    transform = create_transforms(resolve_fgvc_data_config(model, args.img_size), is_training=False)
    images = paths[:count]
    lists = {}
    for n in (args.batch_size, count):
        lists[n] = workdir / f'list_{n}.txt'
        lists[n].write_text('\n'.join(images[:n]) + '\n')
    decode_cpu = time.process_time()
    decoded = torch.stack([transform(load_image(p)) for p in images[: count - args.batch_size]])
    decode_cpu = (time.process_time() - decode_cpu) / len(decoded)  # the loader worker's work per image
    batches = list(decoded.split(args.batch_size))
    forward = forward_fn(runtime, model, onnx_path, args.threads)
    forward(batches[0])  # warm-up
    rounds = []
    for r in range(args.rounds):
        fwd_wall, fwd_cpu = time_forward(forward, batches)
        small_wall, small_cpu = run_command(lists[args.batch_size], source_args, args, workdir)
        big_wall, big_cpu = run_command(lists[count], source_args, args, workdir)
        n = count - args.batch_size
        rounds.append(
            dict(
                forward_images_per_s=n / fwd_wall,
                pipeline_images_per_s=n / (big_wall - small_wall),
                end_to_end_images_per_s=count / big_wall,
                forward_cpu_s_per_image=fwd_cpu / n,
                pipeline_cpu_s_per_image=(big_cpu - small_cpu) / n,
                startup_s=small_wall - args.batch_size * (big_wall - small_wall) / n,
                load_average=os.getloadavg()[0],
            )
        )
        rounds[-1]['ratio'] = rounds[-1]['pipeline_images_per_s'] / rounds[-1]['forward_images_per_s']
        # With a free core for the worker the stages overlap: the slower one sets the rate. Immune to the load.
        main_cpu = rounds[-1]['pipeline_cpu_s_per_image'] - decode_cpu
        rounds[-1]['cpu_ratio'] = rounds[-1]['forward_cpu_s_per_image'] / max(main_cpu, decode_cpu)
        print(f'{spec} round {r + 1}: ' + ', '.join(f'{k} {v:.3f}' for k, v in rounds[-1].items()), flush=True)
    median = {key: statistics.median(row[key] for row in rounds) for key in rounds[0]}
    return dict(
        config=spec,
        images_per_run=count,
        decode_cpu_s_per_image=decode_cpu,
        rounds=rounds,
        **{f'median_{k}': v for k, v in median.items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--images', type=int, default=2000, help='JPEGs written to the folder')
    parser.add_argument(
        '--configs',
        nargs='+',
        default=['dpnet:resnet50:torch', 'dpnet:tf_efficientnet_lite0:torch', 'dpnet:resnet50:onnx'],
        help='HEAD:BACKBONE:RUNTIME (torch or onnx)',
    )
    parser.add_argument(
        '--images-per-run',
        type=json.loads,
        default={'resnet50': 64},
        help='JSON {backbone: images per pipeline run}; the others take --default-images-per-run',
    )
    parser.add_argument('--default-images-per-run', type=int, default=192)
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--workers', type=int, default=1)
    parser.add_argument('--num-classes', type=int, default=200)
    parser.add_argument('--json', type=Path, default=REPO / 'benchmarks' / 'predict_bench.json')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix='predict_bench_') as tmp:
        workdir = Path(tmp)
        paths = write_jpegs(workdir / 'jpegs', args.images)
        sizes = [os.path.getsize(p) for p in paths]
        print(f'{len(paths)} JPEGs 500x375, {statistics.mean(sizes) / 1024:.0f} KB on average', flush=True)
        results = []
        for spec in args.configs:  # the JSON is rewritten after each configuration, so a cut run keeps its results
            results.append(bench_config(spec, paths, args, workdir))
            write_report(args, started, paths, sizes, results)
    for row in results:
        print(
            f'{row["config"]}: forward {row["median_forward_images_per_s"]:.2f} img/s, pipeline '
            f'{row["median_pipeline_images_per_s"]:.2f} img/s, ratio {row["median_ratio"]:.3f}'
        )


def write_report(args: argparse.Namespace, started: float, paths: list[str], sizes: list[int], results: list) -> None:
    report = dict(
        command=' '.join(sys.argv),
        machine=f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs',
        torch=torch.__version__,
        timm=timm.__version__,
        fgvc_zoo=fgvc_zoo.__version__,
        date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started)),
        wall_s=time.time() - started,
        jpegs=len(paths),
        jpeg_kb_mean=statistics.mean(sizes) / 1024,
        settings={k: v for k, v in vars(args).items() if k != 'json'},
        results=results,
    )
    args.json.write_text(json.dumps(report, indent=2, default=str) + '\n')


if __name__ == '__main__':
    main()
