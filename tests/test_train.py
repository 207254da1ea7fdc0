"""The trainer: every head trains end to end on a tiny folder and exports a model timm reloads; options and recipes
resolve as documented; the optimiser and schedule follow the papers' recipe; checkpoints are found safely."""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from fgvc_zoo.data import create_dataset, create_transforms
from fgvc_zoo.runtime import parse_model_kwargs
from fgvc_zoo.training.checkpoints import find_resume, state_dict_sha256
from fgvc_zoo.training.config import add_train_arguments, resolve_config
from fgvc_zoo.training.loop import build_optimizer, build_scheduler, build_train_loader, check_finite

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / 'train_scripts' / 'recipes').glob('*.yaml'))
CLASSES = ('blue_circle', 'red_square')
# Head options that fit 64 px inputs and a tiny backbone (the trainer itself is head-agnostic).
HEAD_ARGS = {
    'lfd': 'zoom_size=32,num_regions=4,num_hybrid_regions=2',
    'dpnet': 'parts_per_class=2',
    'iagn': 'mid_channels=16,feature_channels=32,hidden_features=16,zoom_size=32',
}


def make_tiny_folder(root: Path, train_per_class: int = 8, val_per_class: int = 4, size: int = 64) -> Path:
    """root/{train,val}/<class>/*.png: a noisy background with a blue disc or a red square at a random place."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for split, count in (('train', train_per_class), ('val', val_per_class)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = rng.integers(0, 80, (size, size, 3)).astype(np.uint8)
                cx, cy = rng.integers(16, size - 16, 2)
                if label == 0:
                    image[(xx - cx) ** 2 + (yy - cy) ** 2 < 100] = (20, 40, 230)
                else:
                    image[(abs(xx - cx) < 9) & (abs(yy - cy) < 9)] = (230, 30, 20)
                Image.fromarray(image).save(root / split / name / f'{i:03d}.png')
    return root


@pytest.fixture(scope='module')
def tiny_folder(tmp_path_factory) -> Path:
    return make_tiny_folder(tmp_path_factory.mktemp('tiny_folder'))


def train_command(data_dir: Path, output: Path, head: str = 'lfd', epochs: int = 2, *extra: str) -> list:
    return [
        sys.executable,
        '-m',
        'fgvc_zoo.train',
        '--model',
        head,
        '--backbone',
        'test_resnet',
        *(['--model-args', HEAD_ARGS[head]] if head in HEAD_ARGS else []),
        '--data-dir',
        str(data_dir),
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
        *extra,
    ]


def run(command: list, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f'{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    return result


def reload_exported(output: Path) -> torch.nn.Module:
    """The user's path: the exported folder through timm's create_model with a local weights file.

    The overlay is the exported pretrained_cfg: its num_classes keeps timm from dropping the trained classifiers
    (the registered cfg says 1000) and its mean/std are the backbone's the model was trained with.
    """
    config = json.loads((output / 'config.json').read_text())
    model_args = dict(config['model_args'])  # timm's export may record num_classes among the model args
    model_args.setdefault('num_classes', config['num_classes'])
    weights = dict(config['pretrained_cfg'], file=str(output / 'model.safetensors'))
    return timm.create_model(
        config['architecture'], pretrained=True, pretrained_cfg_overlay=weights, **model_args
    ).eval()


def top1(model: torch.nn.Module, data_dir: Path, img_size: int) -> float:
    dataset = create_dataset(str(data_dir), split='val', transform=create_transforms(model, False, img_size=img_size))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        return 100 * (model(images).argmax(dim=1) == labels).float().mean().item()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_head_trains_exports_and_reloads_with_timm(head, tiny_folder, tmp_path):
    output = tmp_path / head
    result = run(train_command(tiny_folder, output, head, 2, '--keep-checkpoints', '1'))
    assert 'world size 1' in result.stdout

    results = json.loads((output / 'results.json').read_text())
    assert results['world_size'] == 1 and results['seed'] == 7
    assert results['label_names'] == list(CLASSES) and results['num_classes'] == 2
    assert set(results['versions']) >= {'torch', 'timm', 'accelerate', 'fgvc_zoo'}
    assert results['config']['model'] == head and results['config']['img_size'] == 64
    assert [row['epoch'] for row in results['history']] == [1, 2]
    # metrics.csv/jsonl: one row per epoch; the curve PNG; only the last checkpoint is kept (--keep-checkpoints 1).
    assert len((output / 'metrics.jsonl').read_text().splitlines()) == 2
    assert len((output / 'metrics.csv').read_text().splitlines()) == 3
    assert (output / 'curves.png').stat().st_size > 0
    assert sorted(p.name for p in (output / 'checkpoints').iterdir()) == ['epoch_002']

    config = json.loads((output / 'config.json').read_text())
    assert config['architecture'] == head and config['label_names'] == list(CLASSES)
    assert config['model_args']['backbone'] == 'test_resnet'
    model = reload_exported(output)
    assert state_dict_sha256(model.state_dict()) == results['weights_sha256_per_rank'][0]
    from_dir = timm.create_model(f'local-dir:{output}', pretrained=True)
    assert state_dict_sha256(from_dir.state_dict()) == results['weights_sha256_per_rank'][0]
    # 8 val images: the trainer's top-1 is a multiple of 12.5 %, and timm's reloaded model gets exactly it.
    assert top1(model, tiny_folder, 64) == pytest.approx(results['metrics']['top1'], abs=1e-6)


@pytest.mark.slow
def test_grad_checkpointing_trains_iagn_over_an_efficientnet(tiny_folder, tmp_path):
    # A checkpoint recomputation that left a BatchNorm frozen crashed IAGN's next frozen-statistics pass (issue 34).
    command = train_command(tiny_folder, tmp_path / 'out', 'iagn', 1, '--grad-checkpointing')
    command[command.index('test_resnet')] = 'test_efficientnet'
    run(command)
    assert (tmp_path / 'out' / 'model.safetensors').is_file()


def test_fgvc_zoo_train_is_the_same_command(capsys):
    from fgvc_zoo import cli

    with pytest.raises(SystemExit):
        cli.run(['train', '--help'])
    help_text = capsys.readouterr().out
    for flag in (
        '--recipe',
        '--backbone-lr-mult',
        '--model-ema',
        '--amp',
        '--resume',
        '--keep-checkpoints',
        '--synthetic',
        '--model-args',
        '--max-unreadable',
        '--log-with',
    ):
        assert flag in help_text


def parse(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return resolve_config(parser.parse_args(argv))


def test_recipe_values_are_typed_and_command_line_flags_win(tmp_path):
    recipe = tmp_path / 'recipe.yaml'
    # YAML 1.1 reads 1e-3 (no dot) as a string: the trainer casts it with the flag's type.
    recipe.write_text(
        'model: lfd_resnet50\nlr: 1e-3\nbatch-size: 8\nsched: cosine\nchannels-last: true\n'
        'model-kwargs:\n  num_regions: 4\n'
    )
    config = parse(['--recipe', str(recipe), '--batch-size', '2', '--synthetic', '--no-channels-last'])
    assert config.model == 'lfd_resnet50' and config.lr == 0.001 and config.sched == 'cosine'
    assert config.batch_size == 2 and config.channels_last is False
    assert config.model_kwargs == {'num_regions': 4}
    assert config.epochs == 100 and config.backbone_lr_mult == 0.1  # untouched defaults


def test_recipe_errors_name_the_file_and_the_fix(tmp_path):
    recipe = tmp_path / 'typo.yaml'
    recipe.write_text('model: lfd\nlearning-rate: 0.1\n')
    with pytest.raises(ValueError, match=r"typo.yaml: unknown option 'learning-rate'"):
        parse(['--recipe', str(recipe), '--synthetic'])
    recipe.write_text('model: lfd\nsched: linear\n')
    with pytest.raises(ValueError, match=r"sched='linear' is not one of \['step', 'cosine'\]"):
        parse(['--recipe', str(recipe), '--synthetic'])
    with pytest.raises(ValueError, match='exactly one of --data-dir DIR and --synthetic'):
        parse(['--model', 'lfd'])


def test_model_args_keep_lists_and_yaml_types():
    kwargs = parse_model_kwargs(
        'region_sizes=[0.25,0.5],zoom_size=32,cam_mode=pred,cam_baseline=true', '{num_regions: 4, zoom_size: 64}'
    )
    assert kwargs == {
        'region_sizes': [0.25, 0.5],
        'zoom_size': 32,
        'cam_mode': 'pred',
        'cam_baseline': True,
        'num_regions': 4,
    }
    with pytest.raises(ValueError, match="'zoom_size' is not key=value"):
        parse_model_kwargs('zoom_size,num_regions=4')
    with pytest.raises(ValueError, match="--model-args 'zoom_size': expected 'key=value,...' or a YAML mapping"):
        parse_model_kwargs('zoom_size')


def test_there_is_a_recipe_per_head_and_dataset():
    # Guards the parametrised test below: an empty or moved recipe folder would leave it nothing to check.
    expected = [f'{head}_resnet50_{data}' for head in ('dpnet', 'iagn', 'lfd') for data in ('aircraft', 'cars', 'cub')]
    assert [recipe.stem for recipe in RECIPES] == expected


@pytest.mark.parametrize('recipe', RECIPES, ids=[r.stem for r in RECIPES])
def test_paper_recipes_resolve_and_build(recipe):
    config = parse(['--recipe', str(recipe), '--data-dir', 'unused', '--backbone', 'test_resnet'])
    head, backbone, dataset = recipe.stem.split('_')
    assert config.model == f'{head}_{backbone}.tv_in1k' and config.img_size == 448 and config.pretrained
    assert config.dataset_layout == dataset
    if head == 'lfd':  # docs/methods.md section 1: the paper's recipe
        assert (config.opt, config.momentum, config.weight_decay, config.epochs) == ('momentum', 0.9, 5e-4, 100)
        assert (config.lr, config.sched, config.decay_epochs, config.decay_rate) == (0.01, 'step', 40, 0.1)
        assert config.backbone_lr_mult == 0.1
    kwargs = parse_model_kwargs(config.model_args, config.model_kwargs)
    model = timm.create_model(head, backbone=config.backbone, num_classes=3, **kwargs)  # the head, over a tiny net
    assert model.model_args['backbone'] == 'test_resnet'


def test_backbone_lr_is_a_tenth_and_the_step_schedule_decays_every_40_epochs():
    config = parse(['--model', 'lfd', '--synthetic', '--lr', '0.02', '--epochs', '100'])
    model = timm.create_model('lfd', backbone='test_resnet', num_classes=3)
    optimizer = build_optimizer(config, model)
    head_group, backbone_group = optimizer.param_groups
    assert len(backbone_group['params']) == len(list(model.backbone_parameters()))
    assert len(head_group['params']) + len(backbone_group['params']) == len(list(model.parameters()))
    scheduler = build_scheduler(config, optimizer)
    for epoch, head_lr in ((0, 0.02), (39, 0.02), (40, 0.002), (80, 0.0002)):
        scheduler.step(epoch)
        assert head_group['lr'] == pytest.approx(head_lr)
        assert backbone_group['lr'] == pytest.approx(head_lr / 10)


def test_a_frozen_backbone_leaves_only_the_head_group():
    config = parse(['--model', 'dpnet', '--synthetic'])
    model = timm.create_model('dpnet', backbone='test_resnet', num_classes=3, freeze_backbone=True)
    (group,) = build_optimizer(config, model).param_groups
    assert group['lr'] == 0.01
    assert {id(p) for p in group['params']} == {id(p) for p in model.parameters() if p.requires_grad}


def test_a_split_smaller_than_one_batch_still_trains_and_mixup_refuses_an_odd_batch():
    from accelerate.data_loader import prepare_data_loader

    config = parse(['--model', 'lfd', '--synthetic', '--batch-size', '4', '--workers', '0'])
    # 6 images at 4 per process on 2 processes: dropping the partial batch would leave no step on either process;
    # one step each, the second batch padded by accelerate with images from the start of the split.
    loader = build_train_loader(config, list(range(6)), num_processes=2, pin_memory=False)
    shards = [prepare_data_loader(loader, num_processes=2, process_index=rank, put_on_device=False) for rank in (0, 1)]
    assert [[len(batch) for batch in shard] for shard in shards] == [[4], [4]]
    # One process: 3 images are one batch of 3; 9 images are two batches of 4 (the partial batch is dropped).
    assert [len(batch) for batch in build_train_loader(config, list(range(3)), 1, False)] == [3]
    assert [len(batch) for batch in build_train_loader(config, list(range(9)), 1, False)] == [4, 4]

    mixup = parse(['--model', 'lfd', '--synthetic', '--batch-size', '8', '--mixup', '0.2'])
    with pytest.raises(ValueError, match=r'holds 5 images .* pass an even --batch-size of at most 5\.'):
        build_train_loader(mixup, list(range(5)), 1, False)
    with pytest.raises(ValueError, match=r'holds 3 images .* pass an even --batch-size\.'):
        build_train_loader(
            parse(['--model', 'lfd', '--synthetic', '--batch-size', '3', '--cutmix', '1']), list(range(9)), 1, False
        )
    assert len(build_train_loader(mixup, list(range(6)), 2, False)) == 1  # padded to 8 on each process: even


def test_resume_takes_the_last_complete_checkpoint_and_ignores_partial_ones(tmp_path):
    root = tmp_path / 'checkpoints'
    for name in ('epoch_001', 'epoch_002', '.epoch_003.tmp', 'epoch_004'):
        (root / name).mkdir(parents=True)
    for name in ('epoch_001', 'epoch_002', '.epoch_003.tmp'):  # epoch_004 lacks its state: never renamed into place
        (root / name / 'trainer_state.json').write_text('{}')
    config = argparse.Namespace(output=str(tmp_path), resume='auto')
    assert find_resume(config) == root / 'epoch_002'
    with pytest.raises(FileExistsError, match='pass --resume to continue'):
        find_resume(argparse.Namespace(output=str(tmp_path), resume=None))
    assert find_resume(argparse.Namespace(output=str(tmp_path / 'fresh'), resume='auto')) is None


def test_a_non_finite_loss_stops_naming_epoch_batch_and_last_checkpoint():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    check_finite(accelerator, torch.tensor(1.5), epoch=0, batch=0, step=0, last_good=None)
    with pytest.raises(FloatingPointError, match=r'at epoch 3, batch 5, model step 1\. .*out/checkpoints/epoch_002'):
        check_finite(accelerator, torch.tensor(float('nan')), 2, 5, 1, Path('out/checkpoints/epoch_002'))
    with pytest.raises(FloatingPointError, match='none \\(no epoch finished\\)'):
        check_finite(accelerator, torch.tensor(float('inf')), 0, 0, 0, None)


def test_weights_digest_sees_a_one_ulp_change():
    state = {'a.weight': torch.linspace(0, 1, 5), 'b.bias': torch.zeros(2)}
    same = {name: tensor.clone() for name, tensor in reversed(list(state.items()))}
    assert state_dict_sha256(state) == state_dict_sha256(same)
    same['a.weight'][2] = torch.nextafter(same['a.weight'][2], torch.tensor(2.0))
    assert state_dict_sha256(state) != state_dict_sha256(same)


def test_a_second_run_on_a_locked_output_is_refused_until_the_first_ends(tmp_path):
    from fgvc_zoo.training.checkpoints import lock_output, release_output

    first = lock_output(tmp_path / 'out')
    with pytest.raises(RuntimeError, match=r'out is in use by another run'):
        lock_output(tmp_path / 'out')
    release_output(first)
    assert not (tmp_path / 'out' / '.train.lock').exists()  # a finished run leaves no lock file


def test_a_run_starting_as_another_ends_locks_the_file_that_is_there(tmp_path, monkeypatch):
    """The ending run removes its lock file between the new run's open and its flock: the new run must not hold
    the removed file, which a third run would not see."""
    import fcntl

    from fgvc_zoo.training.checkpoints import lock_output, release_output

    ending = lock_output(tmp_path / 'out')
    flock = fcntl.flock

    def flock_as_the_other_run_ends(file, flags):
        if not ending.closed:
            release_output(ending)
        return flock(file, flags)

    monkeypatch.setattr(fcntl, 'flock', flock_as_the_other_run_ends)
    starting = lock_output(tmp_path / 'out')
    assert os.path.samestat(os.fstat(starting.fileno()), os.stat(tmp_path / 'out' / '.train.lock'))
    release_output(starting)


def test_an_unknown_model_names_close_matches():
    from fgvc_zoo.training.loop import build_model

    config = parse(['--model', 'lfdd', '--backbone', 'test_resnet', '--synthetic'])
    with pytest.raises(ValueError, match=r"--model 'lfdd' is not a registered model\. Close matches: lfd\b"):
        build_model(config, num_classes=2)


def test_a_recipe_that_is_not_plain_yaml_is_refused_naming_the_file(tmp_path):
    recipe = tmp_path / 'bad.yaml'
    recipe.write_text('epochs: !!python/object/apply:os.getcwd []\n')
    with pytest.raises(ValueError, match=r'--recipe \S*bad.yaml: not a plain YAML mapping'):
        parse(['--recipe', str(recipe), '--synthetic'])


def test_a_tracker_that_is_not_installed_stops_the_run_before_training(tmp_path, monkeypatch):
    import accelerate.tracking

    from fgvc_zoo.training.loop import train

    # accelerate drops a requested tracker it did not find installed when it was imported: none, here
    monkeypatch.setattr(accelerate.tracking, '_available_trackers', [])
    config = parse(['--model', 'lfd', '--synthetic', '--output', str(tmp_path / 'out'), '--log-with', 'tensorboard'])
    with pytest.raises(ValueError, match='--log-with tensorboard: that tracker is not installed'):
        train(config)
    assert not (tmp_path / 'out').exists()


def test_a_plain_timm_classifier_trains_exports_and_reloads_with_equal_logits(tiny_folder, tmp_path):
    """The baseline the heads must beat trains in the same tool: no head, the trainer's cross-entropy."""
    from safetensors.torch import load_file

    from fgvc_zoo.hub import load_model

    output = tmp_path / 'plain'
    command = train_command(tiny_folder, output, 'lfd', 1)
    model_at = command.index('--model')
    del command[model_at : model_at + 6]  # --model lfd --backbone test_resnet --model-args ...
    result = run(
        [*command, '--model', 'test_resnet', '--model-ema', '--model-ema-decay', '0.5', '--train-crop', 'resize_crop']
    )
    assert ', 1 epoch from epoch 1.' in result.stdout
    assert not (output / '.train.lock').exists()  # the finished folder holds what the run made, no lock file

    results = json.loads((output / 'results.json').read_text())
    assert results['config']['train_crop'] == 'resize_crop'  # the recipe records the augmentation
    config = json.loads((output / 'config.json').read_text())
    assert config['architecture'] == 'test_resnet' and config['num_classes'] == 2
    assert config['label_names'] == list(CLASSES)
    assert "timm's own classifier head over a `test_resnet` backbone" in (output / 'README.md').read_text()
    loaded = load_model(str(output))
    assert state_dict_sha256(loaded.state_dict()) == results['weights_sha256_per_rank'][0]
    assert top1(loaded, tiny_folder, 64) == pytest.approx(results['metrics']['top1'], abs=1e-6)
    by_hand = timm.create_model('test_resnet', num_classes=2)
    by_hand.load_state_dict(load_file(str(output / 'model.safetensors')))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), by_hand.eval()(x), rtol=0, atol=0)


