"""kill -9 during epoch 2, then `--resume`: the final weights equal an unbroken run's, bit for bit; and `--resume`
from the output folder alone restores the run's config."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from test_train import HEAD_ARGS, make_tiny_folder, run, train_command

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# EMA and mixup put the EMA weights and numpy's RNG into the checkpoint too; augmentation uses torch's RNG.
EXTRA = ('--model-ema', '--model-ema-decay', '0.5', '--mixup', '0.2')


def test_kill_9_in_epoch_2_then_resume_gives_the_unbroken_weights(tmp_path):
    data = make_tiny_folder(tmp_path / 'data')
    unbroken, killed = tmp_path / 'unbroken', tmp_path / 'killed'
    run(train_command(data, unbroken, 'lfd', 2, *EXTRA))

    env = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
    process = subprocess.Popen(
        train_command(data, killed, 'lfd', 2, *EXTRA), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = killed / 'checkpoints' / 'epoch_001' / 'trainer_state.json'
    deadline = time.monotonic() + 180
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, 'the run ended before it could be killed in epoch 2'
    assert first.exists()
    assert not (killed / 'checkpoints' / 'epoch_002').exists() and not (killed / 'model.safetensors').exists()

    result = run(train_command(data, killed, 'lfd', 2, *EXTRA, '--resume'))
    assert f'Resumed from {killed / "checkpoints" / "epoch_001"} (epoch 1' in result.stdout
    expected, resumed = load_file(unbroken / 'model.safetensors'), load_file(killed / 'model.safetensors')
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)
    assert (killed / 'metrics.jsonl').read_text().count('\n') == 2  # epoch 1 once, not twice


def test_resume_from_the_folder_alone_extends_a_finished_run_to_the_weights_of_a_longer_one(tmp_path, capsys):
    from fgvc_zoo import cli

    data = make_tiny_folder(tmp_path / 'data')
    longer, extended = tmp_path / 'longer', tmp_path / 'extended'
    run(train_command(data, longer, 'lfd', 3, '--lr', '0.02'))
    run(train_command(data, extended, 'lfd', 2, '--lr', '0.02'))

    # Changing the model or the data of the run is refused before anything starts.
    with pytest.raises(SystemExit) as refused:
        cli.main(['train', '--output', str(extended), '--resume', '--model', 'dpnet'])
    assert refused.value.code == 2
    assert "which trained with --model 'lfd'; --model 'dpnet' would change the model" in capsys.readouterr().err

    # Only the folder and the new length: the saved config gives the rest (the step schedule does not depend on
    # the number of epochs, so the result is the 3-epoch run's, bit for bit).
    result = run([sys.executable, '-m', 'fgvc_zoo.train', '--output', str(extended), '--resume', '--epochs', '3'])
    assert 'Resumed from' in result.stdout and '(epoch 2' in result.stdout
    config = json.loads((extended / 'results.json').read_text())['config']
    assert config['lr'] == 0.02 and config['epochs'] == 3 and config['model_args'] == HEAD_ARGS['lfd']
    expected, resumed = load_file(longer / 'model.safetensors'), load_file(extended / 'model.safetensors')
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)
    assert (extended / 'metrics.jsonl').read_text().count('\n') == 3
