"""benchmarks/compare.py: every method, the plain fine-tune included, sees the heads' data config."""

import json
import sys
from pathlib import Path

import pytest
import timm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
compare = pytest.importorskip('compare')


def _resolved(method: str, tmp_path: Path) -> dict:
    args = type('Args', (), dict(dataset='animal', epochs=1, batch_size=2, train_crop='resize_crop'))()
    command = compare.train_command(method, 0.01, 0, tmp_path, tmp_path / 'out', args)
    kwargs = json.loads(command[command.index('--model-kwargs') + 1])
    overlay = {k: v for k, v in kwargs.pop('pretrained_cfg_overlay').items() if k != 'file'}
    kwargs.pop('backbone_args', None)
    model_name = command[command.index('--model') + 1]
    extra = {} if method == 'plain' else {'backbone': compare.ARCH}
    model = timm.create_model(model_name, pretrained_cfg_overlay=overlay, **extra, **kwargs)
    return timm.data.resolve_data_config({}, model=model)


def test_the_plain_baseline_gets_the_heads_data_config(monkeypatch, tmp_path):
    monkeypatch.setattr(compare, 'backbone_weights_file', lambda: tmp_path / 'weights.safetensors')
    monkeypatch.setattr(compare, 'backbone_args', lambda weights: {})
    plain, lfd = _resolved('plain', tmp_path), _resolved('lfd', tmp_path)
    # Without the overlay the plain tf_efficientnet_lite0 resizes bicubic, aspect kept (crop_mode 'center').
    assert timm.data.resolve_data_config({}, model=timm.create_model(compare.ARCH))['interpolation'] == 'bicubic'
    assert (plain['interpolation'], plain['crop_mode'], plain['crop_pct']) == ('bilinear', 'squash', 448 / 600)
    assert {k: plain[k] for k in ('interpolation', 'crop_mode', 'crop_pct', 'mean', 'std')} == {
        k: lfd[k] for k in ('interpolation', 'crop_mode', 'crop_pct', 'mean', 'std')
    }
    assert _resolved('iagn', tmp_path)['crop_pct'] == 448 / 600  # one data config for every method