def test_a_plain_classifier_trains_its_classifier_at_lr_and_the_rest_at_the_backbone_lr():
    from fgvc_zoo.training.loop import build_model

    config = parse(['--model', 'test_resnet', '--synthetic', '--lr', '0.02', '--backbone-lr-mult', '0.1'])
    model = build_model(config, num_classes=3)
    head_group, backbone_group = build_optimizer(config, model).param_groups
    assert {id(p) for p in head_group['params']} == {id(p) for p in model.get_classifier().parameters()}
    assert len(head_group['params']) + len(backbone_group['params']) == len(list(model.parameters()))
    assert (head_group['lr'], backbone_group['lr']) == (0.02, pytest.approx(0.002))


def test_a_plain_classifier_refuses_head_options_naming_them_and_takes_timms_own():
    from fgvc_zoo.training.loop import build_model

    config = parse(['--model', 'test_resnet', '--backbone', 'resnet50', '--synthetic'])
    with pytest.raises(
        ValueError,
        match=r'test_resnet is a plain timm classifier, which takes no --backbone .*--model lfd --backbone test_resnet',
    ):
        build_model(config, num_classes=2)
    config = parse(['--model', 'test_resnet', '--model-args', 'num_regions=2', '--synthetic'])
    with pytest.raises(
        ValueError, match=r"--model-args/--model-kwargs: test_resnet is a plain timm classifier .*'num_regions'"
    ):
        build_model(config, num_classes=2)
    # timm's own arguments reach timm, e.g. a local ImageNet weights file with --pretrained (no Hub needed).
    weights = {k: v.clone() for k, v in timm.create_model('test_resnet').state_dict().items()}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / 'weights.safetensors'
        save_file(weights, str(path))
        kwargs = f'{{drop_rate: 0.5, pretrained_cfg_overlay: {{file: {path}}}}}'
        config = parse(['--model', 'test_resnet', '--pretrained', '--model-kwargs', kwargs, '--synthetic'])
        model = build_model(config, num_classes=3)
    assert model.drop_rate == 0.5 and model.num_classes == 3
    torch.testing.assert_close(model.conv1[0].weight, weights['conv1.0.weight'])  # loaded; the classifier is new


