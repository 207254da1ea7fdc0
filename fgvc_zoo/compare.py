"""Does a head help on my data? Each head against the baseline its paper claims to beat (a plain fine-tune of the
same backbone, or a linear probe of it frozen), and against both, through the trainer.

The protocol (first run as `benchmarks/compare.py`), fixed before any result is read:

- Splits: a val split carved from the training images (stratified per class, `val_fraction`, fixed `split_seed`),
  materialised as a folder layout of symlinks, OUTPUT/data/{train,val}, which the trainer reads with its folder
  layout; so any layout `create_dataset` reads works, and what a split means never depends on the trainer's names.
  The test split is listed and linked (OUTPUT/test_data) only after every run has trained and every lr is chosen.
- Budget: the same backbone, backbone weights, maximum epochs, patience, batch size, input size, preprocessing
  (`REFERENCE_PREPROCESSING`) and trainer flags for every method. A run stops when its val top-1 has not improved for
  `patience` epochs and keeps its best-val weights (the trainer's `--patience`, `--keep-best`).
- Per method an lr sweep at seed 0 scored on best val top-1 (ties: the smaller lr); seeds 1..n-1 train at the chosen
  lr. Test top-1 and mean per-class accuracy of every seed's best-val weights, reported as mean +- std, and as paired
  differences to each baseline (`plain`: timm's own classifier fine-tuned; `probe`: its classifier alone trained on
  the frozen backbone); each head's paper names the one it claims to beat (`PaperInfo.baseline`).

Every run writes OUTPUT/runs/NAME.json when it ends (its test scores are added to it at the end); a rerun skips the
recorded runs and continues an unfinished one from its last epoch checkpoint (the trainer's `--resume`).

Devices: `cpu` trains in this process, one run at a time (the cores are shared anyway). CUDA devices each get one
worker process pinned to its device (`CUDA_VISIBLE_DEVICES`), which trains one whole run at a time: runs are
independent, so spreading them over the devices keeps each run's batch, BatchNorm statistics and numbers those of
a one-device run (DDP inside a run would change them), and a sweep of L lrs x M methods finishes in about
L x M / D run times. Each run's speed and peak memory are measured in the process that runs it.
"""

import dataclasses
import json
import math
import multiprocessing
import os
import platform
import resource
import shlex
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from . import __version__
from .data import carve_val, create_dataset, create_transforms, make_synthetic_fgvc
from .errors import UsageError
from .hub import load_model, local_weights_record, resolve_weights_file
from .inference.evaluate import evaluate
from .inference.explain import draw_explanation, explain_images
from .models import head_class, list_heads
from .training.config import TrainConfig, parse_train_flags
from .training.loop import time_train_step, train

__all__ = [
    'HARD_SYNTHETIC',
    'DEFAULT_TRAIN_ARGS',
    'REFERENCE_PREPROCESSING',
    'BASELINES',
    'estimate_seconds',
    'CompareConfig',
    'run_compare',
    'prepare_splits',
    'choose_lr',
    'summarise',
    'report_markdown',
]

# The built-in synthetic protocol, fixed before any result was read: the 224 px part set with 8 classes, a glyph of
# 10 % of the side and 40 training images per class is solved by a plain fine-tune (100 %), so no head can show a
# gain there. Here: all 12 glyphs, a glyph of 4.5 % of the side (10 px of 224), 40 clutter shapes instead of 10,
# 30 training images per class (24 train + 6 val once val is carved), 30 test images per class.
HARD_SYNTHETIC: dict[str, Any] = dict(
    num_classes=12, train_per_class=30, val_per_class=30, image_size=224, part_size=0.045, clutter=40
)
# Shared trainer flags (the FGVC references' crop and the papers' backbone lr), on top of which --train-args add.
DEFAULT_TRAIN_ARGS = [
    '--sched',
    'cosine',
    '--train-crop',
    'resize_crop',
    '--opt',
    'momentum',
    '--backbone-lr-mult',
    '0.1',
]
PLAIN, PROBE = 'plain', 'probe'
BASELINES = {
    PLAIN: "a full fine-tune of timm's own classifier of the backbone",
    PROBE: 'a linear probe: the same classifier trained alone on the frozen backbone (weights and BatchNorm statistics '
    'as loaded)',
}
# The preprocessing every method trains and is tested with, plain and probe included: the FGVC references' eval
# (NTS-Net's: squash the image to img_size / crop_pct, 600 x 600 for 448, then a centre crop, bilinear), so that the
# methods see the same pixels. timm's own cfg of a backbone resizes bicubic keeping the aspect; IAGN's (PMG's)
# crop keeps a little more (448/550).
REFERENCE_PREPROCESSING: dict[str, Any] = dict(interpolation='bilinear', crop_pct=448 / 600, crop_mode='squash')
DATA, TEST_DATA, RUNS, IMAGES = 'data', 'test_data', 'runs', 'images'


