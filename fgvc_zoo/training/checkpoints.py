"""Checkpoints of the trainer: written into a temporary folder renamed into place (`os.replace`), so that a kill
at any moment leaves the previous one whole; `--resume` finds the last complete one; one run holds an output
folder's lock at a time.
"""

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import RNG_STATE_NAME
from accelerate.utils import load as load_weights_only
from safetensors.torch import load_file, save_file

from ..hub import share_file
from .run_folder import CHECKPOINT_DIR, CHECKPOINT_STATE, _complete_checkpoints, resume_checkpoint

__all__ = [
    'CHECKPOINT_DIR',
    'CHECKPOINT_STATE',
    'LOCK_NAME',
    'state_dict_sha256',
    'resume_checkpoint',
    'find_resume',
    'lock_output',
    'release_output',
    'restore_state',
    'load_best_weights',
]

_logger = logging.getLogger('fgvc_zoo.train')

SCHEDULER_STATE = 'scheduler.json'
EMA_WEIGHTS = 'ema.safetensors'
# `--keep-best`: the exported weights (the EMA's with --model-ema) of the best held-out epoch so far.
BEST_WEIGHTS = 'best.safetensors'
LOCK_NAME = '.train.lock'


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A digest of the exact bytes of every tensor (by sorted name): equal digests mean bitwise-equal weights."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def lock_output(output: Path):
    """Hold an exclusive lock on OUTPUT for the whole run, so that two runs never write into one folder."""
    import fcntl

    output.mkdir(parents=True, exist_ok=True)
    lock = open(output / LOCK_NAME, 'w')
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the OS when the process ends, even on kill
    except BlockingIOError:
        lock.close()
        raise RuntimeError(
            f'{output} is in use by another run (it holds the lock {output / LOCK_NAME}): wait for '
            f'it to finish, or pass another --output.'
        ) from None
    with contextlib.suppress(FileNotFoundError):
        if os.path.samestat(os.fstat(lock.fileno()), os.stat(output / LOCK_NAME)):
            return lock
    lock.close()  # the file a run removed as it ended (`release_output`): lock the one there now
    return lock_output(output)


def release_output(lock) -> None:
    """Let go of `lock_output`'s lock and remove its file: a finished run folder holds only what the run made."""
    Path(lock.name).unlink(missing_ok=True)  # still held: a run starting now locks a new file (see lock_output)
    lock.close()


def find_resume(config: Any) -> Path | None:
    """`resume_checkpoint`, refusing to start over an OUTPUT that holds checkpoints unless `--resume` is given."""
    if config.resume is None:
        checkpoints = _complete_checkpoints(Path(config.output) / CHECKPOINT_DIR)
        if checkpoints:
            raise FileExistsError(
                f'{config.output} already holds checkpoints ({checkpoints[-1].name}): pass --resume to continue '
                f'or a new --output to start over.'
            )
    found = resume_checkpoint(config.output, config.resume)
    if found is None and config.resume == 'auto':
        _logger.info('--resume: no complete checkpoint in %s, starting from scratch.', config.output)
    return found


def restore_state(accelerator, folder: Path) -> None:
    """`accelerator.load_state(folder)`, then proof that this process's random state came back.

    accelerate only logs "Could not load random states" when its RNG file is unreadable (or refused: it is a pickle,
    read with weights_only) and carries on with fresh randomness, so the resumed run would silently stop matching an
    unbroken one. Here that is an error naming the file.
    """
    rng_file = folder / f'{RNG_STATE_NAME}_{accelerator.process_index}.pkl'
    accelerator.load_state(str(folder))
    try:
        saved = load_weights_only(rng_file)['torch_manual_seed']
    except Exception as e:  # whatever made accelerate skip it: missing, truncated, not plain data
        why = (str(e).strip().splitlines() or [''])[0]  # torch's weights_only refusal goes on for a page
        raise RuntimeError(
            f'--resume {folder}: its random state {rng_file.name} cannot be read ({type(e).__name__}: {why}), so the '
            f'run would continue with fresh randomness. Resume from an intact checkpoint, or start a new --output.'
        ) from e
    if not torch.equal(torch.get_rng_state(), saved):
        raise RuntimeError(f'--resume {folder}: the random state of {rng_file.name} was not restored.')


def _save_extra_state(folder: Path, scheduler, ema, best: dict[str, torch.Tensor] | None) -> None:
    # Not `register_for_checkpointing`: accelerate would pickle them and unpickle with weights_only=False on
    # resume, so a crafted checkpoint could run code. JSON and safetensors only hold data.

    (folder / SCHEDULER_STATE).write_text(json.dumps(scheduler.state_dict()))
    if ema is not None:
        save_file({k: v.contiguous() for k, v in ema.module.state_dict().items()}, str(folder / EMA_WEIGHTS))
    if best is not None:
        save_file({k: v.contiguous() for k, v in best.items()}, str(folder / BEST_WEIGHTS))


def load_best_weights(folder: Path) -> dict[str, torch.Tensor] | None:
    """The best epoch's weights a checkpoint carries (`--keep-best`), or None."""
    path = folder / BEST_WEIGHTS
    return load_file(str(path)) if path.is_file() else None


def _load_extra_state(folder: Path, scheduler, ema) -> None:

    if scheduler is not None:
        scheduler.load_state_dict(json.loads((folder / SCHEDULER_STATE).read_text()))
    if ema is not None:
        if not (folder / EMA_WEIGHTS).is_file():
            raise FileNotFoundError(
                f'--model-ema, but checkpoint {folder} has no {EMA_WEIGHTS}: it was trained '
                f'without EMA. Resume without --model-ema, or start a new --output.'
            )
        ema.module.load_state_dict(load_file(str(folder / EMA_WEIGHTS)))


def _save_checkpoint(
    accelerator,
    output: Path,
    trainer_state: dict[str, Any],
    keep: int,
    scheduler,
    ema,
    best: dict[str, torch.Tensor] | None = None,
) -> Path:
    """`save_state` into a temporary folder renamed into place, so a kill leaves the previous one whole; `best`
    (the best epoch's weights) travels in every checkpoint, so the one a resume reads agrees with its state."""
    root = output / CHECKPOINT_DIR
    final = root / f'epoch_{trainer_state["epoch"]:03d}'
    tmp = root / f'.{final.name}.tmp'
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))  # every process writes its RNG state into the folder
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _save_extra_state(tmp, scheduler, ema, best)
            for weights in tmp.glob('*.safetensors'):  # safetensors writes 0600; teammates need to read them
                share_file(weights)
            # Written last: a folder with a trainer state is whole (see `_complete_checkpoints`).
            (tmp / CHECKPOINT_STATE).write_text(json.dumps(trainer_state, indent=2))
            if final.exists():  # left by an earlier run into the same output
                shutil.rmtree(final)
            os.replace(tmp, final)
    except OSError as e:
        kept = _complete_checkpoints(root)
        raise OSError(
            e.errno,
            (
                f'Writing checkpoint {final} failed ({e.strerror or e}). The last complete checkpoint, '
                f'{kept[-1] if kept else "none"}, is untouched: free space or fix {root}, then rerun with --resume.'
            ),
            e.filename,
        ) from e
    if accelerator.is_main_process:
        for old in _complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