class _StopBeforeTraining(Exception):
    pass


@pytest.mark.parametrize(
    'move',
    [
        'float64',  # on a CPU, a dtype change that prepare makes stands in for its move to the GPU
        pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')),
    ],
)
def test_the_ema_lives_where_prepare_put_the_model(move, tiny_folder, tmp_path, monkeypatch):
    from accelerate import Accelerator

    from fgvc_zoo.training import loop

    real_prepare = Accelerator.prepare

    def prepare(self, *objects):
        prepared = real_prepare(self, *objects)
        if move == 'float64':
            prepared[0].to(torch.float64)
        return prepared

    seen = {}

    def first_epoch(config, epoch, model, loader, optimizer, accelerator, ema, *rest):
        seen['model'] = next(accelerator.unwrap_model(model).parameters())
        seen['ema'] = next(ema.module.parameters())
        raise _StopBeforeTraining

    monkeypatch.setattr(Accelerator, 'prepare', prepare)
    monkeypatch.setattr(loop, 'train_one_epoch', first_epoch)
    argv = train_command(tiny_folder, tmp_path / 'out', 'lfd', 1, '--model-ema')[3:]
    with pytest.raises(_StopBeforeTraining):
        loop.train(parse(argv))
    assert seen['model'].device.type == ('cuda' if move == 'cuda' else 'cpu')
    assert (seen['ema'].device, seen['ema'].dtype) == (seen['model'].device, seen['model'].dtype)