@dataclass
class CompareConfig:
    """One comparison: the data, the backbone, the methods and the budget they share."""

    output: str
    backbone: str
    methods: list[str]
    lrs: list[float]
    seeds: int = 3
    epochs: int = 10  # the most epochs a run trains
    patience: int = 3  # a run stops after this many epochs without a val top-1 gain above min_delta (0: never)
    min_delta: float = 0.0
    batch_size: int = 16
    img_size: int = 224
    data_dir: str | None = None
    synthetic: dict[str, Any] | None = None  # make_synthetic_fgvc kwargs, written to OUTPUT/synthetic_data
    dataset_layout: str = 'auto'
    dataset_args: dict[str, Any] = field(default_factory=dict)
    train_split: str = 'train'
    test_split: str = 'test'
    val_fraction: float = 0.2
    split_seed: int = 0
    pretrained: bool = False
    backbone_weights: str | None = None
    method_args: dict[str, str] = field(default_factory=dict)  # method -> the trainer's --model-args
    train_args: list[str] = field(default_factory=lambda: list(DEFAULT_TRAIN_ARGS))
    devices: list[str] = field(default_factory=lambda: ['cpu'])
    workers: int = 0
    threads: int = 0
    explain: int = 3

    def budget(self) -> dict[str, Any]:
        """What every run of this comparison shares; runs recorded under another budget are refused. No machine path:
        the data by its folder's name (splits.json holds where it is), the weights by name, size and sha256."""
        skip = {'output', 'devices', 'workers', 'threads', 'explain', 'methods', 'lrs', 'seeds'}
        budget = {k: v for k, v in asdict(self).items() if k not in skip}
        budget['data_dir'] = self.data_dir and Path(self.data_dir).resolve().name
        budget['backbone_weights'] = self.backbone_weights and weights_file_record(self.backbone_weights, self.backbone)
        return budget


def weights_file_record(path: str, backbone: str) -> dict[str, Any]:
    """The backbone weights a comparison gives every method, as records name them (no local path)."""
    return local_weights_record(resolve_weights_file(path, backbone), 'backbone')


def _check(config: CompareConfig) -> None:

    if (config.data_dir is None) == (config.synthetic is None):
        raise UsageError('Pass exactly one of --data-dir DIR and --synthetic.')
    if not set(BASELINES) & set(config.methods):
        raise UsageError(f'--methods {" ".join(config.methods)}: the comparison needs a baseline, plain or probe.')
    unknown = [m for m in config.methods if m not in BASELINES and m not in list_heads()]
    if unknown:
        raise UsageError(f'--methods: {unknown} are not methods; choose from {" ".join([*BASELINES, *list_heads()])}.')
    if len(set(config.methods)) != len(config.methods) or len(set(config.lrs)) != len(config.lrs):
        raise UsageError('--methods and --lrs must not repeat a value.')
    if config.seeds < 1 or config.epochs < 1 or not config.lrs:
        raise UsageError('--seeds and --epochs must be >= 1 and --lrs must name at least one lr.')
    if config.patience < 0 or config.min_delta < 0:
        raise UsageError('--patience and --min-delta must be >= 0.')
    if not 0 < config.val_fraction < 1:
        raise UsageError(f'--val-fraction {config.val_fraction}: must lie between 0 and 1.')
    if config.backbone_weights and not Path(config.backbone_weights).exists():
        raise FileNotFoundError(f'--backbone-weights {config.backbone_weights}: no such file or folder.')
    for device in config.devices:
        if device != 'cpu' and not device.startswith('cuda'):
            raise UsageError(f"--devices {device}: use 'cpu' or CUDA devices ('cuda:0 cuda:1').")
    if 'cpu' in config.devices and len(config.devices) > 1:
        raise UsageError("--devices: 'cpu' runs in this process and cannot be mixed with CUDA devices.")


# --- splits ------------------------------------------------------------------------------------------------------


def _class_folders(classes: list[str]) -> list[str]:
    """Folder names whose sorted order is the classes' order (the folder layout sorts them)."""
    safe = all(c and '/' not in c and not c.startswith('.') and c == c.strip() for c in classes)
    if safe and sorted(classes) == list(classes) and len(set(classes)) == len(classes):
        return list(classes)
    return [f'{i:04d}_' + ''.join(ch if ch.isalnum() or ch in '-_' else '_' for ch in c) for i, c in enumerate(classes)]


def _materialise(dataset, indices: list[int], folder: Path, class_folders: list[str]) -> None:
    """Symlink each image under folder/<class>/ (a file-backed layout), or write it (Hugging Face rows)."""
    for k in indices:
        path, label = dataset.samples[k]
        target = folder / class_folders[label]
        target.mkdir(parents=True, exist_ok=True)
        if os.path.isfile(path):
            (target / f'{k:06d}{Path(path).suffix.lower()}').symlink_to(os.path.abspath(path))
        else:
            dataset.load(k).save(target / f'{k:06d}.png')


def _source(config: CompareConfig) -> tuple[str, str]:
    """(root, layout) of the data; the synthetic protocol is written to OUTPUT/synthetic_data first."""
    if config.synthetic is None:
        return config.data_dir, config.dataset_layout

    root = Path(config.output) / 'synthetic_data'
    if not (root / 'test').is_dir():
        make_synthetic_fgvc(str(root), held_out_split='test', **config.synthetic)
    return str(root), 'folder'


def prepare_splits(config: CompareConfig) -> dict[str, Any]:
    """OUTPUT/data/{train,val} (symlinks) and OUTPUT/splits.json; the test split is not read here."""

    out = Path(config.output)
    path = out / 'splits.json'
    keys = ('data_dir', 'synthetic', 'dataset_layout', 'dataset_args', 'train_split', 'val_fraction', 'split_seed')
    source = json.loads(json.dumps({k: getattr(config, k) for k in keys}))
    if path.is_file():
        splits = json.loads(path.read_text())
        if splits['source'] != source:
            changed = sorted(k for k in keys if splits['source'].get(k) != source[k])
            raise UsageError(f'{out} holds the splits of other data (differs in {changed}): pass a new --output.')
        return splits
    root, layout = _source(config)
    train = create_dataset(root, config.train_split, layout, **config.dataset_args)
    train_index, val_index = carve_val(train.targets, config.val_fraction, config.split_seed)
    folders = _class_folders(list(train.classes))
    partial = out / (DATA + '.partial')

    shutil.rmtree(partial, ignore_errors=True)
    _materialise(train, train_index, partial / 'train', folders)
    _materialise(train, val_index, partial / 'val', folders)
    shutil.rmtree(out / DATA, ignore_errors=True)
    partial.rename(out / DATA)
    splits = dict(
        source=source, root=str(root), name=Path(root).resolve().name, layout=train.layout,
        classes=list(train.classes), folders=folders, train_images=len(train_index), val_images=len(val_index),
        train=[os.path.relpath(train.samples[k][0], root) for k in train_index],
        val=[os.path.relpath(train.samples[k][0], root) for k in val_index],
    )  # fmt: skip
    path.write_text(json.dumps(splits, indent=0))
    return splits


