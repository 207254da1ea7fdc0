"""Shared by the demo tests: tiny exported models, the files a person might upload, and a served app on 127.0.0.1.

The models are heads over timm's `test_resnet` with 4 classes, exported with a 64 px input size in their config
(so the page and `fgvc-zoo predict` preprocess from the config alone), beside a small synthetic dataset in
`synthetic_data/` as `fgvc-zoo train --synthetic` leaves it (the demo's default examples come from there).
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from fgvc_zoo import cli
from fgvc_zoo.data import make_synthetic_fgvc, synthetic_class_names
from fgvc_zoo.hub import save_pretrained

NUM_CLASSES = 4
INPUT_SIZE = 64
STARTUP_TIMEOUT = 180  # seconds: importing torch + gradio on a loaded 2-core machine


def export_model(folder: Path, head: str = 'lfd', seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = timm.create_model(head, backbone='test_resnet', num_classes=NUM_CLASSES).eval()
    save_pretrained(
        model,
        folder,
        label_names=synthetic_class_names(NUM_CLASSES),
        data_config=dict(input_size=(3, INPUT_SIZE, INPUT_SIZE)),
    )
    make_synthetic_fgvc(
        str(folder / 'synthetic_data'), num_classes=NUM_CLASSES, train_per_class=1, val_per_class=2, image_size=96
    )
    return folder


def val_images(folder: Path) -> list[str]:
    return sorted(str(p) for p in (folder / 'synthetic_data' / 'val').glob('*/*.png'))


def predict_cli(image: str, checkpoint: Path, capsys) -> dict:
    """Top-1 of `fgvc-zoo predict --json` (in-process, its stdout captured): {'index', 'label', 'probability'}."""
    capsys.readouterr()
    assert cli.run(['predict', image, '--checkpoint', str(checkpoint), '--json', '--topk', '1']) == 0
    return json.loads(capsys.readouterr().out)[0]['predictions'][0]


def write_uploads(folder: Path, photo: str) -> dict[str, Path]:
    """The files of the issue's bad-input list, made from one RGB `photo`: name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.open(photo).convert('RGB')
    files = {
        'rgb': ('photo.png', lambda p: rgb.save(p)),
        'cmyk': ('cmyk.jpg', lambda p: rgb.convert('CMYK').save(p)),
        '16bit': (
            'sixteen.png',
            lambda p: Image.fromarray(np.asarray(rgb.convert('L')).astype(np.uint16) * 257).save(p),
        ),
        'rgba': ('rgba.png', lambda p: _with_alpha(rgb).save(p)),
        'grayscale': ('gray.png', lambda p: rgb.convert('L').save(p)),
        '1x1': ('one.png', lambda p: Image.new('RGB', (1, 1), (200, 40, 40)).save(p)),
        'large': ('large.jpg', lambda p: rgb.resize((3264, 2448)).save(p, quality=90)),  # an 8 MP phone photo
        'non_image': ('notes.png', lambda p: p.write_text('these are notes, not a picture\n')),
        'truncated': ('cut.jpg', lambda p: p.write_bytes(_jpeg_bytes(rgb)[:-400])),
        'empty': ('empty.jpg', lambda p: p.write_bytes(b'')),
    }
    paths = {}
    for kind, (name, write) in files.items():
        paths[kind] = folder / name
        write(paths[kind])
    assert Image.open(paths['16bit']).mode == 'I;16' and Image.open(paths['cmyk']).mode == 'CMYK'
    return paths


BAD_UPLOADS = ('non_image', 'truncated', 'empty')


def _with_alpha(rgb: Image.Image) -> Image.Image:
    rgba = rgb.convert('RGBA')
    alpha = Image.new('L', rgb.size, 255)
    alpha.paste(0, (0, 0, rgb.width // 3, rgb.height))  # a transparent left third
    rgba.putalpha(alpha)
    return rgba


def _jpeg_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.resize((400, 300)).save(buffer, format='JPEG', quality=90)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def server_env(**extra: str) -> dict[str, str]:
    """The environment of a served app: this checkout's fgvc_zoo, no telemetry, nothing but loopback."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get('PYTHONPATH')) if p)
    return dict(
        os.environ,
        PYTHONPATH=path,
        GRADIO_ANALYTICS_ENABLED='False',
        HF_HUB_OFFLINE='1',
        OMP_NUM_THREADS='1',
        NO_PROXY='127.0.0.1,localhost',
        **extra,
    )


@contextlib.contextmanager
def serving(
    command: list[str], port: int, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[str]:
    """Run `command` (an app serving on 127.0.0.1:`port`) until the block ends; yield its URL once it answers."""
    url = f'http://127.0.0.1:{port}/'
    with open(log, 'w') as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env or server_env(),
            cwd=cwd,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                raise AssertionError(f'{command} exited with {process.returncode}:\n{log.read_text()[-3000:]}')
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f'{command} did not answer on {url} in {STARTUP_TIMEOUT} s:\n{log.read_text()}')
            time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read().decode(errors='replace')


def python_command(*args: str) -> list[str]:
    return [sys.executable, *args]