def test_train_crop_picks_the_training_crop_and_refuses_scale_without_rrc():
    from fgvc_zoo.training.loop import set_transforms

    model = timm.create_model('test_resnet', num_classes=2)
    train_set, val_set = argparse.Namespace(), argparse.Namespace()
    config = parse(['--model', 'test_resnet', '--synthetic', '--img-size', '64', '--train-crop', 'resize_crop'])
    set_transforms(config, model, train_set, val_set)
    assert [type(t).__name__ for t in train_set.transform.transforms[:2]] == ['Resize', 'RandomCrop']
    assert parse(['--model', 'test_resnet', '--synthetic']).train_crop == 'rrc'  # the default, until measured
    config = parse(['--model', 'test_resnet', '--synthetic', '--train-crop', 'resize_crop', '--scale', '0.5', '1'])
    with pytest.raises(ValueError, match='--scale sets the random resized crop, which --train-crop resize_crop'):
        set_transforms(config, model, train_set, val_set)


DEMO_RECIPE = REPO / 'train_scripts' / 'demo_cpu.yaml'


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_readme_demo_learns_far_above_chance_and_its_predict_example_answers_right(tmp_path, capsys):
    from fgvc_zoo.cli import run as fgvc_zoo_run

    readme = (REPO / 'README.md').read_text()
    assert 'fgvc-zoo train --recipe train_scripts/demo_cpu.yaml --output out/demo' in readme
    output = tmp_path / 'demo'
    assert fgvc_zoo_run(['train', '--recipe', str(DEMO_RECIPE), '--output', str(output)]) == 0
    final = json.loads((output / 'metrics.jsonl').read_text().splitlines()[-1])
    # 4 classes, 32 val images: chance is 25 %, and 60 % or more by chance has probability below 1e-5.
    assert final['val_top1'] >= 60, final
    capsys.readouterr()
    example = 'out/demo/synthetic_data/val/cross/0000.png'
    assert f'fgvc-zoo predict --checkpoint out/demo --topk 3 {example}' in readme
    assert (
        fgvc_zoo_run(['predict', '--checkpoint', str(output), '--topk', '3', str(output / example[len('out/demo/') :])])
        == 0
    )
    assert capsys.readouterr().out.splitlines()[1].split()[1] == 'cross'


