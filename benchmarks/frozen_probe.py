"""Does the frozen ImageNet map carry the synthetic glyph? Probes trained to convergence on cached features.

DP-Net keeps its backbone frozen (the paper), so it can only be as good as what the frozen map holds and what its
head can learn from it in the budget. This script separates the two on `compare.py`'s synthetic set: it caches
the frozen EfficientNet-Lite0 final map (eval transform, no augmentation) of the training and val images once,
then trains on the cache, for many more steps than the comparison's budget,

- `gap_linear`: a linear classifier on the average-pooled map (a frozen-backbone plain fine-tune);
- `max_linear`: a linear classifier on the max-pooled map (where a small part survives pooling);
- `dpnet`: DP-Net's own head (part detectors U, classifier V and its constraints at their defaults);
- `dpnet_ce_only`: the same head with every constraint switched off, `dpnet_no_<term>` with one switched off, and
  `dpnet_w_assign_<w>` with C_Assign at other weights.

Each probe gets the comparison's optimiser (SGD, momentum 0.9, weight decay 5e-4) and its own lr sweep; val top-1
(val is carved from the training images, as in `compare.py`; test is not read) is logged every `--log-every`
epochs, so the curve says whether the comparison's few steps were too few or the features too poor.

    python benchmarks/frozen_probe.py --json benchmarks/frozen_probe.json
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from compare import DATASETS, dataset_views
from lite0_weights import ARCH, CACHE, backbone_args, backbone_weights_file


@torch.no_grad()
def cached_maps(model: nn.Module, root: Path, split: str, img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen backbone's final map (N, D, h, w) and the labels of one split, in eval mode."""
    from fgvc_zoo.data import create_dataset, create_transforms

    dataset = create_dataset(str(root), split, transform=create_transforms(model, is_training=False, img_size=img_size))
    loader = torch.utils.data.DataLoader(dataset, batch_size=32)
    maps, labels = zip(*[(model.backbone(x), y) for x, y in loader], strict=True)
    return torch.cat(maps), torch.cat(labels)


