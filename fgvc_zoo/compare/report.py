"""OUTPUT/REPORT.md and its pictures: every number recomputed from the run records; bar and per-class charts
(matplotlib's object API, no global state), and test images where a head and its baseline disagree.
"""

import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm

from .. import __version__
from ..data import create_dataset, create_transforms
from ..hub import load_model
from ..inference.explain import draw_explanation, explain_images
from .protocol import (
    BASELINES,
    IMAGES,
    REFERENCE_PREPROCESSING,
    RUNS,
    CompareConfig,
    cached_methods,
    run_name,
)
from .stats import METRICS, reading, t_quantile


def _f(value: float) -> str:
    return f'{value:.2f}'


def _pm(mean: float, std: float) -> str:
    return f'{mean:.2f} +- {std:.2f}'


def _weights_text(config: CompareConfig, record: dict[str, Any] | None) -> str:
    """The backbone weights every run started from, as the runs' budget records them (no local path)."""
    if record and record.get('source') == 'hf-hub':
        return f'Hub repo `{record["id"]}` at revision `{record.get("revision")}` (`{record.get("file")}`)'
    if record:
        return f'`{record["id"]}` (sha256 `{record["sha256"]}`)'
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
            f'with {n - 1} degrees of freedom the 95 % interval is +-{_f(t_quantile(n))} x std / sqrt({n}), so only '
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
    weights = _weights_text(config, chosen[0]['budget']['backbone_weights'])
    data = f'the synthetic protocol {config.synthetic}' if config.synthetic else f'`{splits["name"]}`'
    lines += [
        '',
        '## Budget, data, machine',
        '',
        f'- Backbone `{config.backbone}`, weights: {weights}; the same for every method. Plain and probe '
        f"are timm's own `{config.backbone}` classifier.",
        f'- Every run: at most {config.epochs} epochs, patience {config.patience} (min delta {config.min_delta:g}), '
        f'batch {config.batch_size}, {config.img_size} px, trainer flags `{" ".join(config.train_args)}`; lrs swept '
        f'{", ".join(f"{lr:g}" for lr in config.lrs)}; seeds 0-{n - 1}.',
        f"- Preprocessing, every method's (`fgvc_zoo.compare.REFERENCE_PREPROCESSING`): {_preprocessing_text()} (the "
        "FGVC references' eval: squash to img-size / crop_pct, centre crop).",
        _cache_text(config, runs),
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


def _cache_text(config: CompareConfig, runs: list[dict]) -> str:
    """Which methods trained on cached frozen maps, what their augmentation then was, and what computing the maps
    cost (the runs' `frozen_maps_s`, where their records have it)."""
    cached = cached_methods(config)
    if not cached:
        return '- Augmentation: every method trains on images, freshly cropped and flipped each epoch.'
    views = {
        'flip': 'the eval view (resize, centre crop) and its mirror, mirrored with the flip probability; no random '
        'crop',
        'crops': 'the five crops (corners, centre) of the resized image and their mirrors, a crop drawn uniformly and '
        'mirrored with the flip probability: a discrete random crop',
    }[config.cache_frozen]
    others = [m for m in config.methods if m not in cached]
    contrast = (
        f'{", ".join(others)} trained on images freshly cropped and flipped each epoch: the two groups did not see the '
        'same augmentation.'
        if others
        else 'Every method of this comparison trained so.'
    )
    return (
        f"- Augmentation: {', '.join(cached)} trained on their frozen backbone's maps computed once per image "
        f"(`--cache-frozen {config.cache_frozen}`, the trainer's `--cache-features`): each epoch each image once, "
        f'as one of {views}. {contrast}{_maps_cost_text(cached, runs)} Their train images/s count maps, not images; '
        'their train time includes the pass that computed the maps.'
    )


def _maps_cost_text(cached: list[str], runs: list[dict]) -> str:
    parts = []
    for method in cached:
        own = [r for r in runs if r['method'] == method]
        seconds = [r['frozen_maps_s'] for r in own if r.get('frozen_maps_s') is not None]
        if seconds:
            computed = [s for s in seconds if s > 0]
            older = f'; {len(own) - len(seconds)} runs predate this record' if len(own) > len(seconds) else ''
            parts.append(
                f'{method}: of the {len(seconds)} runs that record it, {len(computed)} computed them '
                f'({_f(sum(computed))} s in all, within their training time) and {len(seconds) - len(computed)} '
                f'reused them{older}'
            )
    return f' Computing the maps: {"; ".join(parts)}.' if parts else ''


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


def figures(summary: dict[str, Any], classes: list[str], out: Path) -> None:
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


def disagreements(
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