def make_tiny_cub(root: Path) -> Path:
    """The tiny folder's images in the CUB layout: its train/ images are CUB's train split, its val/ images CUB's
    test split (CUB has no val split)."""
    folder = make_tiny_folder(root / 'source')
    cub = root / 'cub'
    rows = []
    for split, flag in (('train', 1), ('val', 0)):
        for path in sorted((folder / split).glob('*/*.png')):
            (cub / 'images' / split / path.parent.name).mkdir(parents=True, exist_ok=True)
            path.rename(cub / 'images' / split / path.parent.name / path.name)
            rows.append((f'{split}/{path.parent.name}/{path.name}', CLASSES.index(path.parent.name) + 1, flag))
    (cub / 'classes.txt').write_text(''.join(f'{i} {i:03d}.{name}\n' for i, name in enumerate(CLASSES, 1)))
    (cub / 'images.txt').write_text(''.join(f'{i} {p}\n' for i, (p, _, _) in enumerate(rows, 1)))
    (cub / 'image_class_labels.txt').write_text(''.join(f'{i} {c}\n' for i, (_, c, _) in enumerate(rows, 1)))
    (cub / 'train_test_split.txt').write_text(''.join(f'{i} {f}\n' for i, (_, _, f) in enumerate(rows, 1)))
    return cub


