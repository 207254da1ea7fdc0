"""Training faults: a run killed at any moment (SIGKILL or SIGTERM, in a step or while a checkpoint is written)
resumes to the bitwise-same weights as an unbroken run; a failed checkpoint write leaves the previous checkpoint
whole; two runs pointed at one output folder do not mix their files."""

import errno
import json
import signal

import pytest
import torch
from reliability_helpers import results, run_cli, train_args, weights_digest
from safetensors.torch import load_file

from fgvc_zoo import cli

EPOCHS = 3  # 16 images at batch 4: 4 training steps an epoch, forward passes 1-12


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """In-process runs use one intra-op thread, as the killed subprocesses do (OMP_NUM_THREADS=1): same kernels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def unbroken(tiny_data, tmp_path_factory):
    """The digest of an unbroken 3-epoch run."""
    output = tmp_path_factory.mktemp('unbroken')
    assert cli.run(train_args(tiny_data, output, EPOCHS)) == 0
    return weights_digest(output)


def checkpoint_names(output) -> list:
    return sorted(p.name for p in (output / 'checkpoints').iterdir())


@pytest.mark.parametrize(
    'sig, point, complete_before, left_partial',
    [
        ('KILL', 'forward:6', ['epoch_001'], []),  # epoch 2, second step
        ('TERM', 'forward:11', ['epoch_001', 'epoch_002'], []),  # epoch 3, third step
        ('KILL', 'checkpoint-write:2', ['epoch_001'], ['.epoch_002.tmp']),  # a file of the checkpoint half written
        ('TERM', 'after-save-state:2', ['epoch_001'], ['.epoch_002.tmp']),  # all files written, not yet renamed
    ],
    ids=['sigkill-in-step', 'sigterm-in-step', 'sigkill-in-checkpoint-write', 'sigterm-before-rename'],
)
def test_a_killed_run_resumes_to_the_weights_of_an_unbroken_run(
    sig, point, complete_before, left_partial, unbroken, tiny_data, tmp_path, capsys
):
    output = tmp_path / 'run'
    killed = run_cli(train_args(tiny_data, output, EPOCHS), fault={'FGVC_FAULT_SIGNAL': sig, 'FGVC_FAULT_AT': point})
    assert killed.returncode == -getattr(signal, f'SIG{sig}'), killed.stderr[-3000:]
    # The kill hit where we aimed: only whole checkpoints carry a name, the interrupted one is a hidden temp folder.
    assert checkpoint_names(output) == sorted(complete_before + left_partial)
    assert not (output / 'model.safetensors').exists()

    assert cli.run(train_args(tiny_data, output, EPOCHS, '--resume')) == 0
    assert f'Resumed from {output / "checkpoints" / complete_before[-1]}' in capsys.readouterr().out
    assert weights_digest(output) == unbroken
    assert [row['epoch'] for row in results(output)['history']] == [1, 2, 3]  # no epoch twice, none missing


def test_without_resume_a_second_run_refuses_an_output_that_holds_checkpoints(tiny_data, tmp_path):
    output = tmp_path / 'run'
    assert cli.run(train_args(tiny_data, output, 1)) == 0
    before = (output / 'model.safetensors').read_bytes()
    with pytest.raises(FileExistsError, match=r'already holds checkpoints \(epoch_001\): pass --resume'):
        cli.run(train_args(tiny_data, output, 1, '--seed', '8'))
    assert (output / 'model.safetensors').read_bytes() == before


def test_two_runs_started_together_on_one_output_do_not_both_write_it(tiny_data, tmp_path):
    output = tmp_path / 'shared'
    runs = [run_cli(train_args(tiny_data, output, 2, '--seed', str(seed)), background=True) for seed in (1, 2)]
    outcomes = [(run.wait(timeout=180), *run.communicate()) for run in runs]
    refused = [stderr for code, _, stderr in outcomes if code != 0]
    assert len(refused) == 1, [code for code, _, _ in outcomes]
    assert str(output) in refused[0] and 'another run' in refused[0]
    # The run that was not refused owns the folder: its exported weights are its last checkpoint's.
    final = load_file(output / 'model.safetensors')
    checkpoint = load_file(output / 'checkpoints' / 'epoch_002' / 'model.safetensors')
    assert all(torch.equal(final[k], checkpoint[k]) for k in final)


def _disk_full_from_epoch_2(monkeypatch):
    """torch.save (accelerate writes optimizer.bin and the RNG states with it) fails as on a full disk."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if '.epoch_002.tmp' in str(f):
            raise OSError(errno.ENOSPC, 'No space left on device', str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', save)


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint_and_resume_finishes_the_run(
    unbroken, tiny_data, tmp_path, monkeypatch
):
    output = tmp_path / 'run'
    with monkeypatch.context() as patch:
        _disk_full_from_epoch_2(patch)
        with pytest.raises(OSError) as failure:
            cli.run(train_args(tiny_data, output, EPOCHS))
    assert failure.value.errno == errno.ENOSPC
    assert 'epoch_002' not in checkpoint_names(output)
    previous = output / 'checkpoints' / 'epoch_001'
    assert json.loads((previous / 'trainer_state.json').read_text())['epoch'] == 1
    weights = load_file(previous / 'model.safetensors')
    assert weights and all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())

    assert cli.run(train_args(tiny_data, output, EPOCHS, '--resume')) == 0  # space freed
    assert weights_digest(output) == unbroken


def test_a_failed_checkpoint_write_names_the_checkpoint_kept_and_how_to_resume(tiny_data, tmp_path, monkeypatch):
    output = tmp_path / 'run'
    _disk_full_from_epoch_2(monkeypatch)
    with pytest.raises(OSError, match=r'(?s)epoch_002.*epoch_001.*--resume'):
        cli.run(train_args(tiny_data, output, 2))
