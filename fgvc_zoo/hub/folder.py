"""An export folder, written and read: `save_pretrained`, `load_model`, `write_card`, `check_export_folder`.

An exported folder is what timm itself reads from a Hub repo: `model.safetensors`, `config.json` in timm's format
(architecture, num_classes, label_names, model_args, pretrained_cfg) and `README.md`, the model card. timm's
`save_for_hf` writes the first two; the card is `fgvc_zoo.hub.card.model_card`, from the template
that ships in the package filled with huggingface_hub's `ModelCardData` front matter, the numbers of the trainer's
`results.json` and the head's own `paper`.

Provenance is recorded, not guessed: `build_fgvc_model` notes on the model which weights `pretrained=True` really
loaded (`model.pretrained_weights`), the trainer copies that into `results.json`, and only weights loaded from a Hub
repo become the card's `base_model`.

Weights are safetensors only: every config we write pins `hf_hub_filename='model.safetensors'`, so timm never
falls back to a pickle (`pytorch_model.bin`), and `load_model` refuses folders and repos that hold only pickles.
"""

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from timm.models import save_for_hf
from timm.models._hub import hf_split

from ..models import list_heads, split_model_name
from ..models.hub_io import WEIGHTS_NAME, hub_errors, weights_record
from .card import NOT_RECORDED, RESULTS_NAME, base_model, model_card
from .onnx import ONNX_NAME

__all__ = [
    'CONFIG_NAME',
    'CARD_NAME',
    'PUSHED_FILES',
    'IMPORT_HINT',
    'save_pretrained',
    'load_model',
    'check_export_folder',
    'model_label_names',
    'pretrained_weights_of',
    'describe_pretrained',
    'share_file',
    'read_results',
    'read_label_names',
    'write_card',
]

CONFIG_NAME = 'config.json'
CARD_NAME = 'README.md'
PICKLE_SUFFIXES = ('.bin', '.pth', '.pt', '.pth.tar', '.pkl', '.ckpt')
# Files a push uploads: never a pickle, never a training checkpoint.
PUSHED_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, RESULTS_NAME, ONNX_NAME)
# Keyword arguments timm's factory passes along that describe where weights come from, not the architecture.
# `backbone_weights` is a local path: timm's factory keeps it in `model._model_args`, which `save_for_hf` exports.
RUNTIME_ARGS = (
    'cache_dir',
    'pretrained_cfg',
    'pretrained_cfg_overlay',
    'pretrained_model_args',
    'device',
    'dtype',
    'backbone_weights',
)
IMPORT_HINT = '`pip install fgvc-zoo` and `import fgvc_zoo` before `timm.create_model` (it registers the heads)'


def _export_model_args(model: torch.nn.Module) -> dict[str, Any]:
    model_args = getattr(model, 'model_args', None)
    architecture = getattr(model, 'pretrained_cfg', {}).get('architecture', '')
    if model_args is None and architecture and split_model_name(architecture).head is None:
        return {}  # a plain timm classifier: timm's factory records its own arguments
    if model_args is None:
        raise ValueError(
            f'{type(model).__name__} has no `model_args`: build it with timm.create_model on an fgvc_zoo head '
            f'(build_fgvc_model records them), or export it with timm.models.save_for_hf.'
        )
    # JSON turns tuples into lists; every head converts sequences back on construction.
    return {k: v for k, v in model_args.items() if k not in RUNTIME_ARGS and k != 'num_classes'}


def _pretrained_weights(model: torch.nn.Module, results: dict[str, Any] | None) -> dict[str, str] | None | object:
    """What the weights started from: the trainer's record in results.json, else the model's own (set at build)."""
    if results and 'pretrained_weights' in results:
        return results['pretrained_weights']
    return getattr(model, 'pretrained_weights', NOT_RECORDED)


def pretrained_weights_of(model: torch.nn.Module, pretrained: bool) -> dict[str, str] | None:
    """What `create_model(..., pretrained=pretrained)` loaded into `model` (None: nothing, random initialisation).

    A head carries its own record (`build_fgvc_model` sets `pretrained_weights`); a plain timm classifier loads
    its pretrained_cfg's weights, less the classifier when its number of classes differs.
    """
    if hasattr(model, 'pretrained_weights'):
        return model.pretrained_weights
    if not pretrained:
        return None
    cfg = dict(model.pretrained_cfg)
    dropped = cfg.get('num_classes') not in (None, model.num_classes)
    return weights_record(cfg, 'model except classifiers' if dropped else 'model')