def plain_command(data_dir: Path, output: Path, *extra: str) -> list:
    command = train_command(data_dir, output, 'lfd', 1)
    model_at = command.index('--model')
    del command[model_at : model_at + 6]  # --model lfd --backbone test_resnet --model-args ...
    return [*command, '--model', 'test_resnet', *extra]


def test_a_run_on_a_layout_without_val_evaluates_on_test_and_names_every_metric_test(tmp_path):
    cub = make_tiny_cub(tmp_path)
    output = tmp_path / 'run'
    result = run(plain_command(cub, output))
    assert 'test_top1=' in result.stdout and 'val_top1' not in result.stdout  # the progress line
    header = (output / 'metrics.csv').read_text().splitlines()[0].split(',')
    assert {'test_loss', 'test_top1', 'test_top5'} <= set(header) and not any('val' in k for k in header)
    results = json.loads((output / 'results.json').read_text())
    assert results['eval_split'] == 'test' and results['config']['eval_split'] == 'test'
    assert results['dataset']['test_images'] == 8 and 'val_images' not in results['dataset']
    assert results['metrics']['top1'] == results['history'][-1]['test_top1']
    assert 'on the test split of `results.json`' in (output / 'README.md').read_text()
    from fgvc_zoo.training.loop import curve_panels

    assert ('test accuracy', 'accuracy (%)', ['test_top1', 'test_top5']) in curve_panels(results['history'])


