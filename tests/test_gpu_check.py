"""benchmarks/gpu_check.py --smoke: the GPU check's every phase runs end to end on the CPU before any GPU time is
spent (tiny backbone, two epochs). No timing is asserted; the compiled bench is time-boxed to show the cut."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fgvc_zoo.bench import COMPILE_MIN_TORCH, torch_version

REPO = Path(__file__).resolve().parents[1]
HEADS = ('lfd', 'dpnet', 'iagn')


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    work = tmp_path_factory.mktemp('gpu_check')
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    cmd = [sys.executable, str(REPO / 'benchmarks' / 'gpu_check.py'), '--smoke', '--workers', '0']
    cmd += ['--json', str(work / 'gpu_check.json'), '--work', str(work), '--compile-limit', '20']
    cmd += ['--time-limit', '2100']  # below the timeout: the script cuts a slow run and keeps its JSON
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=2400)
    return proc, json.loads((work / 'gpu_check.json').read_text())


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_smoke_trains_every_head_with_amp_ema_channels_last_and_the_export_reloads(smoke):
    proc, report = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert list(report['phases']) == ['train', 'throughput', 'bench', 'bench_compile']
    assert all(p['status'] == 'done' for p in report['phases'].values()), report['phases']
    for head in HEADS:
        row = report['train'][head]
        assert row['rc'] == 0 and row['ok'], row['tail']
        assert all(flag in row['cmd'] for flag in ('--amp bf16', '--model-ema', '--channels-last', '--synthetic'))
        assert row['steps'] == 2 * (64 // 16)
        assert row['loss_fell'] and row['last_epoch_loss'] < row['first_epoch_loss']
        assert row['export'] == dict(weights_match=True, logits_match=True, logits_finite=True)


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_smoke_measures_images_per_s_and_bench_ratios_of_every_head_and_the_backbone(smoke):
    _, report = smoke
    for name in (*HEADS, 'backbone'):
        row = report['throughput'][name]
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ('eval_images_per_s', 'train_images_per_s')), row
    for head in HEADS:
        row = report['bench'][head]
        assert row['rc'] == 0, row['tail']
        (timing,) = row['timing']
        assert timing['head'] == head and timing['amp'] == 'bf16' and timing['channels_last']
        assert all(timing[k] > 0 for k in ('infer_ratio', 'train_ratio', 'infer_flop_ratio', 'train_flop_ratio'))
        assert row['memory'] and row['train_head_images_per_s'] > 0
        # The compiled bench is cut at 20 s on a CPU, or done: either way recorded, never lost; below the torch
        # that compiles timm's backbones the phase records why it did not run.
        if torch_version() < COMPILE_MIN_TORCH:
            assert 'needs torch' in report['bench_compile']['skipped']
            continue
        compiled = report['bench_compile'][head]
        assert compiled['timed_out'] or compiled['rc'] == 0, compiled['tail']
