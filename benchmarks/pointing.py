"""Pointing benchmark: does each head look at the part that decides the class?

On the synthetic fine-grained dataset (`fgvc_zoo.data.make_synthetic_fgvc`: classes differ only by a small glyph
placed at a random spot of an object on a cluttered image, and its box is known), every head is trained
briefly with the project's trainer, then measured on the val split:

- accuracy: top-1 (%), from `fgvc_zoo.inference.evaluate.evaluate`;
- pointing (%): share of val images whose box contains the part's centre; the box is LFD's top region, DP-Net's
  best box of the part that weighs most in the predicted class (V[pred, p] x part score, as `fgvc-zoo explain`
  draws it), IAGN's attended box, and for the plain backbone (LFD with `cam_baseline=True`: backbone + GAP + linear
  classifier, trained the same way) the box bounding its predicted class's CAM >= 0.5 x max (min-max scaled, like
  IAGN's box). Boxes are mapped back through the eval resize + centre crop into the original image's pixels;
- box area (%): the mean share of the model's view the box covers (a box covering everything always points);
- centre pointing (%): the same-size box put at the centre of the view, the baseline a box must beat.

    python benchmarks/pointing.py --out output/pointing       # defaults: < 10 min on 2 CPU cores
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fgvc_zoo.data import create_dataset, create_transforms, make_synthetic_fgvc, pointing_accuracy, read_part_boxes
from fgvc_zoo.hub import load_model
from fgvc_zoo.inference.evaluate import evaluate
from fgvc_zoo.inference.explain import view_geometry
from fgvc_zoo.models import Explanation

# What each entry trains: (model, --model-args). Sizes are cut down so that all four train in minutes on a CPU;
# DP-Net fine-tunes its backbone because a frozen randomly initialised backbone has nothing to find parts in, and its
# part box is one stride (32 px), as LFD's region is about a third of the input: at 96 px a 3-stride box is the image.
HEADS: dict[str, dict[str, str]] = {
    'lfd': dict(model='lfd', model_args='zoom_size=64'),
    'dpnet': dict(model='dpnet', model_args='freeze_backbone=false,part_box_cells=1'),
    'iagn': dict(model='iagn', model_args='mid_channels=64,feature_channels=128,hidden_features=64'),
    'plain_cam': dict(model='lfd', model_args='cam_baseline=true'),
}


def cam_boxes(cams: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B, H, W) maps -> (B, 4) xyxy pixel boxes bounding the pixels >= threshold after min-max scaling.

    Pixel i covers [i, i + 1), so a box ends one past its last pixel. A constant map gives the whole map.
    """
    low = cams.flatten(1).amin(dim=1).view(-1, 1, 1)
    high = cams.flatten(1).amax(dim=1).view(-1, 1, 1)
    scaled = (cams - low) / (high - low).clamp_min(1e-12)
    mask = (scaled >= threshold) | (high == low)
    rows, cols = mask.any(dim=2), mask.any(dim=1)
    y1 = rows.int().argmax(dim=1)
    y2 = rows.shape[1] - rows.flip(1).int().argmax(dim=1)
    x1 = cols.int().argmax(dim=1)
    x2 = cols.shape[1] - cols.flip(1).int().argmax(dim=1)
    return torch.stack([x1, y1, x2, y2], dim=1).float()


def pointing_boxes(head: str, exp: Explanation) -> torch.Tensor:
    """The one (B, 4) input-pixel box per image that each head is judged by (see the module docstring)."""
    if head in ('lfd', 'iagn'):
        return exp.boxes[:, 0]
    if head == 'dpnet':
        weight = exp.extras['part_participation'][exp.labels] * exp.scores
        return exp.boxes[torch.arange(len(weight)), weight.argmax(dim=1)]
    if head == 'plain_cam':
        return cam_boxes(exp.heatmaps['predicted_class'][:, 0])
    raise ValueError(f"unknown head '{head}': one of {list(HEADS)}")


