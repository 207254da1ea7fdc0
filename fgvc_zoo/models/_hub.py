"""The Hub I/O the model layer needs: our repos' cfg entries, safetensors-only loads, readable download errors.

Lives under `fgvc_zoo/models` (it imports only huggingface_hub and timm) so that the builder in `_builder.py` needs
nothing from the layers above it; `fgvc_zoo.hub` re-exports every name.
"""

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from timm.models._builder import _resolve_pretrained_source
from timm.models._hub import hf_split

__all__ = [
    'HUB_ORG',
    'WEIGHTS_NAME',
    'PICKLE_WEIGHTS',
    'hub_cfg',
    'safetensors_only',
    'hub_errors',
    'weights_record',
    'local_weights_record',
]

HUB_ORG = 'fgvc-zoo'
WEIGHTS_NAME = 'model.safetensors'
# The pickle weight files timm would otherwise fall back to on the Hub.
PICKLE_WEIGHTS = ('pytorch_model.bin', 'pytorch_model.pth', 'model.pth', 'open_clip_pytorch_model.bin')


def hub_cfg(name: str, org: str = HUB_ORG) -> dict[str, str]:
    """The cfg entries of a published FGVC tag: our Hub repo, safetensors only (never a pickle fallback)."""
    return dict(hf_hub_id=f'{org}/{name}', hf_hub_filename=WEIGHTS_NAME)


def safetensors_only(pretrained_cfg: dict[str, Any]) -> dict[str, Any]:
    """Pin Hub loads of `pretrained_cfg` to `model.safetensors`; raise if it names a pickle file on the Hub.

    timm otherwise falls back to `pytorch_model.bin` when a repo has no safetensors. Meant for the builder
    (`build_fgvc_model`) on every cfg that loads full weights, so that any `hf-hub:` id or tag is covered.
    """
    if not pretrained_cfg.get('hf_hub_id'):
        return pretrained_cfg
    filename = pretrained_cfg.get('hf_hub_filename') or WEIGHTS_NAME
    if not filename.endswith('.safetensors'):
        raise ValueError(
            f"Refusing to load '{filename}' from Hub repo '{pretrained_cfg['hf_hub_id']}': fgvc_zoo never loads "
            f'pickle weights from the Hub. Convert them to {WEIGHTS_NAME} (safetensors) and push that instead.'
        )
    return dict(pretrained_cfg, hf_hub_filename=filename)


@contextlib.contextmanager
def hub_errors(repo_id: str, filename: str = WEIGHTS_NAME, what: str = '', ways_out: str = '') -> Iterator[None]:
    """Turn huggingface_hub's download errors into one line naming the repo, the file and the ways out.

    The one translation of Hub errors in the package: `what` names what was being loaded (default: the file of the
    repo), `ways_out` what to do instead (default: load a local export). Raise `LocalEntryNotFoundError` inside it
    for "not cached and the Hub cannot be asked" (its `__cause__`, if any, is named as the reason).
    """
    what = what or f"'{filename}' of Hub repo '{repo_id}'"
    ways_out = ways_out or (
        f"To load a local export instead: fgvc_zoo.hub.load_model('path/to/folder') or "
        f"timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file='path/to/{WEIGHTS_NAME}'))."
    )
    try:
        yield
    except LocalEntryNotFoundError as e:
        # constants.HF_HUB_OFFLINE, not is_offline_mode(): the function is exported only by recent huggingface_hub.
        why = 'HF_HUB_OFFLINE is set' if hf_constants.HF_HUB_OFFLINE else 'the Hub could not be reached'
        if e.__cause__ is not None:
            why += f' ({type(e.__cause__).__name__})'
        cache_id, revision = hf_split(repo_id)
        cached_pickles = [
            name for name in PICKLE_WEIGHTS if isinstance(try_to_load_from_cache(cache_id, name, revision), str)
        ]
        pickle_note = (
            f' The cache holds only {", ".join(cached_pickles)}: fgvc_zoo never loads pickle weights from the Hub.'
            if filename == WEIGHTS_NAME and cached_pickles
            else ''
        )
        raise OSError(
            f'Cannot load {what}: it is not in the local Hub cache and {why}.{pickle_note} Connect (or unset '
            f'HF_HUB_OFFLINE) and retry. {ways_out}'
        ) from e
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise OSError(
            f"Cannot load {what}: Hub repo '{repo_id}' does not exist or is private/gated (a private repo needs a "
            f'token: HF_TOKEN or `hf auth login`). Check the name. {ways_out}'
        ) from e
    except RevisionNotFoundError as e:
        raise OSError(f"Cannot load {what}: Hub repo '{repo_id}' has no such revision. {ways_out}") from e
    except EntryNotFoundError as e:
        pickle_note = (
            ' fgvc_zoo loads safetensors weights only and never a pickle (pytorch_model.bin) from the Hub.'
            if filename == WEIGHTS_NAME
            else ''
        )
        raise OSError(f"Cannot load {what}: Hub repo '{repo_id}' has no '{filename}'.{pickle_note} {ways_out}") from e


def weights_record(pretrained_cfg: dict[str, Any], part: str) -> dict[str, str]:
    """Name the weights timm loads for `pretrained_cfg`, by timm's own resolution (a file first, the Hub, a URL)."""
    source, location = _resolve_pretrained_source(pretrained_cfg)
    if source == 'file':
        return local_weights_record(Path(location), part)
    if source == 'state_dict':
        location = 'a state_dict passed in pretrained_cfg'
    elif isinstance(location, tuple):  # (hub id, filename)
        location = location[0]
    return dict(source=source or 'unknown', id=str(location), part=part)


def local_weights_record(path: Path, part: str) -> dict[str, Any]:
    """Where a local weights file came from, without its local path: a file in a Hugging Face cache is that Hub
    repo at that revision; any other file is its name, size and sha256 (a path means nothing on another machine)."""
    parts = path.parts
    if len(parts) >= 4 and parts[-4].startswith('models--') and parts[-3] == 'snapshots':
        repo = parts[-4][len('models--') :].replace('--', '/')
        return dict(source='hf-hub', id=repo, revision=parts[-2], file=path.name, part=part)
    digest = hashlib.sha256()
    with path.open('rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return dict(source='file', id=path.name, size=path.stat().st_size, sha256=digest.hexdigest(), part=part)
