"""What every command that runs a model needs: the CPU thread policy, the device, the `key=value` / YAML option
syntax of `--model-args`, `--model-kwargs` and `--dataset-args`, and a model loaded for inference with the eval
transform of its own data config. Above the export format (it loads export folders), below training and inference.
"""

import ast
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
import yaml

from .data import create_transforms, resolve_fgvc_data_config
from .errors import UsageError
from .hub.folder import load_model, model_label_names

__all__ = [
    'cpu_threads',
    'set_cpu_threads',
    'resolve_device',
    'option_value',
    'parse_options',
    'parse_model_kwargs',
    'load_for_inference',
]


def cpu_threads(requested: int = 0, workers: int = 0) -> int:
    """torch threads for one process: `requested`, or else the cores this process may use over (the processes on
    this machine x the data workers of each), at least 1.

    torch starts one thread per core in every process; with several processes or data workers beside them, the
    threads fight over the cores (DP-Net trained 5x faster on a busy 2-core machine with one thread a process).
    """
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    processes = int(os.environ.get('LOCAL_WORLD_SIZE', '1'))
    return max(1, cores // (processes * max(1, workers)))


def set_cpu_threads(requested: int, workers: int) -> None:
    """`--threads`: a number wins; 0 leaves an explicit OMP_NUM_THREADS (torchrun sets 1) alone, else `cpu_threads`."""
    if requested < 0:
        raise UsageError(f'--threads {requested}: pass a number of threads, or 0 for the automatic choice.')
    if requested or 'OMP_NUM_THREADS' not in os.environ:
        torch.set_num_threads(cpu_threads(requested, workers))


def resolve_device(name: str) -> torch.device:
    """`auto`: the first of CUDA, MPS and CPU that this machine has; else the named device, which must exist."""
    if name == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        mps = getattr(torch.backends, 'mps', None)
        return torch.device('mps' if mps is not None and mps.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f'--device {name}: not a torch device (auto, cpu, cuda, cuda:1, mps, ...).') from e
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UsageError(f'--device {name}: this machine has no CUDA device; pass --device auto or cpu.')
    return device


# Commas outside brackets separate options, so that list and tuple values survive: 'region_sizes=[0.3,0.4],zoom=32'.
_OPTION_SEPARATOR = re.compile(r',(?![^\[\(\{]*[\]\)\}])')


def option_value(text: str) -> Any:
    """One option value: a Python literal (`(0.3, 0.4)`, `1e-2`, `'a'`), else YAML (`true`, `pred`, `[1, 2]`)."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return yaml.safe_load(text)


def parse_options(options: str | Sequence[str] | Mapping[str, Any] | None, flag: str) -> dict[str, Any]:
    """The one syntax of `--model-args`, `--model-kwargs`, `--dataset-args` and each head of `--head-args`.

    Either `key=value` pairs separated by commas (several words are joined with commas), or a YAML mapping, inline
    (`{num_regions: 4}`) or in a .yaml file; a mapping (from a recipe) passes through.
    """
    if options is None or isinstance(options, Mapping):
        return dict(options or {})
    text = options if isinstance(options, str) else ','.join(options)
    if not text.strip():
        return {}
    if Path(text).is_file() or '=' not in text or text.lstrip().startswith('{'):
        try:
            loaded = yaml.safe_load(Path(text).read_text() if Path(text).is_file() else text)
        except yaml.YAMLError as e:
            raise UsageError(f'{flag} {text!r}: not a YAML mapping ({e}).') from e
        if not isinstance(loaded, dict):
            raise UsageError(f"{flag} {text!r}: expected 'key=value,...' or a YAML mapping like '{{num_regions: 4}}'.")
        return loaded
    parsed = {}
    for item in _OPTION_SEPARATOR.split(text):
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise UsageError(f"{flag}: '{item}' is not key=value (e.g. 'num_regions=4,zoom_size=224').")
        parsed[key.strip()] = option_value(value)
    return parsed


def parse_model_kwargs(model_args: str | None, model_kwargs: Any = None) -> dict[str, Any]:
    """The model's options: `--model-kwargs`, then `--model-args` over them (same syntax, `parse_options`)."""
    return {**parse_options(model_kwargs, '--model-kwargs'), **parse_options(model_args, '--model-args')}


def load_for_inference(
    checkpoint: str | None = None,
    model_name: str | None = None,
    img_size: int | None = None,
    device: str = 'auto',
) -> tuple[nn.Module, Any, list[str] | None, dict[str, Any]]:
    """(model in eval mode on `device`, its eval transform, its class names or None, the data config).

    The model is `checkpoint` (an export folder, `hf-hub:ORG/NAME` or a registered tag, via `load_model`) or else
    `model_name` created with `pretrained=True`; the transform follows its data config at `img_size` if given.
    """
    if (checkpoint is None) == (model_name is None):
        raise UsageError('Pass exactly one of --checkpoint and --model.')
    torch_device = resolve_device(device)
    model = load_model(checkpoint) if checkpoint is not None else timm.create_model(model_name, pretrained=True)
    model = model.to(torch_device).eval()
    data_config = resolve_fgvc_data_config(model, img_size)
    transform = create_transforms(data_config, is_training=False)
    return model, transform, model_label_names(model), data_config
