"""The checkpoints of a run's output folder by name: where they live, which are whole, which one `--resume` means.

No torch here, so that a config (`fgvc_zoo.training.config`) resolves `--resume` before torch is imported.
"""

import re
from pathlib import Path

__all__ = ['CHECKPOINT_DIR', 'CHECKPOINT_STATE', 'resume_checkpoint']

CHECKPOINT_DIR = 'checkpoints'
CHECKPOINT_STATE = 'trainer_state.json'
_CHECKPOINT_RE = re.compile(r'^epoch_(\d{3,})$')


def _complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders that were renamed into place (so are whole), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _CHECKPOINT_RE.match(p.name) and (p / CHECKPOINT_STATE).is_file()]
    return sorted(found, key=lambda p: int(_CHECKPOINT_RE.match(p.name).group(1)))


def resume_checkpoint(output: str | Path, resume: str | None) -> Path | None:
    """The checkpoint `--resume` means: none without it; with `auto` (the flag alone) OUTPUT's last complete one, or
    none yet; else the folder given, which must be a complete checkpoint."""
    if resume is None:
        return None
    if resume == 'auto':
        checkpoints = _complete_checkpoints(Path(output) / CHECKPOINT_DIR)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume)
    if not (path / CHECKPOINT_STATE).is_file():
        raise FileNotFoundError(f'--resume {path}: not a complete checkpoint folder (no {CHECKPOINT_STATE}).')
    return path
