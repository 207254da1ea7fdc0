"""Backbone ImageNet weights without the Hub: a local file, a folder, a Hugging Face cache, and a fast clear failure.

The Hub cache here is built by the test (huggingface_hub's layout: models--ORG--NAME/{refs/main,snapshots/SHA/}),
holding random weights for timm's test_resnet, so that "the backbone got these weights" is checked bit for bit.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

from fgvc_zoo.cli import run
from fgvc_zoo.hub import load_backbone_weights, load_model

BACKBONE = 'test_resnet'
REPO = 'timm/test_resnet.r160_in1k'  # the Hub repo of test_resnet's default tag
REVISION = 'a' * 40


def write_hub_weights(path: Path, name: str = BACKBONE, seed: int = 1) -> dict[str, torch.Tensor]:
    """A timm classifier's whole state dict, as the Hub's model.safetensors holds it (classifier included)."""
    torch.manual_seed(seed)
    state_dict = {k: v.contiguous() for k, v in timm.create_model(name).state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state_dict, str(path))
    return state_dict


def make_hub_cache(cache: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    repo_dir = cache / f'models--{REPO.replace("/", "--")}'
    (repo_dir / 'refs').mkdir(parents=True)
    (repo_dir / 'refs' / 'main').write_text(REVISION)
    file = repo_dir / 'snapshots' / REVISION / 'model.safetensors'
    return file, write_hub_weights(file)


def assert_backbone_holds(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    loaded = model.backbone.model.state_dict()
    assert loaded, 'the backbone has no weights'
    assert all(torch.equal(loaded[k], weights[k]) for k in loaded)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / 'hf_cache'
    file, weights = make_hub_cache(cache)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(cache))
    return cache, file, weights


def test_pretrained_takes_the_backbone_weights_from_the_local_hub_cache_offline(hub_cache):
    _, _, weights = hub_cache
    model = timm.create_model('lfd', backbone=BACKBONE, pretrained=True, num_classes=3)
    assert_backbone_holds(model, weights)


@pytest.mark.parametrize('source', ['file', 'snapshot_folder', 'cache_root', 'hf_home'])
def test_backbone_weights_loads_a_file_a_folder_or_a_cache(tmp_path, source):
    cache = tmp_path / 'home' / 'hub'  # HF_HOME/hub is the Hub cache
    file, weights = make_hub_cache(cache)
    path = {'file': file, 'snapshot_folder': file.parent, 'cache_root': cache, 'hf_home': cache.parent}[source]
    for head in ('lfd', 'dpnet', 'iagn'):
        model = timm.create_model(head, backbone=BACKBONE, backbone_weights=str(path), num_classes=3)
        assert_backbone_holds(model, weights)
        # Where the weights came from is not part of the architecture: an export must not record the path.
        assert 'backbone_weights' not in model.model_args
        assert 'weights' not in (model.model_args.get('backbone_args') or {})


def test_backbone_weights_with_pretrained_needs_no_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'empty_cache'))
    weights = write_hub_weights(tmp_path / 'w.safetensors')
    model = timm.create_model('lfd', backbone=BACKBONE, pretrained=True, backbone_weights=tmp_path / 'w.safetensors')
    assert_backbone_holds(model, weights)


@pytest.mark.parametrize('backbone', ['test_vit', 'test_convnext', 'test_efficientnet'])
def test_strict_loading_accepts_the_hub_file_of_other_families(tmp_path, backbone):
    weights = write_hub_weights(tmp_path / 'w.safetensors', backbone)
    model = timm.create_model('dpnet', backbone=backbone, backbone_weights=tmp_path / 'w.safetensors', num_classes=3)
    assert_backbone_holds(model, weights)


def test_weights_of_another_model_are_refused_naming_the_keys(tmp_path):
    write_hub_weights(tmp_path / 'effnet.safetensors', 'test_efficientnet')
    with pytest.raises(ValueError, match=r"do not fit backbone 'test_resnet': keys \d+ missing .*timm/test_resnet"):
        timm.create_model('lfd', backbone=BACKBONE, backbone_weights=tmp_path / 'effnet.safetensors')


def test_a_missing_key_and_a_wrong_shape_are_refused(tmp_path):
    weights = write_hub_weights(tmp_path / 'w.safetensors')
    model = timm.create_model(BACKBONE, num_classes=0)
    name = next(iter(model.state_dict()))
    save_file({k: v for k, v in weights.items() if k != name}, str(tmp_path / 'missing.safetensors'))
    with pytest.raises(ValueError, match=f'1 missing \\({name}\\)'):
        load_backbone_weights(model, tmp_path / 'missing.safetensors', BACKBONE)
    save_file(dict(weights, **{name: torch.zeros(1)}), str(tmp_path / 'shape.safetensors'))
    with pytest.raises(ValueError, match=f'1 of another shape \\({name} \\(1,\\)'):
        load_backbone_weights(model, tmp_path / 'shape.safetensors', BACKBONE)


def test_a_pickle_or_an_empty_folder_is_refused(tmp_path):
    torch.save({}, tmp_path / 'w.pth')
    with pytest.raises(ValueError, match='not a .safetensors file'):
        timm.create_model('lfd', backbone=BACKBONE, backbone_weights=tmp_path / 'w.pth')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match=f"holds no model.safetensors, nor a Hugging Face cache .*'{REPO}'"):
        timm.create_model('lfd', backbone=BACKBONE, backbone_weights=tmp_path / 'empty')
    with pytest.raises(FileNotFoundError, match='no such file or folder'):
        timm.create_model('lfd', backbone=BACKBONE, backbone_weights=tmp_path / 'nowhere.safetensors')


def test_offline_with_no_cache_fails_at_once_naming_repo_file_and_both_ways_out(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'empty_cache'))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(OSError) as error:
        timm.create_model('lfd', backbone=BACKBONE, pretrained=True)
    message = str(error.value)
    for part in (REPO, 'model.safetensors', 'HF_HUB_OFFLINE', '--backbone-weights', 'backbone_weights=', 'hf download'):
        assert part in message


def test_an_unreachable_hub_fails_naming_the_repo_and_the_local_fixes(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'empty_cache'))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(huggingface_hub.constants, 'ENDPOINT', 'http://127.0.0.1:9')  # nothing listens there
    # How fast it gives up (no minute of retries) is measured by benchmarks/startup.py, not asserted here.
    reason = f"'{REPO}'): it is not in the local Hub cache and the Hub could not be reached ("
    with pytest.raises(OSError, match=re.escape(reason)):
        timm.create_model('lfd', backbone=BACKBONE, pretrained=True)


def test_train_flag_gives_the_backbone_its_weights(tmp_path):
    from fgvc_zoo.commands.common import ArgumentParser
    from fgvc_zoo.training.config import add_train_arguments, resolve_config
    from fgvc_zoo.training.loop import build_model

    weights = write_hub_weights(tmp_path / 'w.safetensors')
    parser = ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(
        ['--model', 'lfd', '--backbone', BACKBONE, '--synthetic', '--backbone-weights', str(tmp_path / 'w.safetensors')]
    )
    assert_backbone_holds(build_model(resolve_config(args), 3), weights)


def test_cli_offline_with_an_empty_cache_exits_1_with_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(tmp_path / 'empty_cache'), OMP_NUM_THREADS='1')
    output = tmp_path / 'run'
    command = [sys.executable, '-m', 'fgvc_zoo.cli', 'train', '--model', 'lfd_resnet50', '--pretrained']
    command += ['--synthetic', '--img-size', '64', '--output', str(output)]
    finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert finished.returncode == 1, finished.stderr
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in finished.stderr, finished.stderr
    assert lines[0].startswith('fgvc-zoo train: error: ')
    assert "'timm/resnet50.a1_in1k'" in lines[0] and '--backbone-weights' in lines[0]
    assert not output.exists(), 'the failed start left its output folder behind'


# A run trained with --backbone-weights (the offline route): its export carries no local path, every loader
# accepts it, and its provenance (the file's name, size and sha256) is recorded once, in results.json.
@pytest.fixture(scope='module')
def run_folder(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp('local_weights')
    weights = tmp / 'imagenet' / 'my_backbone.safetensors'
    write_hub_weights(weights)
    output = tmp / 'run'
    flags = ['--model', 'lfd', '--backbone', BACKBONE, '--backbone-weights', str(weights), '--synthetic']
    flags += ['--img-size', '96', '--epochs', '1', '--batch-size', '16', '--workers', '0', '--output', str(output)]
    assert run(['train', *flags]) == 0
    return output, weights


def test_the_export_carries_no_local_path(run_folder):
    output, weights = run_folder
    for name in ('config.json', 'README.md', 'results.json'):
        text = (output / name).read_text()
        assert str(weights.parent) not in text, f'{name} carries the local path of the weights'
    config = json.loads((output / 'config.json').read_text())
    assert 'backbone_weights' not in config['model_args']


def test_the_provenance_is_recorded_once_in_results_and_stated_by_the_card(run_folder):
    output, weights = run_folder
    results = json.loads((output / 'results.json').read_text())
    record = results['pretrained_weights']
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record == dict(source='file', id=weights.name, size=weights.stat().st_size, sha256=sha256, part='backbone')
    assert results['config']['backbone_weights'] == weights.name
    card = (output / 'README.md').read_text()
    assert 'random initialisation: no pretrained weights' not in card
    assert f'`{weights.name}` ({weights.stat().st_size} bytes, sha256 `{sha256}`)' in card


def test_every_loader_accepts_the_export(run_folder, tmp_path):
    output, _ = run_folder
    image = sorted((output / 'synthetic_data' / 'val').glob('*/*.png'))[0]
    model = load_model(str(output))
    assert model.num_classes == 4
    assert timm.create_model(f'local-dir:{output}', pretrained=True).num_classes == 4
    data = ['--data-dir', str(output / 'synthetic_data')]
    assert run(['eval', '--checkpoint', str(output), *data, '--out', str(tmp_path / 'eval.json')]) == 0
    assert run(['predict', '--checkpoint', str(output), str(image)]) == 0
    assert run(['explain', '--checkpoint', str(output), str(image), '--out', str(tmp_path / 'x.png')]) == 0


def test_onnx_export_accepts_the_export(run_folder):
    pytest.importorskip('onnxruntime')
    pytest.importorskip('onnx')
    output, _ = run_folder
    assert run(['export', str(output), '--onnx', '--img-size', '96']) == 0
    assert (output / 'model.onnx').is_file()