def prepare_test(config: CompareConfig, splits: dict[str, Any]) -> Path:
    """OUTPUT/test_data: the test split linked under test/ (train/ links to OUTPUT/data/train for the classes)."""

    out = Path(config.output)
    root = out / TEST_DATA
    if (root / 'test').is_dir():
        return root
    test = create_dataset(splits['root'], config.test_split, splits['layout'], **config.dataset_args)
    if list(test.classes) != splits['classes']:
        raise ValueError(f'{splits["root"]}: the test split lists other classes than the train split.')
    root.mkdir(parents=True, exist_ok=True)
    if not (root / 'train').exists():
        (root / 'train').symlink_to(os.path.abspath(out / DATA / 'train'))
    partial = root / 'test.partial'

    shutil.rmtree(partial, ignore_errors=True)
    _materialise(test, list(range(len(test))), partial, splits['folders'])
    partial.rename(root / 'test')
    return root


# --- one run -----------------------------------------------------------------------------------------------------


def run_name(method: str, lr: float, seed: int) -> str:
    return f'{method}_lr{lr:g}_seed{seed}'


def claimed_baseline(method: str) -> str | None:
    """The baseline a head's paper claims to beat (`PaperInfo.baseline`); None for a baseline."""
    if method in BASELINES:
        return None
    paper = head_class(method).paper
    return paper.baseline if paper is not None else PLAIN


def run_config(config: CompareConfig, method: str, lr: float, seed: int) -> TrainConfig:
    """The trainer's config of one run: the shared budget (`train_args` on top of the protocol's options), the
    method's model, its lr and seed; it continues the run's last checkpoint when there is one."""
    out = Path(config.output)
    overlay = f'pretrained_cfg_overlay={REFERENCE_PREPROCESSING!r}'
    options = parse_train_flags(config.train_args, '--train-args')
    options |= dict(
        model=config.backbone if method in BASELINES else method,
        backbone=None if method in BASELINES else config.backbone,
        freeze_backbone=method == PROBE,
        model_args=','.join(filter(None, [config.method_args.get(method), overlay])),
        pretrained=config.pretrained, backbone_weights=config.backbone_weights,
        data_dir=str(out / DATA), dataset_layout='folder', train_split='train', eval_split='val',
        img_size=config.img_size, epochs=config.epochs, batch_size=config.batch_size, lr=lr, seed=seed,
        workers=config.workers, threads=config.threads, output=str(out / RUNS / run_name(method, lr, seed)),
        resume='auto', keep_checkpoints=1, keep_best=True, patience=config.patience, min_delta=config.min_delta,
    )  # fmt: skip
    return TrainConfig(**options)


def portable_command(config: CompareConfig, run: TrainConfig) -> str:
    """A run's trainer command as its record keeps it: paths relative to the comparison's output folder (run it
    there), the weights file by name."""
    out = os.path.abspath(config.output)
    weights = config.backbone_weights and Path(config.backbone_weights).name

    def portable(arg: str) -> str:
        if config.backbone_weights and arg == config.backbone_weights:
            return weights
        return os.path.relpath(arg, out) if os.path.isabs(arg) and arg.startswith(out + os.sep) else arg

    return 'fgvc-zoo train ' + shlex.join(portable(a) for a in run.to_flags())


def _reset_peak(cuda: bool) -> None:
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    elif os.path.exists('/proc/self/clear_refs'):
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # resets VmHWM (Linux)


def _peak_mb(cuda: bool) -> tuple[float, str]:
    """(peak memory in MiB since `_reset_peak`, what it measures)."""
    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20, 'CUDA max_memory_allocated'
    if os.path.exists('/proc/self/clear_refs'):
        with open('/proc/self/status') as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith('VmHWM:'))
        return kb / 1024, 'peak RSS of the process (VmHWM, reset before)'
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'peak RSS of the process since it started'


def _train_job(run: TrainConfig, cuda: bool) -> dict[str, Any]:
    """Train one run with the project's trainer; its history, speed and peak memory."""

    _reset_peak(cuda)
    start = time.perf_counter()
    results = train(dataclasses.replace(run, cpu=not cuda)).results
    wall = time.perf_counter() - start
    peak, kind = _peak_mb(cuda)
    history = results['history']
    speeds = [row['train_images_per_s'] for row in history if 'train_images_per_s' in row]
    return dict(
        val_top1=results['metrics']['top1'], history=history, train_wall_s=wall, best_epoch=results['best_epoch'],
        epochs_trained=results['epochs_trained'], stopped_early=results['stopped_early'],
        initial_loss=results['initial_loss'], initial_cross_entropy=results['initial_cross_entropy'],
        train_steps_per_batch=results['train_steps_per_batch'],
        train_images_per_s=statistics.mean(speeds), train_peak_memory_mb=peak, memory_kind=kind,
        pretrained_weights=results.get('pretrained_weights'), versions=results['versions'],
        device=torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
    )  # fmt: skip