def probe_logits(name: str, head: nn.Module, maps: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A probe's logits on cached maps and its constraint terms (DP-Net's, weighted by the model's own weights)."""
    if name == 'gap_linear':
        return head(maps.mean(dim=(2, 3))), {}
    if name == 'max_linear':
        return head(maps.amax(dim=(2, 3))), {}
    from fgvc_zoo.layers.parts import part_scores

    scores = part_scores(maps, head.parts.weight)
    terms = head.constraint_losses(scores)
    weights = {'perp': head.w_perp, 'assign': head.w_assign, 'cs': head.w_cs}
    return head.head(head._bag_of_parts(maps, scores)), {k: weights[k] * v for k, v in terms.items()}


# probe -> the DP-Net constraint weights it overrides (the linear probes have none).
PROBES: dict[str, dict[str, float]] = {
    'gap_linear': {},
    'max_linear': {},
    'dpnet': {},
    'dpnet_ce_only': dict(w_perp=0.0, w_assign=0.0, w_cs=0.0),
    'dpnet_no_perp': dict(w_perp=0.0),
    'dpnet_no_assign': dict(w_assign=0.0),
    'dpnet_no_cs': dict(w_cs=0.0),
    **{f'dpnet_w_assign_{w:g}': dict(w_assign=w) for w in (0.001, 0.003, 0.01, 0.03)},
}


def top_part_share(head: nn.Module, maps: torch.Tensor) -> float:
    """The share of all regions whose softmax over parts C_Assign sharpens goes to the one most common part: 1 / P
    for parts that split the regions evenly, 1 when one part takes every region (C_Assign's trivial minimum)."""
    from fgvc_zoo.layers.parts import part_scores

    winners = part_scores(maps, head.parts.weight).argmax(dim=1).flatten()
    return torch.bincount(winners, minlength=head.num_parts).max().item() / winners.numel()


def make_head(name: str, dpnet: nn.Module, num_classes: int) -> nn.Module:
    import copy

    if name in ('gap_linear', 'max_linear'):
        return nn.Linear(dpnet.region_dim, num_classes)
    head = copy.deepcopy(dpnet)
    head.reset_classifier(num_classes)
    for weight, value in PROBES[name].items():
        setattr(head, weight, value)
    del head.backbone  # the cache stands in for it
    return head


def train_probe(name: str, dpnet: nn.Module, data: dict, lr: float, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    head = make_head(name, dpnet, args.num_classes)
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    train_maps, train_labels = data['train']
    curve = []
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(train_labels))
        for start in range(0, len(order), args.batch_size):
            index = order[start : start + args.batch_size]
            logits, terms = probe_logits(name, head, train_maps[index])
            loss = F.cross_entropy(logits, train_labels[index]) + sum(terms.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch % args.log_every == 0 or epoch == args.epochs:
            with torch.no_grad():
                row = dict(epoch=epoch, steps=epoch * -(-len(order) // args.batch_size))
                for split, (maps, labels) in data.items():
                    logits, terms = probe_logits(name, head, maps)
                    row[f'{split}_ce'] = F.cross_entropy(logits, labels).item()
                    row[f'{split}_top1'] = 100.0 * (logits.argmax(1) == labels).float().mean().item()
                    row |= {f'{split}_{k}': v.item() for k, v in terms.items()} if split == 'train' else {}
                    if name.startswith('dpnet'):
                        row[f'{split}_top_part_share'] = top_part_share(head, maps)
                curve.append(row)
    return dict(probe=name, lr=lr, curve=curve, final_val_top1=curve[-1]['val_top1'])


def markdown(report: dict) -> str:
    """Val top-1 per probe and lr at epoch 4 (the comparison's 160 steps) and at the end; the top part share."""
    by_probe: dict[str, dict[float, dict]] = {}
    for run in report['runs']:
        by_probe.setdefault(run['probe'], {})[run['lr']] = run
    lrs = sorted({run['lr'] for run in report['runs']})
    last = report['optimiser']['epochs']
    lines = [
        f'| probe | val top-1 at epoch 4, lr {" / ".join(f"{lr:g}" for lr in lrs)} | at epoch {last} '
        f'| top part share at epoch {last} |',
        '|---|---|---|---|',
    ]
    for name, runs in by_probe.items():
        curves = [runs[lr]['curve'] for lr in lrs if lr in runs]
        early = ' / '.join(f'{next(r["val_top1"] for r in c if r["epoch"] == 4):.1f}' for c in curves)
        final = ' / '.join(f'{c[-1]["val_top1"]:.1f}' for c in curves)
        share = ' / '.join(f'{c[-1]["train_top_part_share"]:.2f}' for c in curves) if name.startswith('dpnet') else ''
        lines.append(f'| {name} | {early} | {final} | {share} |')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    import timm

    import fgvc_zoo  # noqa: F401  (registers the heads)

    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--probes', nargs='+', default=list(PROBES), choices=list(PROBES))
    parser.add_argument('--lrs', type=float, nargs='+', default=[0.003, 0.01, 0.03])
    parser.add_argument('--epochs', type=int, default=20)
    parser.add_argument('--log-every', type=int, default=2)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--work-dir', default=str(CACHE / 'compare'))
    parser.add_argument('--summary-only', action='store_true', help='print the table of the runs in --json')
    parser.add_argument('--json', required=True)
    args = parser.parse_args(argv)
    if args.summary_only:
        print(markdown(json.loads(Path(args.json).read_text())))
        return 0
    torch.set_num_threads(args.threads)

    spec = DATASETS['synthetic']
    args.num_classes = 8
    root = dataset_views('synthetic', Path(args.work_dir))['val']
    weights = backbone_weights_file()
    dpnet = timm.create_model(
        'dpnet', backbone=ARCH, pretrained=True, num_classes=args.num_classes, backbone_args=backbone_args(weights)
    ).eval()
    start = time.perf_counter()
    cache = Path(args.work_dir) / f'frozen_maps_synthetic_{spec["img_size"]}px_{spec["train"]}.pt'
    if not cache.is_file():
        torch.save({split: cached_maps(dpnet, root, split, spec['img_size']) for split in ('train', 'val')}, cache)
    data = torch.load(cache)
    report = dict(
        dataset=dict(name='synthetic', **spec), backbone=dict(arch=ARCH, weights=weights.name, frozen=True),
        map_shape=list(data['train'][0].shape[1:]), cache_s=round(time.perf_counter() - start, 1),
        optimiser=dict(opt='sgd', momentum=0.9, weight_decay=5e-4, batch_size=args.batch_size, epochs=args.epochs),
        runs=[],
    )  # fmt: skip
    for name in args.probes:
        for lr in args.lrs:
            result = train_probe(name, dpnet, data, lr, args)
            report['runs'].append(result)
            Path(args.json).write_text(json.dumps(report, indent=1))
            curve = ', '.join(f'{r["epoch"]}: {r["val_top1"]:.1f}' for r in result['curve'])
            print(f'{name} lr={lr:g}: val top-1 by epoch {curve}', flush=True)
    print(markdown(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
