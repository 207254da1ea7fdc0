"""A state dict whose keys follow another naming, turned into a timm model's weights (`fgvc-zoo convert-weights`).

Where the names are known, a name map (source key -> timm key) renames them, and every timm key must be covered.
Otherwise the two state dicts are paired in order (both list stem, blocks, head, classifier) and every pair must
have the same shape; any difference in count or shape is refused, naming the first pair. Same-shape tensors can
still be swapped unnoticed, so the result is judged by what it does: `imagenet_top1` classifies the real ImageNet
validation photos that PyPI's `foolbox` ships (the label is in each file name).
"""

import json
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file

__all__ = ['read_state_dict', 'read_name_map', 'convert_state_dict', 'save_converted', 'imagenet_top1']


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file, or of a trusted torch pickle read with `weights_only=True` (a bare
    state dict, or one under 'state_dict' / 'model')."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weights '{path}': no such file.")
    if path.suffix == '.safetensors':
        return load_file(str(path))
    loaded: Any = torch.load(path, map_location='cpu', weights_only=True)
    for key in ('state_dict', 'model'):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"Weights '{path}': not a state dict of tensors (a mapping of names to tensors).")
    return dict(loaded)


def convert_state_dict(
    source: dict[str, torch.Tensor], architecture: str, name_map: dict[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """`source` under the names of timm's `architecture` (its whole state dict, classifier included), every tensor
    checked: by `name_map` (source key -> timm key) when given, else in order; refuses any count or shape mismatch."""
    target = timm.create_model(architecture).state_dict()
    if name_map is not None:
        unknown = [k for k in name_map if k not in source]
        wrong = [v for v in name_map.values() if v not in target]
        missing = [k for k in target if k not in set(name_map.values())]
        if unknown or wrong or missing:
            raise ValueError(
                f'The name map does not fit: {len(unknown)} source keys absent ({unknown[:3]}), {len(wrong)} names '
                f'{architecture} lacks ({wrong[:3]}), {len(missing)} of its keys unmapped ({missing[:3]}).'
            )
        pairs = [(src, dst) for src, dst in name_map.items()]
    else:
        if len(source) != len(target):
            raise ValueError(
                f'{architecture} has {len(target)} tensors but the source has {len(source)}: they cannot be paired in '
                f'order. Pass a name map (--name-map FILE.json, source key -> timm key).'
            )
        pairs = list(zip(source, target, strict=True))
    converted = {}
    for src, dst in pairs:
        if source[src].shape != target[dst].shape:
            raise ValueError(
                f'Cannot map {src} {tuple(source[src].shape)} onto {dst} {tuple(target[dst].shape)} of {architecture}: '
                f'the source is not a {architecture} (or its tensors come in another order: pass a name map).'
            )
        converted[dst] = source[src].contiguous()  # safetensors refuses views (the "non contiguous tensor" error)
    return converted


def save_converted(state_dict: dict[str, torch.Tensor], out: str | Path) -> Path:
    out = Path(out)
    if out.suffix != '.safetensors':
        raise ValueError(f"'{out}': the converted weights are written as safetensors: name the file .safetensors.")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state_dict, str(out))
    return out


def imagenet_top1(architecture: str, weights: str | Path) -> float:
    """Top-1 (%) of timm's `architecture` with `weights` on foolbox's 20 real ImageNet validation photos."""
    try:
        import foolbox  # noqa: F401  (only its data folder is read)
    except ImportError:
        raise ImportError('Checking converted weights reads the ImageNet photos of `pip install foolbox`.') from None
    from importlib.util import find_spec

    from PIL import Image

    folder = Path(find_spec('foolbox').submodule_search_locations[0]) / 'data'
    files = sorted(folder.glob('imagenet_*.jpg'))
    model = timm.create_model(architecture, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights))).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    images = torch.stack([transform(Image.open(f).convert('RGB')) for f in files])
    labels = torch.tensor([int(f.stem.split('_')[-1]) for f in files])
    with torch.no_grad():
        predicted = model(images).argmax(dim=1)
    return 100.0 * (predicted == labels).float().mean().item()


def read_name_map(path: str | Path) -> dict[str, str]:
    mapping = json.loads(Path(path).read_text())
    if not isinstance(mapping, dict):
        raise ValueError(f'--name-map {path}: expected a JSON object of source key -> timm key.')
    return {str(k): str(v) for k, v in mapping.items()}
