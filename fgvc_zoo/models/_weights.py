"""A timm backbone's ImageNet weights from a local file, a local Hub cache, or the Hub: never a long silent wait.

`pretrained=True` on a backbone whose weights live on the Hugging Face Hub takes `model.safetensors` from the local
Hub cache when it is there (no network at all), else downloads it, but first asks the Hub once with a short timeout:
with `HF_HUB_OFFLINE=1` or no route to the Hub (a cluster's compute nodes) it fails at once, naming the repo, the file
and the two ways out, instead of huggingface_hub's minute of retries. `backbone_weights=` / `--backbone-weights`
loads the same file from a path. Either way the keys are checked strictly against the backbone.
"""

import sys
from pathlib import Path
from typing import Any

import timm
import torch.nn as nn
from huggingface_hub import constants as hf_constants
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
from safetensors.torch import load_file
from timm.models._hub import hf_split

from ._hub import WEIGHTS_NAME, hub_errors, local_weights_record

__all__ = [
    'WEIGHTS_NAME',
    'HUB_PROBE_TIMEOUT',
    'hub_weights_file',
    'resolve_weights_file',
    'load_backbone_weights',
    'local_weights_record',
]

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
