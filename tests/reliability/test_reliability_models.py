"""Model faults: unknown names get close matches; a checkpoint loads into another class count with its backbone
kept, and refuses another architecture; an input too small for the head says so; a non-finite loss stops the run
at a named step and keeps the last good checkpoint."""

import json

import pytest
import timm
import torch
from reliability_helpers import make_folder, run_cli, train_args
from safetensors.torch import load_file

from fgvc_zoo import cli
from fgvc_zoo.data import FgvcDataset
from fgvc_zoo.hub import load_model

LFD_KWARGS = dict(zoom_size=32, num_regions=2, num_hybrid_regions=1, backbone='test_resnet')


@pytest.fixture(scope='module')
def exported(tiny_data, tmp_path_factory):
    """A 2-class LFD trained for one epoch and exported by the trainer (model.safetensors + config.json)."""
    output = tmp_path_factory.mktemp('exported')
    assert cli.run(train_args(tiny_data, output, 1)) == 0
    return output


def overlay_model(architecture: str, weights, num_classes: int, **kwargs):
    return timm.create_model(
        architecture, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)), num_classes=num_classes, **kwargs
    )


# --- unknown names ------------------------------------------------------------------------------------------------


def test_an_unknown_backbone_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet5'.*Close matches: resnet50"):
        timm.create_model('lfd', backbone='resnet5')


def test_the_trainer_reports_an_unknown_backbone_with_close_matches(tiny_data, tmp_path):
    args = train_args(tiny_data, tmp_path / 'run', 1)
    args[args.index('test_resnet')] = 'test_resnt'
    with pytest.raises(ValueError, match=r"Unknown backbone 'test_resnt'.*Close matches: test_resnet"):
        cli.run(args)
    assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_timm_itself_names_an_unknown_head():
    with pytest.raises(RuntimeError, match=r'Unknown model \(lfdd\)'):
        timm.create_model('lfdd', backbone='test_resnet')


def test_the_trainer_reports_an_unknown_head_with_close_matches(tiny_data, tmp_path):
    args = train_args(tiny_data, tmp_path / 'run', 1)
    args[args.index('lfd')] = 'lfdd'
    with pytest.raises(ValueError, match=r"--model 'lfdd'.*Close matches: lfd\b"):
        cli.run(args)


# --- a checkpoint of another class count or another architecture --------------------------------------------------


def test_other_num_classes_keeps_the_backbone_and_re_initialises_every_classifier(exported):
    saved = load_file(exported / 'model.safetensors')
    model = overlay_model('lfd', exported / 'model.safetensors', 5, **LFD_KWARGS)
    state = model.state_dict()
    backbone = [k for k in state if k.startswith('backbone.')]
    assert backbone and all(torch.equal(state[k], saved[k]) for k in backbone)
    for name in ('image_head', 'region_head', 'hybrid_head'):
        assert state[f'{name}.weight'].shape[0] == 5 and saved[f'{name}.weight'].shape[0] == 2
    assert model.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 5)


def test_load_model_of_an_export_with_other_num_classes_keeps_the_backbone(exported):
    saved = load_file(exported / 'model.safetensors')
    state = load_model(str(exported), num_classes=3).state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in state if k.startswith('backbone.'))
    assert state['hybrid_head.weight'].shape[0] == 3


def test_the_same_num_classes_through_a_weights_file_loads_the_classifiers_too(exported):
    saved = load_file(exported / 'model.safetensors')
    state = overlay_model('lfd', exported / 'model.safetensors', 2, **LFD_KWARGS).state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in saved)


def test_eval_of_a_checkpoint_on_a_dataset_with_other_classes_says_so(exported, tmp_path):
    three_classes = make_folder(tmp_path / 'three', 1, 1, classes=('blue', 'red', 'green'))
    with pytest.raises(ValueError, match=r'predicts 2 classes but the dataset has 3'):
        cli.run(
            [
                'eval',
                '--checkpoint',
                str(exported),
                '--data-dir',
                str(three_classes),
                '--workers',
                '0',
                '--out',
                str(tmp_path / 'eval.json'),
            ]
        )


