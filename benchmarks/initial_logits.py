"""How far from chance each method's classifier starts: the logits of a freshly built model (backbone with the
EfficientNet-Lite0 ImageNet weights, new classifier) on training images of a compare run, and their cross-entropy
against the true labels, beside ln(num_classes), the loss of a uniform guess. With a budget of an epoch or two this
start decides much of the race (see the compare reports in this folder).

    python benchmarks/initial_logits.py --data /path/to/compare_output/data --img-size 64 --json out.json
"""

import argparse
import json
import math
from pathlib import Path

import timm
import torch
from lite0_weights import ARCH, backbone_weights_file
from PIL import Image

import fgvc_zoo  # noqa: F401  (registers the heads with timm)

# The --model-args of benchmarks/compare.py at 64 px.
HEAD_ARGS = {
    'lfd': dict(zoom_size=32, region_sizes=[0.36, 0.5]),
    'dpnet': {},
    'iagn': dict(mid_channels=128, feature_channels=256, hidden_features=256),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', required=True, help='a folder of class folders under train/ (a compare run data/)')
    parser.add_argument('--img-size', type=int, default=64)
    parser.add_argument('--per-class', type=int, default=10)
    parser.add_argument('--json', help='write the numbers here')
    args = parser.parse_args()
    classes = sorted(p.name for p in (Path(args.data) / 'train').iterdir())
    files = [
        (f, k)
        for k, c in enumerate(classes)
        for f in sorted((Path(args.data) / 'train' / c).iterdir())[: args.per_class]
    ]
    weights = backbone_weights_file()
    models = {'plain': timm.create_model(ARCH, pretrained=True, num_classes=len(classes),
                                         pretrained_cfg_overlay=dict(file=str(weights)))}  # fmt: skip
    for head, kwargs in HEAD_ARGS.items():
        models[head] = timm.create_model(
            head, backbone=ARCH, backbone_weights=weights, num_classes=len(classes), **kwargs
        )
    results = {}
    for name, model in models.items():
        config = timm.data.resolve_data_config({'input_size': (3, args.img_size, args.img_size)}, model=model)
        transform = timm.data.create_transform(**config)
        x = torch.stack([transform(Image.open(f).convert('RGB')) for f, _ in files])
        target = torch.tensor([k for _, k in files])
        with torch.no_grad():
            out = model.eval()(x)
        logits = out if torch.is_tensor(out) else out.logits
        results[name] = dict(
            logit_std=logits.std().item(), cross_entropy=torch.nn.functional.cross_entropy(logits, target).item()
        )
        std, ce = results[name]['logit_std'], results[name]['cross_entropy']
        print(f'{name:6s} logit std {std:6.3f}  cross-entropy {ce:6.3f}')
    print(f'uniform guess: ln({len(classes)}) = {math.log(len(classes)):.3f}')
    if args.json:
        Path(args.json).write_text(
            json.dumps(dict(results, chance=math.log(len(classes)), images=len(files)), indent=1)
        )


if __name__ == '__main__':
    torch.manual_seed(0)
    main()
