"""One run of a comparison, as a job any device worker can take: training it with the trainer (its history, speed
and peak memory, `runtime.PeakMemory`) and testing its exported model; and the estimate of how long runs take.
"""

import dataclasses
import math
import platform
import statistics
import time
from typing import Any

import torch

from ..data import create_dataset, create_transforms
from ..hub import load_model
from ..inference.evaluate import evaluate
from ..runtime import PeakMemory
from ..training.config import TrainConfig
from ..training.feature_cache import MapStore, views_per_image
from ..training.loop import time_train_step, train
from .protocol import CompareConfig, run_config

# The frozen methods' maps, computed once per process (this one for 'cpu', each device worker's for CUDA) and shared by
# the runs of a method (its lrs and seeds): `--cache-frozen`.
FROZEN_MAPS = MapStore(entries=2)


def train_job(run: TrainConfig, cuda: bool) -> dict[str, Any]:
    """Train one run with the project's trainer; its history, speed and peak memory."""

    meter = PeakMemory('cuda' if cuda else 'cpu').start()
    start = time.perf_counter()
    results = train(dataclasses.replace(run, cpu=not cuda), FROZEN_MAPS).results
    wall = time.perf_counter() - start
    peak, kind = meter.read(), meter.kind
    history = results['history']
    speeds = [row['train_images_per_s'] for row in history if 'train_images_per_s' in row]
    return dict(
        val_top1=results['metrics']['top1'], history=history, train_wall_s=wall, best_epoch=results['best_epoch'],
        epochs_trained=results['epochs_trained'], stopped_early=results['stopped_early'],
        initial_loss=results['initial_loss'], initial_cross_entropy=results['initial_cross_entropy'],
        train_steps_per_batch=results['train_steps_per_batch'], frozen_maps_s=results.get('frozen_maps_s'),
        train_images_per_s=statistics.mean(speeds), train_peak_memory_mb=peak, memory_kind=kind,
        pretrained_weights=results.get('pretrained_weights'), versions=results['versions'],
        device=torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
    )  # fmt: skip


@torch.no_grad()
def test_job(run_dir: str, test_root: str, img_size: int, batch_size: int, predictions: bool, cuda: bool) -> dict:
    """Test top-1 and mean per-class accuracy of a run's exported model (`inference.evaluate`), its speed and memory;
    with `predictions`, the predicted class of every test image too (for the disagreement pictures)."""

    device = torch.device('cuda' if cuda else 'cpu')
    model = load_model(run_dir).to(device).eval()
    dataset = create_dataset(test_root, 'test', 'folder', transform=create_transforms(model, False, img_size=img_size))
    meter = PeakMemory('cuda' if cuda else 'cpu').start()
    start = time.perf_counter()
    result = evaluate(model, dataset, batch_size=batch_size, device=device)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    peak = meter.read()
    record = dict(
        test_top1=result['metrics']['top1'], test_mean_class_accuracy=result['metrics']['mean_class_accuracy'],
        test_per_class_accuracy=result['per_class_accuracy'], test_images=result['num_images'],
        eval_images_per_s=result['num_images'] / wall, eval_peak_memory_mb=peak,
    )  # fmt: skip
    if predictions:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
        record['test_predictions'] = [int(p) for x, _ in loader for p in model(x.to(device)).argmax(1).cpu()]
    return record


def estimate_seconds(config: CompareConfig, splits: dict[str, Any], methods: list[str]) -> tuple[float, dict]:
    """How long the runs of `methods` (one entry per run) take at most here: a training batch of each method timed
    once in this process (`time_train_step`), times the batches of the maximum epochs, plus a val pass per epoch
    (a forward costs about a third of a training step); a method on cached maps adds one pass over every view of the
    training images and over val, shared by its runs (`FROZEN_MAPS`). Over the devices. Returns (seconds, method ->
    s/training batch)."""
    times = {}
    for method in dict.fromkeys(methods):
        run = dataclasses.replace(run_config(config, method, config.lrs[0], 0), resume=None, cpu=True).resolve()
        times[method] = time_train_step(run, len(splits['classes']))
    train_batches = math.ceil(splits['train_images'] / config.batch_size)
    val_batches = splits['val_images'] / config.batch_size
    views = views_per_image(config.cache_frozen, hflip=0.5)  # at most: the mirrors included
    training = sum(times[m].train_batch * (train_batches + val_batches / 3) * config.epochs for m in methods)
    caching = sum(times[m].cache_batch * (views * train_batches + val_batches) for m in times)
    seconds = training / len(config.devices) + caching  # each device worker computes the maps once
    return seconds, {m: t.train_batch for m, t in times.items()}
