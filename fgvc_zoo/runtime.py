"""What every command that runs a model needs: the CPU thread policy, the device, the `key=value` / YAML option
syntax of `--model-args`, `--model-kwargs` and `--dataset-args`, and a model loaded for inference with the eval
transform of its own data config. Above the export format (it loads export folders), below training and inference.
"""

import ast
import ctypes
import gc
import os
import platform
import re
import resource
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
    'split_named_options',
    'parse_model_kwargs',
    'load_for_inference',
    'PeakMemory',
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


def split_named_options(text: str | None, flag: str, names: Sequence[str]) -> dict[str, str]:
    """The one syntax of options by name, `--head-args` (bench) and `--method-args` (compare):
    'NAME:key=value,key=[0.3,0.4];NAME2:key=value' -> {NAME: 'key=value,key=[0.3,0.4]', NAME2: 'key=value'}, each
    name one of `names` and each part in the syntax of `--model-args` (checked here with `parse_options`; a caller
    that hands them on as `--model-args` keeps the text)."""
    split: dict[str, str] = {}
    for chunk in filter(None, (part.strip() for part in (text or '').split(';'))):
        name, sep, options = chunk.partition(':')
        if not sep or name not in names or not options:
            raise UsageError(f"{flag} '{chunk}': write NAME:key=value,... with NAME one of {', '.join(names)}.")
        parse_options(options, f'{flag} {name}')
        split[name] = f'{split[name]},{options}' if name in split else options
    return split


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


class PeakMemory:
    """The peak memory of the work between `start()` and `read()`: one meter for `fgvc-zoo bench` and `compare`.

    CUDA: torch's max allocated bytes on the device. CPU on Linux: the kernel's peak RSS (VmHWM), whose counter
    `start` resets after returning freed heap pages to the OS (without `malloc_trim`, pages earlier work freed would
    stay resident and hide this work's growth); torch's CPU allocations are invisible to tracemalloc. CPU elsewhere:
    the process's peak RSS since it started. `read()` is the absolute peak, `read(above_start=True)` the peak above
    the memory at `start` (what the work added); `kind` says what was measured, for a report to state.
    """

    def __init__(self, device: str | torch.device = 'cpu'):
        self.device = torch.device(device)
        self.cuda = self.device.type == 'cuda'
        self.resettable = self.cuda or os.path.exists('/proc/self/clear_refs')
        self.before = 0.0

    @property
    def kind(self) -> str:
        if self.cuda:
            return 'CUDA max_memory_allocated'
        if self.resettable:
            return 'peak RSS of the process (VmHWM, reset before)'
        return 'peak RSS of the process since it started'

    def start(self) -> 'PeakMemory':
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device) / 2**20
        elif self.resettable:
            gc.collect()
            if platform.system() == 'Linux':
                ctypes.CDLL('libc.so.6').malloc_trim(0)
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')  # resets VmHWM
            self.before = _status_mb('VmRSS')
        return self

    def read(self, above_start: bool = False) -> float:
        """The peak (MiB) since `start`; with `above_start`, less the memory then."""
        if self.cuda:
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.resettable:
            peak = _status_mb('VmHWM')
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak - self.before if above_start else peak


def _status_mb(field_name: str) -> float:
    with open('/proc/self/status') as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith(field_name + ':'))
    return kib / 2**10
