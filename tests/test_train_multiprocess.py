"""Two CPU processes (torchrun, gloo) train as one: world size 2, the same weights on both ranks, one set of files."""

import json
import sys

import pytest
from safetensors.torch import load_file
from test_train import make_tiny_folder, run, train_command

from fgvc_zoo.training.checkpoints import state_dict_sha256

# One xdist worker runs every multi-process test (`--dist loadgroup`): two of them at once would oversubscribe the
# cores they time out on.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), pytest.mark.xdist_group('multiprocess')]


def test_torchrun_two_processes_share_one_model_and_one_output(tmp_path):
    data = make_tiny_folder(tmp_path / 'data')
    output = tmp_path / 'out'
    command = train_command(data, output, 'lfd', 1)
    # torchrun (torch.distributed.run) on a free port; it starts `-m fgvc_zoo.train` itself in each process.
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
    result = run(torchrun + command[1:], timeout=240)

    assert 'world size 2' in result.stdout
    results = json.loads((output / 'results.json').read_text())
    assert results['world_size'] == 2
    rank0, rank1 = results['weights_sha256_per_rank']
    assert rank0 == rank1 == state_dict_sha256(load_file(output / 'model.safetensors'))
    # One set of outputs written by the main process; each rank's RNG state in the one checkpoint.
    assert sorted(p.name for p in output.glob('model*.safetensors')) == ['model.safetensors']
    assert len((output / 'metrics.jsonl').read_text().splitlines()) == 1
    checkpoint = output / 'checkpoints' / 'epoch_001'
    assert sorted(p.name for p in checkpoint.glob('random_states_*.pkl')) == [
        'random_states_0.pkl',
        'random_states_1.pkl',
    ]
    # 16 training images, batch 4 per rank: the epoch is 2 steps on each of the 2 ranks, not 4.
    assert results['dataset']['train_images'] == 16
    assert json.loads((checkpoint / 'trainer_state.json').read_text())['step'] == 2


def test_torchrun_trains_a_plain_classifier_with_an_ema_identical_on_both_ranks(tmp_path):
    # The EMA also averages the BatchNorm statistics, which each rank's last forward set from its own images.
    data = make_tiny_folder(tmp_path / 'data')
    output = tmp_path / 'out'
    command = train_command(data, output, 'lfd', 1, '--model-ema', '--model-ema-decay', '0.5')
    model_at = command.index('--model')
    del command[model_at : model_at + 6]  # --model lfd --backbone test_resnet --model-args ...
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
    run([*torchrun, *command[1:], '--model', 'test_resnet'], timeout=240)

    results = json.loads((output / 'results.json').read_text())
    assert results['world_size'] == 2 and results['exported_weights'] == 'ema'
    rank0, rank1 = results['weights_sha256_per_rank']
    assert rank0 == rank1 == state_dict_sha256(load_file(output / 'model.safetensors'))
