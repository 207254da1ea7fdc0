"""The Hub I/O of the model layer: our repos' cfg entries, safetensors-only loads, readable download errors, the
record of which weights were loaded, and a backbone's ImageNet weights (never a long silent wait).

`pretrained=True` on a backbone whose weights live on the Hugging Face Hub takes `model.safetensors` from the local
Hub cache when it is there (no network at all), else downloads it, but first asks the Hub once with a short timeout:
with `HF_HUB_OFFLINE=1` or no route to the Hub (a cluster's compute nodes) it fails at once, naming the repo, the file
and the two ways out, instead of huggingface_hub's minute of retries. `backbone_weights=` / `--backbone-weights`
loads the same file from a path. Either way the keys are checked strictly against the backbone.

Users import these names from `fgvc_zoo.hub`, the one public home of Hub I/O. The code lives here, under
`fgvc_zoo/models`, because the builder (`_builder.py`, `_backbone.py`, `_cfgs.py`) needs it and `hub` sits above
the models; and because it imports timm, which the registration hook allows only from `fgvc_zoo.models` up.
"""

import contextlib
import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn
from huggingface_hub import constants as hf_constants
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import load_file
from timm.models._builder import _resolve_pretrained_source
from timm.models._hub import hf_split

__all__ = [
    'HUB_ORG',
    'WEIGHTS_NAME',
    'PICKLE_WEIGHTS',
    'HUB_PROBE_TIMEOUT',
    'hub_cfg',
    'safetensors_only',
    'hub_errors',
    'weights_record',
    'local_weights_record',
    'hub_weights_file',
    'resolve_weights_file',
    'load_backbone_weights',
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


HUB_PROBE_TIMEOUT = 5.0  # seconds for the one request that tells whether the Hub can be reached


def _hub_source(name: str) -> tuple[str, str | None, str] | None:
    """(repo, revision, filename) of the backbone's weights on the Hub, or None when timm has them elsewhere."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return None
    repo, revision = hf_split(cfg.hf_hub_id)
    return repo, revision, cfg.hf_hub_filename or WEIGHTS_NAME


def _ways_out(name: str, repo: str, filename: str) -> str:
    return (
        f'Either pass the file with --backbone-weights PATH (backbone_weights=PATH in Python: the .safetensors file, '
        f'or a folder or Hugging Face cache holding it), or run `hf download {repo} {filename}` (huggingface-cli '
        f'download in older huggingface_hub) on a connected machine and copy its Hub cache here (HF_HUB_CACHE). '
        f'To train the backbone from scratch instead, pass --no-pretrained (pretrained=False; it also overrides a '
        f"recipe's `pretrained: true`)."
    )


def hub_weights_file(name: str) -> str | None:
    """Local path of backbone `name`'s Hub weights (cached, else downloaded), or None when they are not on the Hub."""
    source = _hub_source(name)
    if source is None or not source[2].endswith('.safetensors'):
        return None  # weights behind a URL (or a pickle-only repo): timm's own loader fetches them
    repo, revision, filename = source
    cached = try_to_load_from_cache(repo, filename, revision=revision)
    if isinstance(cached, str):
        return cached
    what = f"the ImageNet weights of backbone '{name}' ('{filename}' of Hub repo '{repo}')"
    with hub_errors(repo, filename, what=what, ways_out=_ways_out(name, repo, filename)):
        if hf_constants.HF_HUB_OFFLINE:  # not is_offline_mode(): huggingface_hub exports it only from 1.0
            raise LocalEntryNotFoundError('HF_HUB_OFFLINE is set')
        try:  # one short request first: without a route, huggingface_hub would retry for a minute
            get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision), timeout=HUB_PROBE_TIMEOUT)
        except (HfHubHTTPError, EntryNotFoundError):
            raise  # the Hub answered (no such repo, gated, no such file): hub_errors says which
        except Exception as e:  # no route, DNS, proxy, timeout: whatever the HTTP client raises
            raise LocalEntryNotFoundError('the Hub could not be reached') from e
        return hf_hub_download(repo, filename, revision=revision)


def resolve_weights_file(source: str | Path, name: str) -> Path:
    """The safetensors file `source` names: the file itself, a folder holding `model.safetensors` (a Hub download or
    snapshot), or a Hugging Face cache (HF_HOME or its `hub/`) holding backbone `name`'s Hub repo."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"Backbone weights '{path}': no such file or folder.")
    if (path / WEIGHTS_NAME).is_file():
        return path / WEIGHTS_NAME
    hub = _hub_source(name)
    if hub is not None:
        repo, revision, filename = hub
        for cache in (path, path / 'hub'):
            found = try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision)
            if isinstance(found, str):
                return Path(found)
    looked_for = f", nor a Hugging Face cache holding '{hub[2]}' of '{hub[0]}'" if hub else ''
    raise FileNotFoundError(
        f"Backbone weights '{path}': the folder holds no {WEIGHTS_NAME}{looked_for}. Pass the .safetensors file of "
        f"backbone '{name}' itself."
    )


def _examples(keys: list[str], most: int = 3) -> str:
    more = f', ... ({len(keys)} in all)' if len(keys) > most else ''
    return ', '.join(keys[:most]) + more


def load_backbone_weights(model: nn.Module, source: str | Path, name: str) -> Path:
    """Load backbone `name`'s timm weights from `source` into the classifier-less `model`, strictly.

    The classifier's keys (the model was made with `num_classes=0`) and buffers the model recomputes (non-persistent,
    e.g. Swin's relative position index) are the only keys of the file that may be left over; every key of the
    model must be in the file with its shape. timm's own checkpoint filter of the model's family runs first, as in
    timm's loader. Returns the file loaded.
    """
    path = resolve_weights_file(source, name)
    if path.suffix != '.safetensors':
        raise ValueError(
            f"Backbone weights '{path}': not a .safetensors file. fgvc_zoo loads weights as safetensors only; convert "
            f'a trusted pickle with `fgvc-zoo convert-weights {path} {path.stem}.safetensors '
            f'--arch {name.split(".")[0]}`.'
        )
    state_dict: dict[str, Any] = load_file(str(path))
    filter_fn = getattr(sys.modules.get(type(model).__module__), 'checkpoint_filter_fn', None)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    classifier = model.pretrained_cfg.get('classifier') or ()
    prefixes = tuple(f'{c}.' for c in ((classifier,) if isinstance(classifier, str) else classifier))
    expected = model.state_dict()
    recomputed = {n for n, _ in model.named_buffers()} - set(expected)
    left_over = [k for k in state_dict if k not in expected and not k.startswith(prefixes or ('\0',))]
    unexpected = [k for k in left_over if k not in recomputed]
    missing = [k for k in expected if k not in state_dict]
    wrong = [
        f'{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}'
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        problems = [
            f'{len(missing)} missing ({_examples(missing)})' if missing else '',
            f'{len(unexpected)} unexpected ({_examples(unexpected)})' if unexpected else '',
            f'{len(wrong)} of another shape ({_examples(wrong)})' if wrong else '',
        ]
        hub = _hub_source(name)
        hint = f" The weights timm uses are '{hub[2]}' of Hub repo '{hub[0]}'." if hub else ''
        raise ValueError(
            f"Backbone weights '{path}' do not fit backbone '{name}': keys {'; '.join(p for p in problems if p)}. "
            f'They are the weights of another model (or of a version timm no longer reads).{hint}'
        )
    model.load_state_dict({k: v for k, v in state_dict.items() if k in expected}, strict=True)
    return path
