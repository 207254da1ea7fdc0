"""`fgvc-zoo compare`: each head against a plain fine-tune and a linear probe of the same backbone on your data,
with a report (the library: `fgvc_zoo.compare`)."""

import argparse
import shlex

__all__ = ['add_arguments', 'main', 'PRESETS']

# Budgets by name; a flag given on the command line wins over its preset value. 'quick': a first look in about ten
# minutes on a 2-core CPU (a 6-class synthetic protocol at 96 px, 2 seeds, one lr, at most 8 epochs): enough to see
# that everything runs and roughly where each method lands, not evidence. 'default': the protocol's own budget.
PRESETS: dict[str, dict[str, object]] = {
    'default': dict(lrs=[0.003, 0.01, 0.03], seeds=3, epochs=10, patience=3, batch_size=16, img_size=224),
    'quick': dict(
        lrs=[0.01],
        seeds=2,
        epochs=8,
        patience=3,
        batch_size=16,
        img_size=96,
        synthetic_args='num_classes=6,train_per_class=32,val_per_class=20,image_size=96,part_size=0.15,clutter=10',
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..compare import CACHE_FROZEN, DEFAULT_TRAIN_ARGS
    from ..models import list_heads

    data = parser.add_argument_group('data')
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument('--data-dir', help='dataset root: any layout the trainer reads (folder, cub, cars, ...)')
    source.add_argument(
        '--synthetic',
        action='store_true',
        help='the built-in hard synthetic protocol (fgvc_zoo.compare.HARD_SYNTHETIC), written to OUTPUT',
    )
    data.add_argument(
        '--synthetic-args',
        default=None,
        help="override the synthetic protocol: 'num_classes=4,image_size=64,...' (default: the preset's)",
    )
    data.add_argument('--dataset-layout', default='auto', help='layout of --data-dir')
    data.add_argument('--dataset-args', default='', help="layout options, 'key=value,...' (e.g. level=family)")
    data.add_argument('--train-split', default='train', help='the split the runs train on (val is carved from it)')
    data.add_argument('--test-split', default='test', help='the held-out split, read only at the end')
    data.add_argument('--val-fraction', type=float, default=0.2, help="share of each class's training images for val")
    data.add_argument('--split-seed', type=int, default=0, help='seed of the val split')

    model = parser.add_argument_group('model and budget')
    model.add_argument('--backbone', required=True, help='timm backbone shared by plain and every head')
    weights = model.add_mutually_exclusive_group()
    weights.add_argument('--pretrained', action='store_true', help="timm's pretrained weights of the backbone")
    weights.add_argument('--backbone-weights', help='the backbone weights from a local file or folder (no Hub)')
    methods = ['plain', 'probe', *list_heads()]
    model.add_argument(
        '--methods',
        nargs='+',
        default=methods,
        choices=methods,
        help="plain (a fine-tune of timm's classifier) and probe (its classifier alone on the frozen backbone) are the "
        'baselines; each head is paired with the one its paper claims to beat (DP-Net: probe; LFD, IAGN: plain)',
    )
    model.add_argument(
        '--method-args', default='', help="each method's --model-args, 'lfd:zoom_size=112;iagn:mid_channels=128'"
    )
    model.add_argument(
        '--preset',
        choices=list(PRESETS),
        default='default',
        help='a named budget for the flags below that are not given: '
        + '; '.join(f'{name}: {values}' for name, values in PRESETS.items())
        + ". 'quick' takes about ten minutes on a 2-core CPU with --synthetic; compare prints its own estimate first",
    )
    model.add_argument('--lrs', type=float, nargs='+', help='lrs swept at seed 0')
    model.add_argument('--seeds', type=int, help='seeds trained at the chosen lr (0..N-1)')
    model.add_argument('--epochs', type=int, help='the most epochs a run trains (see --patience)')
    model.add_argument(
        '--patience',
        type=int,
        help='a run stops when its val top-1 has not improved by more than --min-delta for this many epochs (0: '
        'never) and its best-val weights are tested; the cosine lr schedule spans --epochs, so an early stop comes '
        'before the lr has decayed',
    )
    model.add_argument(
        '--min-delta', type=float, default=0.0, help='--patience: the val top-1 gain (points) that counts'
    )
    model.add_argument('--batch-size', type=int, help='batch size of every run')
    model.add_argument('--img-size', type=int, help='input side of every run')
    model.add_argument(
        '--cache-frozen',
        choices=CACHE_FROZEN,
        default='off',
        help="train the frozen methods (probe; DP-Net unless its args unfreeze it) on their backbone's maps computed "
        "once, not on images augmented each epoch: 'flip' the eval view and its mirror, 'crops' five crops and their "
        "mirrors (the trainer's --cache-features); much faster, but their augmentation then differs from the other "
        "methods' (stated in REPORT.md); 'off' (default): every method on images",
    )
    model.add_argument(
        '--train-args',
        default=' '.join(DEFAULT_TRAIN_ARGS),
        help='more trainer flags shared by every run, as one string (see `fgvc-zoo train --help`)',
    )

    run = parser.add_argument_group('run')
    run.add_argument(
        '--devices',
        nargs='+',
        default=None,
        help="'cpu' (runs in this process) or CUDA devices, each training one run at a time (default: every "
        'visible CUDA device, else cpu)',
    )
    run.add_argument('--workers', type=int, default=0, help='data loader workers per run')
    run.add_argument('--threads', type=int, default=0, help="torch CPU threads per run (0: the trainer's choice)")
    run.add_argument('--explain', type=int, default=3, help='disagreement images drawn per head')
    run.add_argument('--output', required=True, help='runs, records and REPORT.md; rerun with it to continue')


def _pairs(text: str, flag: str) -> dict[str, object]:
    from ..runtime import parse_options

    return parse_options(text or None, flag)


def main(args: argparse.Namespace) -> int:
    import torch

    from ..compare import HARD_SYNTHETIC, CompareConfig, run_compare
    from ..errors import UsageError
    from ..runtime import split_named_options

    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None and (name != 'synthetic_args' or args.synthetic):
            setattr(args, name, value)
    args.synthetic_args = args.synthetic_args or ''
    method_args = split_named_options(args.method_args, '--method-args', args.methods)
    if args.synthetic_args and not args.synthetic:
        raise UsageError('--synthetic-args sets the synthetic protocol: pass --synthetic with it.')
    synthetic = {**HARD_SYNTHETIC, **_pairs(args.synthetic_args, '--synthetic-args')} if args.synthetic else None
    devices = args.devices or [f'cuda:{i}' for i in range(torch.cuda.device_count())] or ['cpu']
    config = CompareConfig(
        output=args.output, backbone=args.backbone, methods=args.methods, lrs=args.lrs, seeds=args.seeds,
        epochs=args.epochs, patience=args.patience, min_delta=args.min_delta, batch_size=args.batch_size,
        img_size=args.img_size, data_dir=args.data_dir, synthetic=synthetic, dataset_layout=args.dataset_layout,
        dataset_args=_pairs(args.dataset_args, '--dataset-args'), train_split=args.train_split,
        test_split=args.test_split, val_fraction=args.val_fraction, split_seed=args.split_seed,
        pretrained=args.pretrained, backbone_weights=args.backbone_weights, method_args=method_args,
        train_args=shlex.split(args.train_args), devices=devices, workers=args.workers, threads=args.threads,
        explain=args.explain, cache_frozen=args.cache_frozen,
    )  # fmt: skip
    run_compare(config)
    return 0