def centred(boxes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Boxes of the same sizes moved to the centre of a width x height view."""
    half = (boxes[:, 2:] - boxes[:, :2]) / 2
    centre = torch.tensor([width / 2, height / 2])
    return torch.cat([centre - half, centre + half], dim=1)


def train(head: str, data_dir: str, out: Path, args: argparse.Namespace) -> Path:
    """Train one entry of HEADS with `python -m fgvc_zoo.train` (a fresh process: a fresh Accelerate state)."""
    spec = HEADS[head]
    command = [
        sys.executable,
        '-m',
        'fgvc_zoo.train',
        '--model',
        spec['model'],
        '--backbone',
        args.backbone,
        '--model-args',
        spec['model_args'],
        '--data-dir',
        data_dir,
        '--img-size',
        str(args.img_size),
        '--epochs',
        str(args.epochs),
        '--batch-size',
        str(args.batch_size),
        '--lr',
        str(args.lr),
        '--backbone-lr-mult',
        '1',
        '--sched',
        'cosine',
        '--scale',
        '0.6',
        '1.0',
        '--workers',
        '0',
        '--seed',
        str(args.seed),
        '--cpu',
        '--output',
        str(out),
        '--keep-checkpoints',
        '1',
        '--eval-every',
        str(args.epochs),
    ]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / 'train.log', 'w') as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f'training {head} failed (exit {done.returncode}); its log: {out / "train.log"}')
    return out


@torch.no_grad()
def measure(head: str, folder: Path, data_dir: str, img_size: int, batch_size: int) -> dict[str, float]:
    """Top-1, pointing, box area and centre-box pointing (%) of a trained folder on the val split."""
    model = load_model(str(folder)).eval()
    transform = create_transforms(model, is_training=False, img_size=img_size)
    accuracy = evaluate(model, create_dataset(data_dir, 'val', transform=transform), batch_size=batch_size)
    images = create_dataset(data_dir, 'val')
    parts = {os.path.realpath(path): box for path, box in read_part_boxes(data_dir).items()}
    boxes, centre_boxes, part_boxes, areas = [], [], [], []
    for start in range(0, len(images), batch_size):
        indices = range(start, min(start + batch_size, len(images)))
        pil = [images.load(i) for i in indices]
        exp = model.explain(torch.stack([transform(image) for image in pil]))
        chosen = pointing_boxes(head, exp)
        height, width = exp.heatmaps[next(iter(exp.heatmaps))].shape[-2:]
        areas += ((chosen[:, 2:] - chosen[:, :2]).prod(dim=1) / (width * height)).tolist()
        for i, image, box, centre in zip(indices, pil, chosen, centred(chosen, width, height), strict=False):
            geometry = view_geometry(transform, image.size)
            boxes.append(geometry.to_original(box.numpy())[0])
            centre_boxes.append(geometry.to_original(centre.numpy())[0])
            part_boxes.append(parts[os.path.realpath(images.samples[i][0])])
    return {
        'top1': accuracy['metrics']['top1'],
        'pointing': 100 * pointing_accuracy(boxes, part_boxes),
        'box_area': 100 * sum(areas) / len(areas),
        'centre_pointing': 100 * pointing_accuracy(centre_boxes, part_boxes),
    }


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children: what the run costs, whatever else the
    machine is doing at the same time (wall time on a shared machine is not)."""
    usages = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(usage.ru_utime + usage.ru_stime for usage in usages)


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    rows = [
        '| head | top-1 (%) | pointing (%) | box area (% of view) | centre box pointing (%) | train wall / CPU (s) |',
        '|---|---|---|---|---|---|',
    ]
    for head, r in results.items():
        rows.append(
            f'| {head} | {r["top1"]:.1f} | {r["pointing"]:.1f} | {r["box_area"]:.1f} | '
            f'{r["centre_pointing"]:.1f} | {r["train_seconds"]:.0f} / {r["train_cpu_seconds"]:.0f} |'
        )
    return '\n'.join(rows)


def main(argv: list[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='output/pointing', help='folder for the data, the trained heads, results')
    parser.add_argument('--heads', nargs='+', default=list(HEADS), choices=list(HEADS), help='entries to run')
    parser.add_argument('--backbone', default='test_resnet', help='timm backbone, randomly initialised')
    parser.add_argument('--num-classes', type=int, default=4, help='glyph classes')
    parser.add_argument('--train-per-class', type=int, default=32)
    parser.add_argument('--val-per-class', type=int, default=20)
    parser.add_argument('--image-size', type=int, default=96, help='side of the generated images')
    parser.add_argument('--img-size', type=int, default=96, help='model input side')
    parser.add_argument('--epochs', type=int, default=6)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--lr', type=float, default=0.05)
    parser.add_argument('--seed', type=int, default=0, help='seed of the data and of the training runs')
    args = parser.parse_args(argv)

    start = time.time()
    out = Path(args.out)
    data_dir = str((out / 'data').resolve())
    make_synthetic_fgvc(
        data_dir,
        num_classes=args.num_classes,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        image_size=args.image_size,
        seed=args.seed,
    )
    results: dict[str, dict[str, Any]] = {}
    for head in args.heads:
        head_start, cpu_start = time.time(), _cpu_seconds()
        print(f'training {head} (log: {out / head / "train.log"})', flush=True)
        folder = train(head, data_dir, out / head, args)
        results[head] = {'train_seconds': time.time() - head_start, 'train_cpu_seconds': _cpu_seconds() - cpu_start}
        results[head].update(measure(head, folder, data_dir, args.img_size, args.batch_size))
        print(f'{head}: ' + ', '.join(f'{k}={v:.1f}' for k, v in results[head].items()), flush=True)
    total, total_cpu = time.time() - start, _cpu_seconds()
    table = markdown_table(results)
    print(
        f'\n{table}\n\ntotal {total:.0f} s wall, {total_cpu:.0f} s CPU (this process and the trainers) on '
        f'{os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {platform.platform()}'
    )
    summary = {
        'args': {**vars(args), 'out': out.name},  # no machine path in the record
        'results': results,
        'total_seconds': total,
        'total_cpu_seconds': total_cpu,
        'torch_threads': torch.get_num_threads(),
        'machine': platform.platform(),
        'cpu_count': os.cpu_count(),
    }
    (out / 'pointing_results.json').write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
