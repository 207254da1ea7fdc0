"""What `--cache-features` saves: for the frozen methods (the probe, DP-Net), a training batch on images against one
on cached maps, and the pass that computes a batch's maps, all timed in one process by the trainer's own
`time_train_step` (the numbers `fgvc-zoo compare` estimates from), with the EfficientNet-Lite0 ImageNet weights.

From them, per input size: how many times faster an epoch on maps is, and after how many epochs the one pass over
the cached views (2 for 'flip', 10 for 'crops') has paid for itself. A comparison's runs of one method share that
pass (`MapStore`), so there it is paid once for all lrs and seeds.

    python benchmarks/frozen_cache_bench.py --img-sizes 96 224 --threads 1 --json benchmarks/frozen_cache_bench.json
"""

import argparse
import dataclasses
import json
import platform

import torch
from lite0_weights import ARCH, backbone_weights_file

from fgvc_zoo.training import TrainConfig
from fgvc_zoo.training.loop import time_train_step

FROZEN = {
    'probe': dict(model=ARCH, freeze_backbone=True),
    'dpnet': dict(model='dpnet', backbone=ARCH),
}
VIEWS = {'flip': 2, 'crops': 10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--img-sizes', type=int, nargs='+', default=[96, 224])
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--num-classes', type=int, default=10)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--json', help='write the measurements here')
    args = parser.parse_args()

    weights = backbone_weights_file()
    rows = []
    for img_size in args.img_sizes:
        for method, options in FROZEN.items():
            config = TrainConfig(
                **options, synthetic=True, output='unused', backbone_weights=str(weights), img_size=img_size,
                batch_size=args.batch_size, threads=args.threads, workers=0, train_crop='resize_crop', cpu=True,
            )  # fmt: skip
            images = time_train_step(config, args.num_classes)
            maps = time_train_step(dataclasses.replace(config, cache_features='flip'), args.num_classes)
            row = dict(
                method=method, img_size=img_size, train_batch_on_images_s=images.train_batch,
                train_batch_on_maps_s=maps.train_batch, map_pass_per_batch_s=maps.cache_batch,
                epoch_speedup=images.train_batch / maps.train_batch,
                **{
                    f'break_even_epochs_{name}': views * maps.cache_batch / (images.train_batch - maps.train_batch)
                    for name, views in VIEWS.items()
                },
            )  # fmt: skip
            rows.append(row)
            print(
                f'{method:6s} {img_size:4d} px: batch on images {images.train_batch:.3f} s, on maps '
                f'{maps.train_batch:.4f} s ({row["epoch_speedup"]:.0f}x), map pass {maps.cache_batch:.3f} s a batch; '
                f'the cache pays for itself after {row["break_even_epochs_flip"]:.1f} epochs (flip), '
                f'{row["break_even_epochs_crops"]:.1f} (crops)'
            )
    if args.json:
        record = dict(
            rows=rows, backbone=ARCH, weights=weights.name, batch_size=args.batch_size, threads=args.threads,
            torch=torch.__version__, machine=platform.machine(), command='python benchmarks/frozen_cache_bench.py '
            f'--img-sizes {" ".join(map(str, args.img_sizes))} --threads {args.threads} --json {args.json}',
        )  # fmt: skip
        with open(args.json, 'w') as f:
            json.dump(record, f, indent=1)


if __name__ == '__main__':
    main()