@torch.no_grad()
def _test_job(run_dir: str, test_root: str, img_size: int, batch_size: int, predictions: bool, cuda: bool) -> dict:
    """Test top-1 and mean per-class accuracy of a run's exported model (`inference.evaluate`), its speed and memory;
    with `predictions`, the predicted class of every test image too (for the disagreement pictures)."""

    device = torch.device('cuda' if cuda else 'cpu')
    model = load_model(run_dir).to(device).eval()
    dataset = create_dataset(test_root, 'test', 'folder', transform=create_transforms(model, False, img_size=img_size))
    _reset_peak(cuda)
    start = time.perf_counter()
    result = evaluate(model, dataset, batch_size=batch_size, device=device)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    peak, _ = _peak_mb(cuda)
    record = dict(
        test_top1=result['metrics']['top1'], test_mean_class_accuracy=result['metrics']['mean_class_accuracy'],
        test_per_class_accuracy=result['per_class_accuracy'], test_images=result['num_images'],
        eval_images_per_s=result['num_images'] / wall, eval_peak_memory_mb=peak,
    )  # fmt: skip
    if predictions:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
        record['test_predictions'] = [int(p) for x, _ in loader for p in model(x.to(device)).argmax(1).cpu()]
    return record


def _pin(index: str) -> None:
    """A worker's initialiser: see only its own CUDA device."""
    os.environ['CUDA_VISIBLE_DEVICES'] = index


class _Devices:
    """Runs jobs on the devices: in this process on CPU, else one worker process per CUDA device."""

    def __init__(self, devices: list[str]):
        self.cuda = devices != ['cpu']
        context = multiprocessing.get_context('spawn')
        self.pools = [
            ProcessPoolExecutor(1, mp_context=context, initializer=_pin, initargs=(d.partition(':')[2] or '0',))
            for d in (devices if self.cuda else [])
        ]

    def run(self, jobs: list[tuple[Callable, tuple, Callable[[dict], None]]]) -> None:
        """Each job is (function, args, done): `done(function(*args, cuda=...))` as each ends."""
        if not self.cuda:
            for function, args, done in jobs:
                done(function(*args, cuda=False))
            return
        pending, lock, errors = list(jobs), threading.Lock(), []

        def serve(pool: ProcessPoolExecutor) -> None:
            while True:
                with lock:
                    if not pending or errors:
                        return
                    function, args, done = pending.pop(0)
                try:
                    result = pool.submit(function, *args, cuda=True).result()
                    with lock:
                        done(result)
                except BaseException as e:  # noqa: BLE001 - re-raised below, after the other devices stop
                    with lock:
                        errors.append(e)

        threads = [threading.Thread(target=serve, args=(pool,)) for pool in self.pools]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown()


# --- the comparison ----------------------------------------------------------------------------------------------


def _write_json(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_suffix('.json.partial')
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)


def load_records(config: CompareConfig) -> dict[tuple[str, float, int], dict[str, Any]]:
    """The runs recorded under OUTPUT/runs; a record of another budget stops the comparison."""
    records = {}
    budget = json.loads(json.dumps(config.budget()))
    for path in sorted((Path(config.output) / RUNS).glob('*.json')):
        record = json.loads(path.read_text())
        if record['budget'] != budget:
            changed = sorted(k for k in budget if record['budget'].get(k) != budget[k])
            raise UsageError(
                f'{path} was trained with another budget (differs in {changed}): pass a new --output, or the same '
                f'options as that comparison to continue it.'
            )
        records[record['method'], record['lr'], record['seed']] = record
    return records


def _seeds_done(records: dict, key: tuple[str, float | None, int]) -> bool:
    """Whether seed `key[2]` of method `key[0]` is recorded at some lr (its chosen one, once seed 0 is swept)."""
    return any(m == key[0] and s == key[2] for m, _, s in records)


def estimate_seconds(config: CompareConfig, splits: dict[str, Any], methods: list[str]) -> tuple[float, dict]:
    """How long the runs of `methods` (one entry per run) take at most here: a training batch of each method timed
    once in this process (`time_train_step`), times the batches of the maximum epochs, plus a val pass per epoch
    (a forward costs about a third of a training step), over the devices. Returns (seconds, method -> s/batch)."""
    per_batch = {}
    for method in dict.fromkeys(methods):
        run = dataclasses.replace(run_config(config, method, config.lrs[0], 0), resume=None, cpu=True)
        per_batch[method] = time_train_step(run.resolve(), len(splits['classes']))
    batches = math.ceil(splits['train_images'] / config.batch_size) + splits['val_images'] / config.batch_size / 3
    seconds = sum(per_batch[m] * batches * config.epochs for m in methods) / len(config.devices)
    return seconds, per_batch


def choose_lr(records: list[dict[str, Any]], method: str, lrs: list[float]) -> float:
    """The lr with the best val top-1 at seed 0; ties go to the smaller lr."""
    sweep = {r['lr']: r['val_top1'] for r in records if r['method'] == method and r['seed'] == 0 and r['lr'] in lrs}
    return max(sorted(sweep), key=lambda lr: sweep[lr])


