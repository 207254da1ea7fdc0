"""The baselines and the stopping rule a fair comparison needs: a linear probe trains its classifier alone (every
other weight and BatchNorm statistic bit-identical), `--patience` stops a run that no longer improves, and
`--keep-best` exports the best held-out epoch's weights."""

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from test_train import make_tiny_folder

from fgvc_zoo.errors import UsageError
from fgvc_zoo.training import loop
from fgvc_zoo.training.config import add_train_arguments, resolve_config


def parse(argv: list[str]):
    parser = __import__('argparse').ArgumentParser()
    add_train_arguments(parser)
    return resolve_config(parser.parse_args(argv))


@pytest.fixture(scope='module')
def tiny_folder(tmp_path_factory) -> Path:
    return make_tiny_folder(tmp_path_factory.mktemp('tiny'), train_per_class=8, val_per_class=4)


def _common(data: Path, output: Path, *extra: str) -> list[str]:
    return [
        '--data-dir', str(data), '--img-size', '64', '--batch-size', '4', '--workers', '0', '--cpu', '--lr', '0.1',
        '--output', str(output), '--keep-checkpoints', '20', *extra,
    ]  # fmt: skip


@pytest.mark.parametrize('backbone', ['test_resnet', 'test_efficientnet'])
def test_a_probe_trains_its_classifier_alone_and_keeps_every_backbone_weight_and_statistic(
    backbone, tiny_folder, tmp_path
):
    start = timm.create_model(backbone, num_classes=2).state_dict()
    file = tmp_path / 'start.safetensors'
    save_file({k: v.contiguous() for k, v in start.items()}, str(file))
    output = tmp_path / 'probe'
    loop.train(parse(['--model', backbone, '--backbone-weights', str(file), '--freeze-backbone', '--epochs', '2',
                      *_common(tiny_folder, output)]))  # fmt: skip
    trained = load_file(str(output / 'model.safetensors'))
    classifier = {f'{name}' for name, _ in timm.create_model(backbone, num_classes=2).named_parameters()
                  if name.startswith(('fc.', 'classifier.'))}  # fmt: skip
    assert classifier and set(trained) == set(start)
    changed = {k for k in start if not torch.equal(trained[k], start[k])}
    assert changed == classifier  # every other weight, running mean/var and batch counter bit-identical
    assert any('running_mean' in k for k in start)  # the backbone has BatchNorm statistics to keep


def test_a_probe_is_refused_for_a_head_naming_its_own_option():
    with pytest.raises(UsageError, match='freeze_backbone'):
        loop.build_model(parse(['--model', 'dpnet', '--backbone', 'test_resnet', '--synthetic', '--freeze-backbone']),
                         num_classes=3)  # fmt: skip


REAL_EVALUATE = loop._evaluate


def _scripted_val(monkeypatch, top1: list[float]) -> None:
    """The held-out top-1 of epoch k is top1[k - 1] (the real evaluation runs; only its top-1 is replaced)."""
    calls = iter(top1)

    def evaluate(model, loader, accelerator, prefix, *args):
        metrics = REAL_EVALUATE(model, loader, accelerator, prefix, *args)
        return metrics | {f'{prefix}_top1': next(calls)}

    monkeypatch.setattr(loop, '_evaluate', evaluate)


def test_patience_stops_a_run_that_stopped_improving_and_keep_best_exports_the_best_epoch(
    tiny_folder, tmp_path, monkeypatch
):
    _scripted_val(monkeypatch, [50.0, 75.0, 60.0, 75.0, 90.0, 95.0])
    output = tmp_path / 'run'
    loop.train(parse(['--model', 'test_resnet', '--epochs', '6', '--patience', '2', '--keep-best',
                      *_common(tiny_folder, output)]))  # fmt: skip
    results = json.loads((output / 'results.json').read_text())
    # epoch 2 reached 75; epoch 4 only equalled it, so two epochs passed without a gain: stop after epoch 4
    assert [row['epoch'] for row in results['history']] == [1, 2, 3, 4]
    assert (results['best_epoch'], results['epochs_trained'], results['stopped_early']) == (2, 4, True)
    assert results['exported_epoch'] == 2 and results['metrics']['top1'] == 75.0
    exported = load_file(str(output / 'model.safetensors'))
    best = load_file(str(output / 'checkpoints' / 'epoch_002' / 'model.safetensors'))
    last = load_file(str(output / 'checkpoints' / 'epoch_004' / 'model.safetensors'))
    assert all(torch.equal(exported[k], best[k]) for k in best)
    assert not all(torch.equal(exported[k], last[k]) for k in last)
    assert results['initial_loss'] > 0 and results['initial_cross_entropy'] > 0


def test_min_delta_counts_only_a_gain_above_it_and_without_keep_best_the_last_epoch_is_exported(
    tiny_folder, tmp_path, monkeypatch
):
    _scripted_val(monkeypatch, [50.0, 50.5, 51.0, 70.0])
    output = tmp_path / 'run'
    loop.train(parse(['--model', 'test_resnet', '--epochs', '4', '--patience', '2', '--min-delta', '1',
                      *_common(tiny_folder, output)]))  # fmt: skip
    results = json.loads((output / 'results.json').read_text())
    assert (results['best_epoch'], results['epochs_trained'], results['stopped_early']) == (1, 3, True)
    assert results['exported_epoch'] == 3 and results['metrics']['top1'] == 51.0


def test_a_resumed_run_keeps_its_best_weights_and_a_stopped_run_trains_no_further(tiny_folder, tmp_path, monkeypatch):
    _scripted_val(monkeypatch, [60.0, 40.0, 30.0])
    output = tmp_path / 'run'
    argv = ['--model', 'test_resnet', '--epochs', '3', '--keep-best', *_common(tiny_folder, output)]
    loop.train(parse([*argv[:3], '2', *argv[4:]]))  # the first two epochs of three, then a restart
    loop.train(parse([*argv, '--resume']))
    results = json.loads((output / 'results.json').read_text())
    assert (results['best_epoch'], results['epochs_trained']) == (1, 3)
    exported = load_file(str(output / 'model.safetensors'))
    best = load_file(str(output / 'checkpoints' / 'epoch_001' / 'model.safetensors'))
    assert all(torch.equal(exported[k], best[k]) for k in best)

    stopped = tmp_path / 'stopped'  # a run that stopped early: its resume evaluates and trains nothing more
    _scripted_val(monkeypatch, [60.0, 40.0])
    loop.train(parse(['--model', 'test_resnet', '--epochs', '5', '--patience', '1', *_common(tiny_folder, stopped)]))
    _scripted_val(monkeypatch, [])
    loop.train(parse(['--model', 'test_resnet', '--epochs', '5', '--patience', '1', '--resume',
                      *_common(tiny_folder, stopped)]))  # fmt: skip
    assert json.loads((stopped / 'results.json').read_text())['epochs_trained'] == 2