def test_val_fraction_carves_a_stratified_val_split_and_never_opens_test(tmp_path):
    cub = make_tiny_cub(tmp_path)
    for path in (cub / 'images' / 'val').glob('*/*.png'):
        path.write_bytes(b'')  # the test split is unreadable: a run that opened it would stop
    output = tmp_path / 'run'
    result = run(plain_command(cub, output, '--val-fraction', '0.25', '--split-seed', '3'))
    assert 'val_top1=' in result.stdout and 'test_top1' not in result.stdout and 'test_loss' not in result.stdout
    header = (output / 'metrics.csv').read_text().splitlines()[0].split(',')
    assert 'val_top1' in header and not any(k.startswith('test') for k in header)
    results = json.loads((output / 'results.json').read_text())
    assert results['eval_split'] == 'val' and results['dataset']['unreadable'] == {'train': [], 'val': []}
    # 8 training images per class: 2 of each class carved for val, 6 left to train on
    assert (results['dataset']['train_images'], results['dataset']['val_images']) == (12, 4)
    assert 'validation split carved from the training images' in (output / 'README.md').read_text()
    with pytest.raises(AssertionError, match='unreadable'):
        run(plain_command(cub, tmp_path / 'on_test'))  # the default evaluates on test, which is unreadable


def test_the_val_carve_is_stratified_deterministic_and_disjoint():
    from fgvc_zoo.data import FgvcDataset, carve_val

    samples = [(f'{c}/{i}.png', c) for c in range(3) for i in range(4 * (c + 1))]
    dataset = FgvcDataset('root', 'train', 'folder', ['a', 'b', 'c'], samples)
    train, val = carve_val(dataset.targets, 0.25, seed=0)
    assert not set(train) & set(val) and sorted(train + val) == list(range(len(samples)))
    assert [sum(dataset.targets[i] == c for i in val) for c in range(3)] == [1, 2, 3]
    assert carve_val(dataset.targets, 0.25, seed=0) == (train, val)
    assert carve_val(dataset.targets, 0.25, seed=1) != (train, val)
    part = dataset.subset(val, 'val')
    assert part.split == 'val' and part.samples == [samples[i] for i in val] and len(dataset) == len(samples)


def test_split_flags_that_would_tune_on_test_or_train_on_val_are_refused(tmp_path):
    from fgvc_zoo.errors import UsageError
    from fgvc_zoo.training.loop import train

    def parse(argv):
        parser = argparse.ArgumentParser()
        add_train_arguments(parser)
        return resolve_config(parser.parse_args(['--model', 'test_resnet', '--synthetic', *argv]))

    with pytest.raises(UsageError, match='--val-fraction carves a val split to evaluate on: drop --eval-split test'):
        parse(['--val-fraction', '0.1', '--eval-split', 'test'])
    with pytest.raises(UsageError, match=r'--val-fraction is a fraction in \[0, 1\)'):
        parse(['--val-fraction', '1'])
    assert parse(['--eval-split', 'validation']).eval_split == 'val'
    config = parse(['--train-split', 'trainval', '--output', str(tmp_path / 'out')])
    with pytest.raises(UsageError, match='--train-split trainval holds the val split'):
        train(config)