def run_compare(config: CompareConfig, log: Callable[[str], None] = print) -> Path:
    """Train every run not yet recorded, test the chosen ones, write OUTPUT/REPORT.md; returns its path."""
    _check(config)
    out = Path(config.output)
    (out / RUNS).mkdir(parents=True, exist_ok=True)
    splits = prepare_splits(config)
    records = load_records(config)
    budget = json.loads(json.dumps(config.budget()))
    devices = _Devices(config.devices)

    def train_jobs(keys: list[tuple[str, float, int]]) -> list:
        def done_for(method: str, lr: float, seed: int):
            def done(result: dict[str, Any]) -> None:
                record = dict(method=method, lr=lr, seed=seed, budget=budget, **result)
                record['command'] = portable_command(config, run_config(config, method, lr, seed))
                _write_json(out / RUNS / f'{run_name(method, lr, seed)}.json', record)
                records[method, lr, seed] = record
                log(
                    f'{run_name(method, lr, seed)}: val top-1 {record["val_top1"]:.2f} ({record["train_wall_s"]:.0f} s)'
                )

            return done

        return [(_train_job, (run_config(config, *key),), done_for(*key)) for key in keys if key not in records]

    pending = [(m, lr, 0) for m in config.methods for lr in config.lrs]
    pending += [(m, None, s) for m in config.methods for s in range(1, config.seeds)]
    pending = [key for key in pending if key not in records and (key[1] is not None or not _seeds_done(records, key))]
    if pending:
        seconds, per_batch = estimate_seconds(config, splits, [key[0] for key in pending])
        timed = ', '.join(f'{m} {t:.2f} s' for m, t in per_batch.items())
        log(
            f'About {math.ceil(seconds / 60)} minutes for {len(pending)} runs (at most {config.epochs} epochs each; '
            f'patience may stop them sooner; {len(config.devices)} device(s)), from a timed training batch of '
            f'{config.batch_size} images per method: {timed}.'
        )
    try:
        devices.run(train_jobs([(m, lr, 0) for m in config.methods for lr in config.lrs]))
        chosen = {m: choose_lr(list(records.values()), m, config.lrs) for m in config.methods}
        devices.run(train_jobs([(m, chosen[m], s) for m in config.methods for s in range(1, config.seeds)]))
        test_root = prepare_test(config, splits)
        jobs = []
        for method in config.methods:
            for seed in range(config.seeds):
                key = (method, chosen[method], seed)
                if 'test_top1' in records[key]:
                    continue

                def done(result: dict[str, Any], key=key) -> None:
                    records[key] |= result
                    _write_json(out / RUNS / f'{run_name(*key)}.json', records[key])
                    log(f'{run_name(*key)}: test top-1 {result["test_top1"]:.2f}')

                run_dir = str(out / RUNS / run_name(*key))
                args = (run_dir, str(test_root), config.img_size, config.batch_size, seed == 0)
                jobs.append((_test_job, args, done))
        devices.run(jobs)
    finally:
        devices.close()
    chosen_runs = [records[m, chosen[m], s] for m in config.methods for s in range(config.seeds)]
    sweep_runs = [records[m, lr, 0] for m in config.methods for lr in config.lrs if (m, lr, 0) not in chosen_runs]
    all_runs = list({run_name(r['method'], r['lr'], r['seed']): r for r in sweep_runs + chosen_runs}.values())
    summary = summarise(all_runs, config.methods, config.lrs, config.seeds)
    images = _disagreements(config, summary, chosen_runs, test_root, splits) if config.explain else []
    _figures(summary, splits['classes'], out)
    report = out / 'REPORT.md'
    report.write_text(report_markdown(config, summary, splits, all_runs, images))
    _write_json(out / 'summary.json', summary)
    log(f'Wrote {report}')
    return report


# --- the report --------------------------------------------------------------------------------------------------

