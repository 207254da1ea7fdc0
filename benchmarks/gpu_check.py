"""One GPU check of every head at paper scale: AMP training through the real trainer, bench ratios, images/s.

Phases, in this order, each time-boxed, the JSON rewritten after every one (a run cut short keeps what it measured):

1. train: each head over a random-init backbone (ResNet-50, 448 px, batch 16) for about 50 optimiser steps on the
   synthetic dataset, through the real trainer in a subprocess (`python -m fgvc_zoo.cli train`) with `--amp bf16
   --model-ema --channels-last`; checks that the training loss falls (last epoch below the first) and that the
   export reloads with the exact trained weights (the trainer's sha256 of them) and the same logits through
   `fgvc_zoo.hub.load_model` and timm's `local-dir:` loader.
2. throughput: images/s of an eval forward and of a train step (forward, loss, backward, SGD) of each head and of
   the plain backbone (a timm classifier over the same backbone), in this process, with the same AMP and layout.
3. bench: `python -m fgvc_zoo.cli bench --device DEVICE --amp bf16 --channels-last --memory` per head (inference
   and train-step ratios against the backbone passes, FLOP ratios, peak memory), eager.
4. bench_compile: the same with `--compile`, last, since Inductor's compile time is the least predictable.

`--smoke` runs all of it on the CPU with timm's `test_resnet`, 64 px and a few steps (tests/test_gpu_check.py).

On the lent GPU machine (torch 2.11, Python 3.12, nothing installable, no `fgvc-zoo` command), timm 1.0.31 travels
as a wheel. Here, in the repository root, once: `echo /.whl/ >> .git/info/exclude; python3 -m pip download
--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 -d .whl
timm==1.0.31`; then one device `run` with `carry=['.whl']`, `timeout_s=420` (half the device time, so that a
rerun fits) and the command:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site
    .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 || exit; nvidia-smi -L; python3 -c
    'import torch, timm, accelerate; print(torch.__version__, timm.__version__, accelerate.__version__)';
    python3 benchmarks/gpu_check.py --time-limit 390 --json $OUT/gpu_check.json --work /tmp/gpu_check
    2>&1 | tee $OUT/gpu_check.log

(one line). Its JSON then goes into benchmarks/RESULTS.md with the command, the GPU, the versions and the date.
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEADS = ('lfd', 'dpnet', 'iagn')
SMOKE_IAGN = 'mid_channels=8,feature_channels=16,hidden_features=8,zoom_size=48'


def _settings(args: argparse.Namespace) -> dict:
    """Model, data and run sizes: paper scale on the GPU, tiny with --smoke."""
    if args.smoke:  # small heads too: bf16 on a CPU without bf16 units is ~6x slower than fp32
        head_args = dict(lfd='zoom_size=32,num_regions=4,num_hybrid_regions=2', iagn=SMOKE_IAGN)
        return dict(
            backbone='test_resnet',
            img_size=64,
            batch_size=16,
            epochs=2,
            device='cpu',
            reps=1,
            warmup=1,
            head_args=head_args,
            # DP-Net's frozen random test backbone leaves only its part classifiers to learn: the trainer's default lr
            # moves their loss by less than the batch noise in 8 steps.
            head_lr=dict(dpnet=0.05),
        )
    # 64 synthetic training images at batch 16: 4 steps an epoch, 13 epochs = 52 steps. Heads at their defaults.
    return dict(
        backbone='resnet50',
        img_size=448,
        batch_size=16,
        epochs=13,
        device='cuda',
        reps=10,
        warmup=3,
        head_args={},
        head_lr={},
    )


class Report:
    """The JSON on disk, rewritten whole after every phase and head, so that a cut run keeps what it measured."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix('.tmp')
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def _run(cmd: list[str], timeout: float, log: Path) -> dict:
    """Run `cmd` with its output in `log`; killed after `timeout` seconds. Returns rc, seconds, timed_out, tail."""
    start = time.perf_counter()
    with open(log, 'w') as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=max(timeout, 1)).returncode
            timed_out = False
        except subprocess.TimeoutExpired:
            rc, timed_out = None, True
    tail = log.read_text(errors='replace')[-1500:]
    return dict(cmd=' '.join(cmd), rc=rc, timed_out=timed_out, seconds=round(time.perf_counter() - start, 1), tail=tail)


def _check_export(folder: Path, results: dict, device: str) -> dict:
    """The export's weights are the trainer's (sha256) and both loaders give the same logits on val images."""
    import timm
    import torch

    from fgvc_zoo.hub import load_model
    from fgvc_zoo.training.checkpoints import state_dict_sha256

    loaded = load_model(str(folder)).to(device).eval()
    via_timm = timm.create_model(f'local-dir:{folder}', pretrained=True).to(device).eval()
    data_config = timm.data.resolve_data_config(model=loaded)
    transform = timm.data.create_transform(**data_config)
    val = sorted((folder / 'synthetic_data' / 'val').rglob('*.png'))[:8]
    from PIL import Image

    x = torch.stack([transform(Image.open(p).convert('RGB')) for p in val]).to(device)
    with torch.inference_mode():
        a, b = loaded(x), via_timm(x)
    return dict(
        weights_match=state_dict_sha256(loaded.state_dict()) == results['weights_sha256_per_rank'][0],
        logits_match=bool(torch.equal(a, b)),
        logits_finite=bool(torch.isfinite(a).all()),
    )