def test_export_of_another_architectures_weights_fails_on_their_names(exported, tmp_path):
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict'):
        cli.run(
            [
                'export',
                str(tmp_path / 'as_dpnet'),
                '--model',
                'dpnet',
                '--num-classes',
                '2',
                '--checkpoint',
                str(exported / 'model.safetensors'),
                '--model-kwargs',
                'backbone=test_resnet',
            ]
        )


def test_weights_of_another_architecture_are_refused_by_name(exported):
    with pytest.raises(ValueError, match=r"'lfd'.*not.*'dpnet'|'dpnet'.*'lfd'"):
        overlay_model('dpnet', exported / 'model.safetensors', 2, backbone='test_resnet')


# --- input too small ----------------------------------------------------------------------------------------------


def test_the_trainer_stops_on_an_input_too_small_for_lfd_and_says_use_a_larger_input(tiny_data, tmp_path):
    args = train_args(tiny_data, tmp_path / 'run', 1)
    args[args.index('--img-size') + 1] = '32'  # test_resnet (stride 32): a 1x1 map, 1 candidate region for 2
    with pytest.raises(ValueError, match=r'LFD needs 2 candidate regions but a \(32, 32\) input .* Use a larger input'):
        cli.run(args)


def test_the_cli_prints_the_too_small_input_message_as_its_last_line(tiny_data, tmp_path):
    args = train_args(tiny_data, tmp_path / 'run', 1)
    args[args.index('--img-size') + 1] = '32'
    finished = run_cli(args)
    assert finished.returncode == 1
    assert 'Use a larger input' in finished.stderr.strip().splitlines()[-1]


# --- non-finite inputs and losses ---------------------------------------------------------------------------------


def poison_training_image(monkeypatch, fetch: int, value: float) -> None:
    """The `fetch`-th training image the loader reads (counted over epochs) is filled with `value`."""
    real_getitem = FgvcDataset.__getitem__
    fetches = [0]

    def getitem(self, index):
        image, label = real_getitem(self, index)
        if self.split == 'train':
            fetches[0] += 1
            if fetches[0] == fetch:
                image = torch.full_like(image, value)
        return image, label

    monkeypatch.setattr(FgvcDataset, '__getitem__', getitem)


@pytest.mark.parametrize('value', [float('nan'), float('inf')], ids=['nan', 'inf'])
def test_a_non_finite_input_stops_the_run_at_its_step_and_keeps_the_last_good_checkpoint(
    value, tiny_data, tmp_path, monkeypatch
):
    output = tmp_path / 'run'
    poison_training_image(monkeypatch, fetch=16 + 6, value=value)  # epoch 2 (16 images an epoch), 2nd batch
    with pytest.raises(
        FloatingPointError,
        match=r'at epoch 2, batch 1, model step 0\. The last good checkpoint is '
        r'\S*checkpoints/epoch_001',
    ):
        cli.run(train_args(tiny_data, output, 2))
    assert sorted(p.name for p in (output / 'checkpoints').iterdir()) == ['epoch_001']
    assert not (output / 'model.safetensors').exists()  # nothing exported from poisoned weights
    kept = load_file(output / 'checkpoints' / 'epoch_001' / 'model.safetensors')
    assert all(torch.isfinite(t).all() for t in kept.values() if t.is_floating_point())


def test_a_diverging_loss_stops_the_run_naming_the_step_and_the_last_good_checkpoint(tiny_data, tmp_path):
    output = tmp_path / 'run'
    # Epoch 1 warms up at 1e-3; epoch 2 jumps to lr 1e30, which overflows the weights within a step or two.
    args = train_args(tiny_data, output, 2, '--warmup-epochs', '1', '--warmup-lr', '0.001')
    args[args.index('--lr') + 1] = '1e30'
    with pytest.raises(
        FloatingPointError,
        match=r'Non-finite loss \(\S+\) at epoch 2, batch \d, model step 0\. '
        r'The last good checkpoint is \S*checkpoints/epoch_001',
    ):
        cli.run(args)
    assert json.loads((output / 'checkpoints' / 'epoch_001' / 'trainer_state.json').read_text())['epoch'] == 1
