"""Tiny datasets and training commands shared by the reliability tests (each run takes seconds on a CPU)."""

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parents[1] / 'fgvc_zoo'
FAULT_RUNNER = HERE / 'fault_runner.py'
CLASSES = ('blue', 'red')
COLOURS = ((20, 40, 230), (230, 30, 20), (30, 220, 40))
# LFD over timm's test_resnet at 64 px: a 2x2 final map, 4 candidate regions, 2 kept, zoomed to 32 px.
LFD_ARGS = 'zoom_size=32,num_regions=2,num_hybrid_regions=1'


def make_folder(
    root: Path, train_per_class: int = 8, val_per_class: int = 2, size: int = 64, classes: Sequence[str] = CLASSES
) -> Path:
    """root/{train,val}/<class>/NNN.png: noise with a square of the class's colour (an imagefolder layout)."""
    rng = np.random.default_rng(0)
    for split, count in (('train', train_per_class), ('val', val_per_class)):
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = rng.integers(0, 80, (size, size, 3)).astype(np.uint8)
                x, y = rng.integers(0, size // 2, 2)
                image[y : y + size // 4, x : x + size // 4] = COLOURS[label]
                Image.fromarray(image).save(root / split / name / f'{i:03d}.png')
    return root


def train_args(data: Path, output: Path, epochs: int = 2, *extra: str, model: str = 'lfd') -> list[str]:
    """`fgvc-zoo` arguments of a tiny CPU training run (batch 4, no worker processes, seed 7)."""
    head_args = ['--model-args', LFD_ARGS] if model == 'lfd' else []
    return [
        'train',
        '--model',
        model,
        '--backbone',
        'test_resnet',
        *head_args,
        '--data-dir',
        str(data),
        '--output',
        str(output),
        '--img-size',
        '64',
        '--epochs',
        str(epochs),
        '--batch-size',
        '4',
        '--workers',
        '0',
        '--lr',
        '0.01',
        '--seed',
        '7',
        '--cpu',
        # One intra-op thread in every run, in-process or not (the trainer would pick one per core): same kernels,
        # so a resumed run can match an unbroken one bit for bit.
        '--threads',
        '1',
        *extra,
    ]


def run_cli(args: Sequence[str], fault: dict[str, str] | None = None, timeout: float = 180, background: bool = False):
    """`fgvc-zoo ARGS` in a fresh interpreter; with `fault`, through `fault_runner.py` with that fault armed."""
    env = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1', **(fault or {}))
    command = [sys.executable, str(FAULT_RUNNER) if fault else '-m', *([] if fault else ['fgvc_zoo.cli']), *args]
    if background:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def results(output: Path) -> dict:
    return json.loads((output / 'results.json').read_text())


def weights_digest(output: Path) -> str:
    """sha256 of the exported weights, as the trainer recorded it."""
    (digest,) = results(output)['weights_sha256_per_rank']
    return digest