METRICS = (('test_top1', 'test top-1'), ('test_mean_class_accuracy', 'mean per-class'))


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired_interval(differences: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student's t interval of the mean paired difference; None with fewer than two seeds."""
    from scipy.stats import t

    if len(differences) < 2:
        return None
    mean, std = _mean_std(differences)
    half = t.ppf((1 + level) / 2, len(differences) - 1) * std / math.sqrt(len(differences))
    return mean - half, mean + half


def _paired(entry: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Seed-paired differences (seed s of `entry` minus seed s of `base`) of each test metric: values, mean, std and
    Student's t interval."""
    paired = [seed for seed in entry['seeds'] if seed in base['seeds']]
    result: dict[str, Any] = {}
    for key, _ in METRICS:
        head = dict(zip(entry['seeds'], entry[key], strict=True))
        baseline = dict(zip(base['seeds'], base[key], strict=True))
        diffs = [head[seed] - baseline[seed] for seed in paired]
        mean, std = _mean_std(diffs)
        result[key] = dict(diffs=diffs, mean=mean, std=std, interval=paired_interval(diffs))
    return result


def summarise(records: list[dict[str, Any]], methods: list[str], lrs: list[float], seeds: int) -> dict[str, Any]:
    """Per method: the lr chosen, best val top-1 of every lr, test metrics over seeds, seed-paired differences to
    every baseline run (`vs`), the baseline its paper claims to beat (`claimed`), per-class accuracy, cost."""
    summary: dict[str, Any] = {}
    for method in methods:
        lr = choose_lr(records, method, lrs)
        runs = sorted(
            {r['seed']: r for r in records if r['method'] == method and r['lr'] == lr and r['seed'] < seeds}.values(),
            key=lambda r: r['seed'],
        )
        entry: dict[str, Any] = dict(
            lr=lr, seeds=[r['seed'] for r in runs], claimed=claimed_baseline(method),
            sweep={repr(r['lr']): r['val_top1'] for r in records if r['method'] == method and r['seed'] == 0},
        )  # fmt: skip
        for key, _ in METRICS:
            entry[key] = [r[key] for r in runs]
            entry[key + '_mean'], entry[key + '_std'] = _mean_std(entry[key])
        classes = list(runs[0]['test_per_class_accuracy'])
        entry['per_class'] = {c: statistics.mean(r['test_per_class_accuracy'][c] for r in runs) for c in classes}
        for key in ('train_images_per_s', 'eval_images_per_s', 'train_wall_s', 'epochs_trained', 'initial_loss',
                    'initial_cross_entropy'):  # fmt: skip
            entry[key] = statistics.mean(r[key] for r in runs)
        for key in ('train_peak_memory_mb', 'eval_peak_memory_mb'):
            entry[key] = max(r[key] for r in runs)
        entry['train_steps_per_batch'] = runs[0]['train_steps_per_batch']
        entry['stopped_early'] = sum(r['stopped_early'] for r in runs)
        summary[method] = entry
    for method, entry in summary.items():
        # Each head against every baseline; the probe against plain (what fine-tuning the backbone adds).
        against = [base for base in BASELINES if base in summary and base != method and method != PLAIN]
        entry['vs'] = {base: _paired(entry, summary[base]) for base in against}
        against = entry['claimed'] if entry['claimed'] in summary else next(iter(entry['vs']), None)
        entry['per_class_vs'] = against
        if against:
            entry['per_class_diff'] = {c: v - summary[against]['per_class'][c] for c, v in entry['per_class'].items()}
    return summary


def reading(interval: tuple[float, float] | None, seeds: int, baseline: str) -> str:
    """What a paired difference says, without claiming what the noise allows either way."""
    if interval is None:
        return 'one seed: no spread, no reading'
    lo, hi = interval
    if lo <= 0 <= hi:
        return 'no difference shown: the interval includes 0'
    side = 'above' if lo > 0 else 'below'
    return f'{side} {baseline}: the interval excludes 0, from {seeds} seeds only (weak evidence; rerun with more seeds)'


def _f(value: float) -> str:
    return f'{value:.2f}'


def _pm(mean: float, std: float) -> str:
    return f'{mean:.2f} +- {std:.2f}'


def _weights_text(config: CompareConfig) -> str:
    if config.backbone_weights:
        record = weights_file_record(config.backbone_weights, config.backbone)
        return f'`{record["id"]}` (sha256 `{record.get("sha256", record.get("revision"))}`)'
    return 'timm pretrained' if config.pretrained else 'random init (no --pretrained)'


def report_markdown(
    config: CompareConfig, summary: dict[str, Any], splits: dict[str, Any], runs: list[dict], images: list[dict]
) -> str:
    """OUTPUT/REPORT.md: every number in it comes from `summary`, which comes from the run records."""

    heads = [m for m in config.methods if m not in BASELINES]
    baselines = [m for m in config.methods if m in BASELINES]
    chosen = runs_of(summary, runs)
    test_images = chosen[0]['test_images']
    lines = [
        f'# Does a head help? {", ".join(heads) or "the baselines"} against {" and ".join(baselines)} '
        f'{config.backbone}',
        '',
        'Every number below is recomputed from the run records in `runs/*.json` (one per run, written as it ended). '
        + ' '.join(f'`{b}`: {BASELINES[b]}.' for b in baselines),
        '',
        '## Learning rate (seed 0, best val top-1 %, val carved from the training images)',
        '',
        '| method | lr chosen | val top-1 by lr |',
        '|---|---|---|',
    ]
    for method, e in summary.items():
        sweep = ', '.join(f'{float(lr):g}: {_f(v)}' for lr, v in sorted(e['sweep'].items(), key=lambda i: float(i[0])))
        lines.append(f'| {method} | {e["lr"]:g} | {sweep} |')
    n = config.seeds
    lines += [
        '',
        f'## Test (%, {test_images} images, mean +- std over {n} seeds at the chosen lr, best-val weights)',
        '',
        '| method | test top-1 | mean per-class | the baseline its paper claims to beat |',
        '|---|---|---|---|',
    ]
    for method, e in summary.items():
        claimed = e['claimed'] or '(a baseline)'
        lines.append(
            f'| {method} | {_pm(e["test_top1_mean"], e["test_top1_std"])} | '
            f'{_pm(e["test_mean_class_accuracy_mean"], e["test_mean_class_accuracy_std"])} | {claimed} |'
        )
    lines += [
        '',
        "## Paired differences (points; each method against each baseline, the paper's own claim marked)",
        '',
        '| method | against | claimed | top-1 difference | 95 % interval | mean per-class difference | reading |',
        '|---|---|---|---|---|---|---|',
    ]
    for method, e in summary.items():
        for base, diff in e['vs'].items():
            top1, per_class = diff['test_top1'], diff['test_mean_class_accuracy']
            interval = top1['interval']
            cells = [
                base, 'yes' if e['claimed'] == base else '', _pm(top1['mean'], top1['std']),
                f'[{_f(interval[0])}, {_f(interval[1])}]' if interval else '', _pm(per_class['mean'], per_class['std']),
                reading(interval, len(top1['diffs']), base),
            ]  # fmt: skip
            lines.append(f'| {method} | {" | ".join(cells)} |')
    base = baselines[0]
    p = summary[base]['test_top1_mean'] / 100
    binomial = 100 * math.sqrt(max(p * (1 - p), 1e-12) / test_images)
    lines += [
        '',
        f'A difference is the paired difference per seed (seed s of the method minus seed s of the baseline), mean +- '
        f"std; the interval is Student's t over the {n} paired differences. {n} seeds give such a test little power: "
        + (
            f'with {n - 1} degrees of freedom the 95 % interval is +-{_f(_t_quantile(n))} x std / sqrt({n}), so only '
            'a difference several times its spread over seeds shows, and one that does not show is not shown absent.'
            if n > 1
            else 'one seed gives no spread at all.'
        )
        + f" The test split itself adds sampling noise: one run's top-1 near {_f(100 * p)} % on {test_images} "
        f'images has a binomial standard error of about {_f(binomial)} points.',
        '',
        '![test accuracy](bars.png)',
        '',
        '## Runs: how long each trained, where it started, where it peaked',
        '',
        f'Every run trains at most {config.epochs} epochs and stops once its val top-1 has not improved by more than '
        f'{config.min_delta:g} points for {config.patience} epochs'
        + (' (patience 0: never early)' if not config.patience else '')
        + '; its best-val weights are the ones tested. The cosine lr schedule spans the maximum, so a run that '
        'stops early stops before its lr has decayed. Initial loss: the training objective on the first batch, '
        "before any update (a head sums several terms); initial CE: the cross-entropy of that batch's logits, "
        f'against ln({len(splits["classes"])}) = {_f(math.log(len(splits["classes"])))} of a uniform guess.',
        '',
        '| run | best val top-1 | best-val epoch | epochs trained | stopped | initial loss | initial CE | '
        'train time (s) | train images/s |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for r in sorted(runs, key=lambda r: (config.methods.index(r['method']), r['lr'], r['seed'])):
        stopped = _stopped(r, config.patience)
        lines.append(
            f'| {run_name(r["method"], r["lr"], r["seed"])} | {_f(r["val_top1"])} | {r["best_epoch"]} | '
            f'{r["epochs_trained"]} | {stopped} | {r["initial_loss"]:.3f} | {r["initial_cross_entropy"]:.3f} | '
            f'{r["train_wall_s"]:.0f} | {_f(r["train_images_per_s"])} |'
        )
    lines += [
        '',
        '"early": it stopped for want of improvement; "at the maximum": it was still improving within its patience '
        'when it reached the maximum epochs, so it is not shown to have converged.',
        '',
        '## Cost (mean over the chosen runs; peak memory: the largest)',
        '',
        f'Memory is {chosen[0]["memory_kind"]}; images/s in training include data loading and every optimiser step of '
        'a batch, in evaluation the whole test pass (decode, transform, forward). Equal epochs are not equal compute: '
        'a head that takes several optimiser steps per batch, or several backbone passes per image, costs more per '
        'epoch; compare accuracy per epoch and per train second alike.',
        '',
        '| method | optimiser steps per batch | epochs trained | train time per run (s) | train images/s | '
        'train peak memory (MiB) | eval images/s | eval peak memory (MiB) |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for method, e in summary.items():
        lines.append(
            f'| {method} | {e["train_steps_per_batch"]} | {e["epochs_trained"]:.1f} | {e["train_wall_s"]:.0f} | '
            f'{_f(e["train_images_per_s"])} | {_f(e["train_peak_memory_mb"])} | {_f(e["eval_images_per_s"])} | '
            f'{_f(e["eval_peak_memory_mb"])} |'
        )
    compared = [m for m in summary if summary[m].get('per_class_vs')]
    if compared:
        lines += ['', '## Per class: test accuracy of each method minus its baseline (mean over seeds, points)', '']
        lines += ['| method | against | largest gains | largest losses |', '|---|---|---|---|']
        for method in compared:
            diffs = sorted(summary[method]['per_class_diff'].items(), key=lambda i: i[1])
            gains = ', '.join(f'{c} {_f(d)}' for c, d in reversed(diffs[-3:]) if d > 0) or 'none'
            losses = ', '.join(f'{c} {_f(d)}' for c, d in diffs[:3] if d < 0) or 'none'
            lines.append(f'| {method} | {summary[method]["per_class_vs"]} | {gains} | {losses} |')
        lines += ['', '![per class](per_class.png)']
    if images:
        lines += ['', "## Where a head and its baseline disagree (seed 0 of each; the head's explanation drawn)", '']
        for image in images:
            lines.append(
                f'- `{image["source"]}`: true {image["true"]}, {image["baseline"]} says {image["baseline_says"]}, '
                f'{image["method"]} says {image["head"]}: ![{image["method"]}]({image["png"]})'
            )
    lines += ['', '## Training curves (seed 0 at the chosen lr: each loss term, val accuracy, lr per epoch)', '']
    for method, e in summary.items():
        name = run_name(method, e['lr'], 0)
        final = next(r for r in chosen if r['method'] == method and r['seed'] == 0)['history'][-1]
        terms = ', '.join(f'{k[len("train_") :]} {v:.4g}' for k, v in final.items() if k.startswith('train_loss'))
        lines.append(f'- {method} (last epoch: {terms}): ![{method} curves]({RUNS}/{name}/curves.png)')
    versions = chosen[0]['versions']
    data = f'`{DATA}/` (written by compare: {config.synthetic})' if config.synthetic else f'`{splits["name"]}`'
    lines += [
        '',
        '## Budget, data, machine',
        '',
        f'- Backbone `{config.backbone}`, weights: {_weights_text(config)}; the same for every method. Plain and probe '
        f"are timm's own `{config.backbone}` classifier.",
        f'- Every run: at most {config.epochs} epochs, patience {config.patience} (min delta {config.min_delta:g}), '
        f'batch {config.batch_size}, {config.img_size} px, trainer flags `{" ".join(config.train_args)}`; lrs swept '
        f'{", ".join(f"{lr:g}" for lr in config.lrs)}; seeds 0-{n - 1}.',
        f"- Preprocessing, every method's (`fgvc_zoo.compare.REFERENCE_PREPROCESSING`): {_preprocessing_text()} (the "
        "FGVC references' eval: squash to img-size / crop_pct, centre crop).",
        f'- Method options: {", ".join(f"{m}: `{a}`" for m, a in config.method_args.items() if a) or "none"}.',
        f'- Data: {data} ({splits["layout"]} layout), {len(splits["classes"])} classes; '
        f'{splits["train_images"]} train and {splits["val_images"]} val images (val: {config.val_fraction:g} of each '
        f"class's training images, seed {config.split_seed}), {test_images} test images (split "
        f'`{config.test_split}`, read only after every lr was chosen).',
        f'- Versions: fgvc_zoo {__version__}, torch {versions["torch"]}, timm {timm.__version__}, accelerate '
        f'{versions["accelerate"]}, Python {versions["python"]}.',
        f'- Machine: {chosen[0]["device"]}, devices {" ".join(config.devices)}, {os.cpu_count()} CPU cores, '
        f'{platform.platform()}, {time.strftime("%Y-%m-%d")}.',
        '',
    ]
    return '\n'.join(lines)


def _preprocessing_text() -> str:
    return ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in REFERENCE_PREPROCESSING.items())


def _stopped(record: dict[str, Any], patience: int) -> str:
    """How a run ended: stopped for want of improvement, or at the maximum epochs (still improving or not)."""
    if record['stopped_early']:
        return 'early'
    if patience and record['epochs_trained'] - record['best_epoch'] >= patience:
        return 'at the maximum, no gain in its last epochs'
    return 'at the maximum'


def runs_of(summary: dict[str, Any], runs: list[dict]) -> list[dict]:
    """The runs the report lists: the chosen ones (the sweep's other seed-0 runs are in their records)."""
    return [r for r in runs if r['lr'] == summary[r['method']]['lr']]


def _t_quantile(n: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1))


def _figures(summary: dict[str, Any], classes: list[str], out: Path) -> None:
    """bars.png: test top-1 and mean per-class per method (mean, std error bars, each seed a dot);
    per_class.png: each head's per-class accuracy minus plain's."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = list(summary)
    fig = Figure(figsize=(max(7.0, 2 + 1.6 * len(methods)), 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, squeeze=False)
    for ax, (key, title) in zip(axes.flat, METRICS, strict=True):
        means = [summary[m][key + '_mean'] for m in methods]
        stds = [summary[m][key + '_std'] for m in methods]
        colours = ['0.6' if m in BASELINES else 'C0' for m in methods]
        ax.bar(methods, means, yerr=stds, capsize=5, color=colours, alpha=0.8)
        for i, m in enumerate(methods):
            ax.scatter([i] * len(summary[m][key]), summary[m][key], color='k', s=10, zorder=3)
        ax.set(title=f'{title} (%)', ylim=(0, 100))
        ax.grid(axis='y', alpha=0.3)
    fig.suptitle('test accuracy: bar = mean over seeds (grey: baselines), error bar = std, dots = seeds', fontsize=10)
    fig.tight_layout()
    fig.savefig(out / 'bars.png', dpi=100)
    compared = [m for m in methods if summary[m].get('per_class_vs')]
    if not compared:
        return
    fig = Figure(figsize=(max(5, 0.45 * len(classes) + 1.5), 2.6 * len(compared)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(compared), 1)
    for ax, method in zip(np.atleast_1d(axes), compared, strict=True):
        diff = summary[method]['per_class_diff']
        values = [diff.get(c, 0.0) for c in classes]
        ax.bar(classes, values, color=['C2' if v > 0 else 'C3' for v in values])
        ax.axhline(0, color='k', lw=0.8)
        ax.set(title=f'{method} - {summary[method]["per_class_vs"]}, per class (points)', ylabel='accuracy difference')
        ax.tick_params(axis='x', rotation=60, labelsize=8)
    fig.tight_layout()
    fig.savefig(out / 'per_class.png', dpi=100)


def _disagreements(
    config: CompareConfig, summary: dict[str, Any], runs: list[dict], test_root: Path, splits: dict[str, Any]
) -> list[dict[str, str]]:
    """Up to `config.explain` test images per head where its seed-0 run and its baseline's disagree (the head right
    first, then the baseline right), each drawn with the head's explanation (`inference.explain`)."""

    out = Path(config.output)
    (out / IMAGES).mkdir(exist_ok=True)
    seed0 = {r['method']: r for r in runs if r['seed'] == 0 and r['lr'] == summary[r['method']]['lr']}
    dataset = create_dataset(str(test_root), 'test', 'folder')
    classes = splits['classes']
    truth = dataset.targets
    drawn = []
    for method, entry in summary.items():
        baseline = entry.get('per_class_vs')
        if method in BASELINES or not baseline:
            continue
        head, base = seed0[method]['test_predictions'], seed0[baseline]['test_predictions']
        differ = [i for i in range(len(truth)) if head[i] != base[i]]
        head_right = [i for i in differ if head[i] == truth[i]]
        base_right = [i for i in differ if base[i] == truth[i] and i not in head_right]
        rest = [i for i in differ if i not in head_right and i not in base_right]
        order = [i for pair in zip(head_right, base_right, strict=False) for i in pair]
        order += [i for i in head_right + base_right + rest if i not in order]
        if not order:
            continue
        model = load_model(str(out / RUNS / run_name(method, entry['lr'], 0))).eval()
        transform = create_transforms(model, False, img_size=config.img_size)
        for i in order[: config.explain]:
            (explained,) = explain_images(model, [dataset.load(i)], transform, classes)
            png = f'{IMAGES}/{method}_{i:05d}.png'
            draw_explanation(explained, str(out / png))
            source = os.path.relpath(os.path.realpath(dataset.samples[i][0]), os.path.realpath(splits['root']))
            drawn.append(dict(method=method, png=png, source=source, true=classes[truth[i]], baseline=baseline,
                              baseline_says=classes[base[i]], head=classes[head[i]]))  # fmt: skip
    return drawn