def share_file(path: str | os.PathLike) -> None:
    """Give a written file the mode a plain `open()` would (0644 under umask 022): safetensors writes 0600.

    Teammates on a shared cluster need to read exported weights and checkpoints; the umask still decides.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_pretrained(
    model: torch.nn.Module,
    out_dir: str | os.PathLike,
    label_names: Sequence[str] | None = None,
    results: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    data_config: dict[str, Any] | None = None,
) -> Path:
    """Write `model.safetensors`, timm's `config.json` and the `README.md` model card into `out_dir`.

    `results` is the trainer's results.json (metrics, resolved config); `recipe` the resolved training config when
    `results` does not carry it; `data_config` the preprocessing the weights were trained with (e.g. an input size
    other than the cfg's 448), recorded in the config's pretrained_cfg. Returns the folder.
    """
    out_dir = Path(out_dir)
    if label_names is not None and len(label_names) != model.num_classes:
        raise ValueError(f'{len(label_names)} label_names for a model with num_classes={model.num_classes}.')
    model_config: dict[str, Any] = dict(
        pretrained_cfg=dict(hf_hub_filename=WEIGHTS_NAME),
        library='fgvc_zoo',
        requires=IMPORT_HINT,
    )
    weights = _pretrained_weights(model, results)
    if weights is not NOT_RECORDED:
        model_config['pretrained_weights'] = weights  # None: trained from random initialisation
    if base_model(weights):
        model_config['base_model'] = base_model(weights)
    if label_names is not None:
        model_config['label_names'] = list(label_names)
    pool = getattr(getattr(model, 'backbone', None), 'pool', None)
    if isinstance(pool, str):  # the backbone's own pool, which decides the map a head reads (the card says it)
        model_config['backbone_pool'] = pool
        if model.backbone.removed:  # its layers after the map the head reads (MobileNetV3's conv_head)
            model_config['backbone_removed'] = list(model.backbone.removed)
    # timm's save_for_hf exports the factory's `_model_args` too: drop the runtime ones (a local path) while it writes.
    factory_args = getattr(model, '_model_args', None)
    if factory_args is not None:
        model._model_args = {k: v for k, v in factory_args.items() if k not in RUNTIME_ARGS}
    if not all(t.is_contiguous() for t in model.state_dict().values()):
        # channels-last weights (train --channels-last): safetensors writes only contiguous tensors.
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    try:
        save_for_hf(
            model,
            str(out_dir),
            model_config=model_config,
            model_args=_export_model_args(model),
            data_config=data_config,
            safe_serialization=True,
        )
    finally:
        if factory_args is not None:
            model._model_args = factory_args
    share_file(out_dir / WEIGHTS_NAME)
    config = json.loads((out_dir / CONFIG_NAME).read_text())
    (out_dir / CARD_NAME).write_text(model_card(config, results=results, recipe=recipe))
    return out_dir


def _is_pickle(path: Path) -> bool:
    return any(path.name.endswith(suffix) for suffix in PICKLE_SUFFIXES)


def check_export_folder(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"'{folder}': no such folder. Pass a trainer's output folder (its run writes {CONFIG_NAME} when it ends) "
            f'or an export folder.'
        )
    if not (folder / CONFIG_NAME).is_file():
        if (folder / 'checkpoints').is_dir():  # the trainer's checkpoint folder: a run that has not ended
            how = f'its run has not ended: `fgvc-zoo train --output {folder} --resume` finishes it and exports it'
        else:
            how = f'write one from a weights file with `fgvc-zoo export {folder} --model NAME --checkpoint FILE`'
        raise FileNotFoundError(f"'{folder}' has no {CONFIG_NAME}, so it is not an export: {how}.")
    if not (folder / WEIGHTS_NAME).is_file():
        pickles = sorted(p.name for p in folder.iterdir() if _is_pickle(p))
        found = f' (it holds {", ".join(pickles)}, which fgvc_zoo never loads)' if pickles else ''
        raise FileNotFoundError(
            f"'{folder}' has no {WEIGHTS_NAME}{found}. Export safetensors weights with "
            f'`fgvc-zoo export {folder} --model NAME --checkpoint FILE`.'
        )
    return json.loads((folder / CONFIG_NAME).read_text())


def _check_registered(config: dict[str, Any], source: str) -> None:
    architecture = config.get('architecture')
    if not architecture or not timm.is_model(architecture):
        raise RuntimeError(
            f"{source} holds a '{architecture}' model, which is not registered with timm. Run {IMPORT_HINT}; "
            f'this fgvc_zoo registers the heads {", ".join(list_heads())} (a newer architecture needs '
            f'`pip install -U fgvc-zoo`).'
        )


def _hub_config(repo: str) -> dict[str, Any]:
    repo_id, revision = hf_split(repo)
    with hub_errors(repo_id, CONFIG_NAME):
        return json.loads(Path(hf_hub_download(repo_id, CONFIG_NAME, revision=revision)).read_text())


def _load_hub(repo: str, expected_architecture: str | None = None, **kwargs: Any) -> torch.nn.Module:
    config = _hub_config(repo)
    if expected_architecture is not None and config.get('architecture') != expected_architecture:
        raise ValueError(
            f"Hub repo '{repo}' holds a '{config.get('architecture')}' model with num_classes="
            f"{config.get('num_classes')}, not the '{expected_architecture}' its tag names: the repo belongs to "
            f"another architecture. Load it as timm.create_model('hf-hub:{repo}', pretrained=True), or fix the "
            f"tag's hf_hub_id."
        )
    _check_registered(config, f"Hub repo '{repo}'")
    overlay = dict(kwargs.pop('pretrained_cfg_overlay', None) or {}, hf_hub_filename=WEIGHTS_NAME)
    with hub_errors(repo):
        return timm.create_model(f'hf-hub:{repo}', pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)


def load_model(path_or_repo: str, **kwargs: Any) -> torch.nn.Module:
    """Load a published or exported model with its weights, in eval mode.

    `path_or_repo` is a local export folder, `hf-hub:ORG/NAME[@revision]`, or a registered tag
    (`lfd_resnet50.cub_200_2011`). Safetensors only. `kwargs` go to `timm.create_model` (e.g. `num_classes`
    to re-initialise the heads over the pretrained backbone).
    """
    if path_or_repo.startswith('hf-hub:'):
        model = _load_hub(path_or_repo[len('hf-hub:') :], **kwargs)
    elif Path(path_or_repo).is_dir():
        folder = Path(path_or_repo)
        config = check_export_folder(folder)
        _check_registered(config, f"'{folder}'")
        model = timm.create_model(f'local-dir:{folder}', pretrained=True, **kwargs)
    elif '.' in path_or_repo and (cfg := timm.models.get_pretrained_cfg(path_or_repo)) is not None:
        if cfg.hf_hub_id and cfg.hf_hub_id.split('/')[0] != 'timm':
            # Our tag: load through its repo's config.json, which carries the label names and model_args.
            model = _load_hub(cfg.hf_hub_id, expected_architecture=cfg.architecture, **kwargs)
        else:
            model = timm.create_model(path_or_repo, pretrained=True, **kwargs)
    else:
        raise ValueError(
            f"'{path_or_repo}' is not an export folder (no such directory), nor 'hf-hub:ORG/NAME' (a Hub repo needs "
            f"the 'hf-hub:' prefix), nor a registered pretrained tag (see timm.list_pretrained('lfd*')). If it is a "
            f'tag of ours, {IMPORT_HINT}.'
        )
    return model.eval()


def describe_pretrained(name: str) -> str:
    """What `pretrained=True` loads for a registered name (the tag's own weights, or the backbone's), in words."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None and cfg.hf_hub_id:
        return f'published weights: hf-hub:{cfg.hf_hub_id}'
    _, backbone, tag = split_model_name(name)
    if backbone is None:  # a generic head
        return "any timm backbone (backbone=...): pretrained=True loads the backbone's default weights"
    backbone_cfg = timm.models.get_pretrained_cfg(f'{backbone}.{tag}' if tag else backbone)
    hub_id = getattr(backbone_cfg, 'hf_hub_id', None)
    return f'backbone weights {hub_id}, head from random init' if hub_id else 'no weights'


def model_label_names(model: torch.nn.Module, download: bool = False) -> list[str] | None:
    """The class names of a loaded model: its pretrained cfg's, else its Hub repo's config.json from the local Hub
    cache (the weights' download put it there), fetched from the Hub only with `download=True`."""
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    if cfg.get('num_classes') not in (None, model.num_classes):
        return None  # heads were re-initialised for other classes
    names = cfg.get('label_names')
    if names is None and cfg.get('hf_hub_id') and cfg.get('source') != 'hf-hub':
        repo_id, revision = hf_split(cfg['hf_hub_id'])
        if download:
            names = _hub_config(cfg['hf_hub_id']).get('label_names')
        elif isinstance(cached := try_to_load_from_cache(repo_id, CONFIG_NAME, revision), str):
            names = json.loads(Path(cached).read_text()).get('label_names')
    return list(names) if names is not None else None


def read_results(folder: Path) -> dict[str, Any]:
    path = folder / RESULTS_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def write_card(folder: str | os.PathLike, repo_id: str | None = None) -> Path:
    """(Re-)write `folder/README.md` from its config.json and results.json (if any)."""
    folder = Path(folder)
    config = check_export_folder(folder)
    card_path = folder / CARD_NAME
    card_path.write_text(model_card(config, results=read_results(folder), repo_id=repo_id))
    return card_path


def read_label_names(path: str | None) -> list[str] | None:
    if path is None:
        return None
    text = Path(path).read_text()
    return json.loads(text) if path.endswith('.json') else [line.strip() for line in text.splitlines() if line.strip()]
