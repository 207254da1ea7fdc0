"""The statistics of a comparison: the lr chosen on val, test metrics over seeds, seed-paired differences to each
baseline with Student's t intervals, and readings that claim nothing inside the noise.
"""

import math
import statistics
from typing import Any

from .protocol import BASELINES, PLAIN, claimed_baseline

METRICS = (('test_top1', 'test top-1'), ('test_mean_class_accuracy', 'mean per-class'))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired_interval(differences: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student's t interval of the mean paired difference; None with fewer than two seeds."""
    from scipy.stats import t

    if len(differences) < 2:
        return None
    mean, std = mean_std(differences)
    half = t.ppf((1 + level) / 2, len(differences) - 1) * std / math.sqrt(len(differences))
    return mean - half, mean + half


def paired(entry: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Seed-paired differences (seed s of `entry` minus seed s of `base`) of each test metric: values, mean, std and
    Student's t interval."""
    paired = [seed for seed in entry['seeds'] if seed in base['seeds']]
    result: dict[str, Any] = {}
    for key, _ in METRICS:
        head = dict(zip(entry['seeds'], entry[key], strict=True))
        baseline = dict(zip(base['seeds'], base[key], strict=True))
        diffs = [head[seed] - baseline[seed] for seed in paired]
        mean, std = mean_std(diffs)
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
            entry[key + '_mean'], entry[key + '_std'] = mean_std(entry[key])
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
        entry['vs'] = {base: paired(entry, summary[base]) for base in against}
        against = entry['claimed'] if entry['claimed'] in summary else next(iter(entry['vs']), None)
        entry['per_class_vs'] = against
        if against:
            entry['per_class_diff'] = {c: v - summary[against]['per_class'][c] for c, v in entry['per_class'].items()}
    return summary


def choose_lr(records: list[dict[str, Any]], method: str, lrs: list[float]) -> float:
    """The lr with the best val top-1 at seed 0; ties go to the smaller lr."""
    sweep = {r['lr']: r['val_top1'] for r in records if r['method'] == method and r['seed'] == 0 and r['lr'] in lrs}
    return max(sorted(sweep), key=lambda lr: sweep[lr])


def reading(interval: tuple[float, float] | None, seeds: int, baseline: str) -> str:
    """What a paired difference says, without claiming what the noise allows either way."""
    if interval is None:
        return 'one seed: no spread, no reading'
    lo, hi = interval
    if lo <= 0 <= hi:
        return 'no difference shown: the interval includes 0'
    side = 'above' if lo > 0 else 'below'
    return f'{side} {baseline}: the interval excludes 0, from {seeds} seeds only (weak evidence; rerun with more seeds)'


def t_quantile(n: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1))