def phase_train(args: argparse.Namespace, s: dict, report: Report, work: Path, deadline: float) -> None:
    rows = report.data['train'] = {}
    for head in HEADS:
        out = work / f'train_{head}'
        cmd = [sys.executable, '-m', 'fgvc_zoo.cli', 'train', '--model', head, '--backbone', s['backbone']]
        cmd += ['--synthetic', '--img-size', str(s['img_size']), '--batch-size', str(s['batch_size'])]
        cmd += ['--epochs', str(s['epochs']), '--eval-every', str(s['epochs']), '--workers', str(args.workers)]
        cmd += ['--amp', 'bf16', '--model-ema', '--model-ema-decay', '0.9', '--channels-last', '--output', str(out)]
        if head in s['head_args']:
            cmd += ['--model-args', s['head_args'][head]]
        if head in s['head_lr']:
            cmd += ['--lr', str(s['head_lr'][head])]
        if args.smoke:
            cmd += ['--cpu']
        row = rows[head] = _run(cmd, min(args.train_limit, deadline - time.monotonic()), work / f'train_{head}.log')
        metrics = out / 'metrics.jsonl'
        if row['rc'] == 0 and metrics.is_file():
            epochs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            results = json.loads((out / 'results.json').read_text())
            row.update(
                steps=len(epochs)
                * (results['dataset']['train_images'] // s['batch_size']),  # the trainer drops the last partial batch
                first_epoch_loss=epochs[0]['train_loss'],
                last_epoch_loss=epochs[-1]['train_loss'],
                loss_fell=epochs[-1]['train_loss'] < epochs[0]['train_loss'],
                train_images_per_s=epochs[-1].get('train_images_per_s'),
                ema_top1=results['metrics'].get('top1'),
                export=_check_export(out, results, s['device']),
            )
            row['ok'] = row['loss_fell'] and all(row['export'].values())
        else:
            row['ok'] = False
        report.write()


def _plain_fns(s: dict, autocast):
    """Eval forward and train step of a plain timm classifier over the backbone: the reference images/s."""
    import timm
    import torch

    model = timm.create_model(s['backbone'], num_classes=4).to(s['device'], memory_format=torch.channels_last)
    x = torch.randn(s['batch_size'], 3, s['img_size'], s['img_size'], device=s['device'])
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(4, (s['batch_size'],), device=s['device'])
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def run_eval() -> None:
        model.eval()
        with torch.inference_mode(), autocast():
            model(x)

    def run_train() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return run_eval, run_train


def _images_per_s(fn, s: dict, deadline: float) -> float:
    """Batch size over the median seconds of `reps` timed calls after `warmup` ones; one call at least."""
    import torch

    def sync() -> None:
        if s['device'].startswith('cuda'):
            torch.cuda.synchronize()

    for _ in range(s['warmup']):
        fn()
    times = []
    while len(times) < s['reps'] and (not times or time.monotonic() < deadline):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return s['batch_size'] / statistics.median(times)


def _parse_args(text: str | None) -> dict:
    """'key=value,...' as the trainer's --model-args reads it (values parsed as YAML)."""
    from fgvc_zoo.runtime import parse_model_kwargs

    return parse_model_kwargs(text, None) if text else {}


def phase_throughput(args: argparse.Namespace, s: dict, report: Report, deadline: float) -> None:
    import torch

    from fgvc_zoo.bench import BenchConfig, _autocast, build_model, inference_fns, train_fns

    rows = report.data['throughput'] = {}
    for name in (*HEADS, 'backbone'):
        if time.monotonic() > deadline:
            rows[name] = dict(skipped='time limit')
            continue
        torch.manual_seed(0)
        cfg = BenchConfig(
            head=name if name != 'backbone' else HEADS[0],
            backbone=s['backbone'],
            img_size=s['img_size'],
            batch_size=s['batch_size'],
            device=s['device'],
            amp='bf16',
            channels_last=True,
            head_args=_parse_args(s['head_args'].get(name)),
        )
        if name == 'backbone':
            run_eval, run_train = _plain_fns(s, lambda cfg=cfg: _autocast(cfg))
        else:
            model = build_model(cfg)
            run_eval, run_train = inference_fns(model, cfg)[0], train_fns(model, cfg)[0]
        rows[name] = dict(
            eval_images_per_s=_images_per_s(run_eval, s, deadline),
            train_images_per_s=_images_per_s(run_train, s, deadline),
        )
        report.write()
    if s['device'].startswith('cuda'):
        report.data['throughput_max_memory_allocated_mib'] = torch.cuda.max_memory_allocated() / 2**20


def phase_bench(args: argparse.Namespace, s: dict, report: Report, work: Path, deadline: float, compile: bool) -> None:
    from fgvc_zoo.bench import COMPILE_MIN_TORCH, torch_version

    key = 'bench_compile' if compile else 'bench'
    rows = report.data[key] = {}
    if compile and torch_version() < COMPILE_MIN_TORCH:
        rows['skipped'] = f'--compile needs torch>={COMPILE_MIN_TORCH}'
        return
    for head in HEADS:
        left = deadline - time.monotonic()
        if left < 1:
            rows[head] = dict(skipped='time limit')
            continue
        out = work / f'{key}_{head}.json'
        cmd = [sys.executable, '-m', 'fgvc_zoo.cli', 'bench', '--heads', head, '--backbone', s['backbone']]
        cmd += ['--img-size', str(s['img_size']), '--batch-size', str(s['batch_size']), '--device', s['device']]
        cmd += ['--amp', 'bf16', '--channels-last', '--memory', '--reps', str(s['reps']), '--warmup', str(s['warmup'])]
        cmd += ['--json', str(out)] + (['--compile'] if compile else [])
        if head in s['head_args']:
            cmd += ['--head-args', f'{head}:{s["head_args"][head]}']
        limit = args.compile_limit if compile else args.bench_limit
        row = rows[head] = _run(cmd, min(limit, left), work / f'{key}_{head}.log')
        if row['rc'] == 0:
            result = json.loads(out.read_text())
            row.update(timing=result['timing'], memory=result['memory'])
            (timing,) = result['timing']
            for phase in ('infer', 'train'):  # images/s of the head as bench timed it
                row[f'{phase}_head_images_per_s'] = s['batch_size'] / timing[f'{phase}_head_ms'] * 1e3
        report.write()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--smoke', action='store_true', help='tiny backbone, few steps, on the CPU')
    parser.add_argument('--json', type=Path, default=Path('gpu_check.json'), help='report, rewritten after each phase')
    parser.add_argument('--work', type=Path, default=Path('gpu_check_work'), help='trainer outputs and logs')
    # Time boxes in seconds; each default is the GPU run's, the second the --smoke run's (a loaded 2-core CPU).
    limit = dict(time=(390, 2400), train=(75, 1200), bench=(40, 300), compile=(120, 60), throughput=(45, 300))
    parser.add_argument('--time-limit', type=float, help=f'all phases together {limit["time"]}')
    parser.add_argument('--train-limit', type=float, help=f'one head trains and exports {limit["train"]}')
    parser.add_argument('--bench-limit', type=float, help=f"one head's eager bench {limit['bench']}")
    parser.add_argument('--compile-limit', type=float, help=f"one head's compiled bench {limit['compile']}")
    parser.add_argument('--throughput-limit', type=float, help=f'the images/s phase {limit["throughput"]}')
    parser.add_argument('--workers', type=int, default=4, help='data loader workers of the trainer')
    parser.add_argument('--phases', nargs='+', default=['train', 'throughput', 'bench', 'bench_compile'])
    args = parser.parse_args(argv)
    for name, (gpu, smoke) in limit.items():
        if getattr(args, f'{name}_limit') is None:
            setattr(args, f'{name}_limit', smoke if args.smoke else gpu)
    start = time.monotonic()
    end = start + args.time_limit
    s = _settings(args)
    args.work.mkdir(parents=True, exist_ok=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)

    import torch

    if s['device'] == 'cuda' and not torch.cuda.is_available():
        print('gpu_check: no CUDA device; run on a GPU, or pass --smoke for the CPU check', file=sys.stderr)
        return 2
    import accelerate
    import timm

    report = Report(
        args.json,
        dict(
            argv=sys.argv,
            settings=s,
            date=time.strftime('%Y-%m-%d %H:%M:%S %Z'),
            device=torch.cuda.get_device_name() if s['device'] == 'cuda' else platform.processor() or 'cpu',
            versions=dict(
                python=platform.python_version(),
                torch=torch.__version__,
                timm=timm.__version__,
                accelerate=accelerate.__version__,
            ),
            phases={},
        ),
    )
    phase_limits = dict(train=math.inf, throughput=args.throughput_limit, bench=math.inf, bench_compile=math.inf)
    for phase in args.phases:
        phase_start = time.monotonic()
        deadline = min(end, phase_start + phase_limits[phase])
        status = 'done'
        try:
            if phase == 'train':
                phase_train(args, s, report, args.work, deadline)
            elif phase == 'throughput':
                phase_throughput(args, s, report, deadline)
            else:
                phase_bench(args, s, report, args.work, deadline, compile=phase == 'bench_compile')
        except Exception as e:  # recorded, and the next phase still runs: a cut or broken phase keeps the rest
            status = f'failed: {type(e).__name__}: {e}'
        report.data['phases'][phase] = dict(status=status, seconds=round(time.monotonic() - phase_start, 1))
        report.write()
        print(f'gpu_check: {phase} {status} in {time.monotonic() - phase_start:.0f} s', flush=True)
    ok = all(p['status'] == 'done' for p in report.data['phases'].values())
    ok = ok and all(row.get('ok') for row in report.data.get('train', {}).values())
    print(f'gpu_check: {"all phases done" if ok else "FAILED (see " + str(args.json) + ")"}', flush=True)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
