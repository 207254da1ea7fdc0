"""`fgvc-zoo compare`: the report's numbers are those of its run records, each head is paired with the baseline its
paper claims to beat (and shown against both), the test split is read only after every run has trained, the val
split is carved per class, a rerun continues instead of retraining, and nothing recorded names a machine path."""

import dataclasses
import functools
import json
import math
import os
import re
import statistics
from pathlib import Path

import pytest
import timm
from safetensors.torch import save_file
from scipy.stats import t

from fgvc_zoo import compare
from fgvc_zoo.cli import run
from fgvc_zoo.commands import compare as compare_command
from fgvc_zoo.compare import jobs, report
from fgvc_zoo.compare import splits as splits_module
from fgvc_zoo.compare.devices import Devices
from fgvc_zoo.data import carve_val, create_dataset, make_synthetic_fgvc
from fgvc_zoo.errors import UsageError

TINY = [
    'compare', '--backbone', 'test_resnet', '--methods', 'plain', 'probe', 'dpnet', '--epochs', '2', '--patience', '1',
    '--lrs', '0.01', '0.03', '--seeds', '2', '--batch-size', '8', '--img-size', '64', '--devices', 'cpu',
    '--explain', '1',
]  # fmt: skip
METRIC_PER_CLASS = 'test_mean_class_accuracy'
TEST_IMAGES = (6, 4, 2, 1)  # per class: after one epoch a model often predicts one class, whose share this varies


def _tiny_data(root: Path) -> Path:
    """The synthetic part set as a folder dataset with train/ and an imbalanced test/ split."""
    make_synthetic_fgvc(str(root), num_classes=4, train_per_class=6, val_per_class=6, image_size=64,
                        held_out_split='test')  # fmt: skip
    for folder, keep in zip(sorted((root / 'test').iterdir()), TEST_IMAGES, strict=True):
        for image in sorted(folder.iterdir())[keep:]:
            image.unlink()
    return root


def _table(report: str, header: str) -> dict[str, dict[str, str]]:
    """The rows of the markdown table whose header row starts with `header`, keyed by their first cell."""
    return {next(iter(row.values())): row for row in _table_rows(report, header)}


def _table_rows(report: str, header: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose header row starts with `header`, in order."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    names = [c.strip() for c in lines[start].strip('|').split('|')]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith('|'):
            break
        rows.append(dict(zip(names, [c.strip() for c in line.strip('|').split('|')], strict=True)))
    return rows


def _pm(cell: str) -> tuple[float, float]:
    mean, std = cell.split(' +- ')
    return float(mean), float(std)


def _close(written: float, value: float) -> bool:
    return abs(written - value) <= 0.005 + 1e-9  # the report writes 2 decimals


@pytest.fixture(scope='module')
def compared(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp('compare')
    out, data = base / 'out', _tiny_data(base / 'data')
    seen_test = []
    train_job = jobs.train_job

    def spying_train_job(*args, **kwargs):
        seen_test.append((out / compare.TEST_DATA).exists())
        return train_job(*args, **kwargs)

    logged = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jobs, 'train_job', spying_train_job)
        mp.setattr(compare, 'run_compare', functools.partial(compare.run_compare, log=logged.append))
        assert run([*TINY, '--data-dir', str(data), '--output', str(out)]) == 0
    assert seen_test == [False] * 9, 'a run trained after the test split was linked (or not 2 lrs + 1 seed each)'
    (out / 'log.txt').write_text('\n'.join(logged))
    return out, data


def test_report_numbers_are_the_records(compared: tuple[Path, Path]) -> None:
    compared = compared[0]
    report = (compared / 'REPORT.md').read_text()
    records = [json.loads(p.read_text()) for p in sorted((compared / 'runs').glob('*.json'))]
    assert len(records) == 9  # per method: lrs 0.01 and 0.03 at seed 0, seed 1 at the chosen lr

    sweep = _table(report, '| method | lr chosen')
    tests = _table(report, '| method | test top-1')
    paired = _table_rows(report, '| method | against')
    cost = _table(report, '| method | optimiser steps')
    chosen = {}
    for method in ('plain', 'probe', 'dpnet'):
        seed0 = {r['lr']: r['val_top1'] for r in records if r['method'] == method and r['seed'] == 0}
        best = max(seed0.values())
        chosen[method] = min(lr for lr, v in seed0.items() if v == best)
        assert float(sweep[method]['lr chosen']) == chosen[method]
        written = dict(item.split(': ') for item in sweep[method]['val top-1 by lr'].split(', '))
        assert {float(k): float(v) for k, v in written.items()} == pytest.approx(seed0, abs=0.005)

    runs = {
        m: sorted((r for r in records if r['method'] == m and r['lr'] == chosen[m]), key=lambda r: r['seed'])
        for m in chosen
    }
    assert [r['seed'] for r in runs['dpnet']] == [0, 1]
    for method, column, key in (
        (m, c, k)
        for m in chosen
        for c, k in (('test top-1', 'test_top1'), ('mean per-class', 'test_mean_class_accuracy'))
    ):
        values = [r[key] for r in runs[method]]
        mean, std = _pm(tests[method][column])
        assert _close(mean, statistics.mean(values)) and _close(std, statistics.stdev(values)), (method, column)

    # DP-Net's paper claims a gain over a linear probe of its frozen backbone: that pair is marked, and the head is
    # also shown against the fine-tune; the probe against the fine-tune; the fine-tune against nothing.
    assert tests['dpnet']['the baseline its paper claims to beat'] == 'probe'
    assert sorted((r['method'], r['against'], r['claimed']) for r in paired) == [
        ('dpnet', 'plain', ''), ('dpnet', 'probe', 'yes'), ('probe', 'plain', '')
    ]  # fmt: skip
    for row in paired:
        head, base = runs[row['method']], runs[row['against']]
        for column, key in (
            ('top-1 difference', 'test_top1'),
            ('mean per-class difference', 'test_mean_class_accuracy'),
        ):
            diffs = [h[key] - b[key] for h, b in zip(head, base, strict=True)]
            mean, std = _pm(row[column])
            assert _close(mean, statistics.mean(diffs)) and _close(std, statistics.stdev(diffs)), (row, column)
        diffs = [h['test_top1'] - b['test_top1'] for h, b in zip(head, base, strict=True)]
        half = t.ppf(0.975, 1) * statistics.stdev(diffs) / math.sqrt(2)
        low, high = map(float, row['95 % interval'].strip('[]').split(', '))
        assert _close(low, statistics.mean(diffs) - half) and _close(high, statistics.mean(diffs) + half)
        shown = low > 0 or high < 0
        assert row['reading'].startswith(('above', 'below') if shown else 'no difference shown')

    table = _table(report, '| run | best val top-1')
    assert len(table) == len(records)  # every run: its epochs, best-val epoch, where it started, what it cost
    for r in records:
        row = table[compare.run_name(r['method'], r['lr'], r['seed'])]
        best = max(range(len(r['history'])), key=lambda k: (r['history'][k]['val_top1'], -k))
        assert int(row['best-val epoch']) == r['best_epoch'] == best + 1
        assert int(row['epochs trained']) == r['epochs_trained'] == len(r['history'])
        assert _close(float(row['best val top-1']), r['val_top1']) and r['val_top1'] == r['history'][best]['val_top1']
        assert abs(float(row['initial loss']) - r['initial_loss']) <= 0.0005
        assert row['stopped'] == ('early' if r['stopped_early'] else row['stopped'])

    for method in chosen:
        assert int(cost[method]['optimiser steps per batch']) == runs[method][0]['train_steps_per_batch'] == 1
        assert _close(
            float(cost[method]['train images/s']), statistics.mean(r['train_images_per_s'] for r in runs[method])
        )
        assert _close(
            float(cost[method]['eval images/s']), statistics.mean(r['eval_images_per_s'] for r in runs[method])
        )
        assert _close(
            float(cost[method]['train peak memory (MiB)']), max(r['train_peak_memory_mb'] for r in runs[method])
        )
        assert _close(
            float(cost[method]['eval peak memory (MiB)']), max(r['eval_peak_memory_mb'] for r in runs[method])
        )

    per_class = _table(report, '| method | against | largest gains')['dpnet']
    assert per_class['against'] == 'probe'
    classes = runs['probe'][0]['test_per_class_accuracy']
    gain = {
        c: statistics.mean(r['test_per_class_accuracy'][c] for r in runs['dpnet'])
        - statistics.mean(r['test_per_class_accuracy'][c] for r in runs['probe'])
        for c in classes
    }
    for cell in (per_class['largest gains'], per_class['largest losses']):
        for item in [] if cell == 'none' else cell.split(', '):
            name, value = item.rsplit(' ', 1)
            assert _close(float(value), gain[name]), item
    for picture in re.findall(r'!\[[^\]]*\]\(([^)]+)\)', report):
        assert (compared / picture).is_file(), picture
    assert (compared / 'bars.png').is_file() and (compared / 'per_class.png').is_file()


def test_rerun_continues_and_refuses_another_budget(compared: tuple[Path, Path]) -> None:
    compared, data = compared
    summary = json.loads((compared / 'summary.json').read_text())
    unchosen = compared / 'runs' / f'dpnet_lr{0.03 if summary["dpnet"]["lr"] == 0.01 else 0.01:g}_seed0.json'
    lost = json.loads(unchosen.read_text())
    unchosen.unlink()  # as if killed after its last checkpoint, before its record
    stamps = {p: p.stat().st_mtime_ns for p in (compared / 'runs').glob('*.json')}
    assert run([*TINY, '--data-dir', str(data), '--output', str(compared), '--explain', '0']) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # the recorded runs were not retrained
    resumed = json.loads(unchosen.read_text())  # the lost one continued from its checkpoint: the same epochs
    assert resumed['history'] == lost['history'] and resumed['val_top1'] == lost['val_top1']
    with pytest.raises(UsageError, match='another budget'):
        run([*TINY, '--data-dir', str(data), '--output', str(compared), '--epochs', '3'])
    with pytest.raises(UsageError, match='splits of other data'):
        run([*TINY, '--data-dir', str(data), '--output', str(compared), '--val-fraction', '0.5'])


def test_val_is_carved_per_class_with_a_fixed_seed() -> None:
    labels = [0] * 10 + [1] * 5 + [2] * 2
    train, val = carve_val(labels, 0.2, seed=0)
    assert sorted(train + val) == list(range(len(labels)))
    assert [sum(labels[i] == c for i in val) for c in range(3)] == [2, 1, 1]
    assert carve_val(labels, 0.2, seed=0) == (train, val)
    assert carve_val(labels, 0.2, seed=1) != (train, val)


def test_default_train_args_are_the_librarys() -> None:
    parser = __import__('argparse').ArgumentParser()
    compare_command.add_arguments(parser)
    args = parser.parse_args(['--synthetic', '--backbone', 'x', '--output', 'o'])
    assert args.train_args.split() == compare.DEFAULT_TRAIN_ARGS


def test_synthetic_writes_the_hard_protocol_with_a_test_split(tmp_path: Path) -> None:
    protocol = {**compare.HARD_SYNTHETIC, 'num_classes': 3, 'train_per_class': 2, 'val_per_class': 1, 'image_size': 96}
    config = compare.CompareConfig(output=str(tmp_path), backbone='x', methods=['plain'], lrs=[0.1], synthetic=protocol)
    root, layout = splits_module.data_source(config)
    assert layout == 'folder' and sorted(p.name for p in Path(root).iterdir()) == ['parts.json', 'test', 'train']
    assert len(create_dataset(root, 'test', layout)) == 3
    splits = compare.prepare_splits(config)
    assert (splits['train_images'], splits['val_images']) == (3, 3)
    assert not (tmp_path / compare.TEST_DATA).exists()


def test_a_disagreement_is_drawn_with_the_heads_explanation(compared: tuple[Path, Path]) -> None:
    out = compared[0]
    splits = json.loads((out / 'splits.json').read_text())
    summary = json.loads((out / 'summary.json').read_text())
    runs = {m: json.loads((out / 'runs' / f'{m}_lr{summary[m]["lr"]:g}_seed0.json').read_text()) for m in summary}
    truth = create_dataset(str(out / compare.TEST_DATA), 'test', 'folder').targets
    runs['probe']['test_predictions'] = [(y + 1) % 4 for y in truth]  # DP-Net's baseline wrong everywhere
    runs['dpnet']['test_predictions'] = list(truth)
    config = compare.CompareConfig(output=str(out), backbone='test_resnet', methods=['plain', 'probe', 'dpnet'],
                                   lrs=[0.01], img_size=64, explain=2)  # fmt: skip
    drawn = report.disagreements(config, summary, list(runs.values()), out / compare.TEST_DATA, splits)
    names = [splits['classes'][y] for y in truth[:2]]
    assert [(d['method'], d['baseline'], d['true'], d['head']) for d in drawn] == [
        ('dpnet', 'probe', name, name) for name in names
    ]
    assert all(d['baseline_says'] != d['true'] and (out / d['png']).stat().st_size > 1000 for d in drawn)


def _visible_device(tag: str, cuda: bool) -> dict[str, object]:
    """A job run in a device worker: what it saw."""
    return dict(tag=tag, cuda=cuda, device=os.environ.get('CUDA_VISIBLE_DEVICES'), pid=os.getpid())


@pytest.mark.slow  # two worker processes, each importing torch
def test_cuda_devices_get_one_pinned_worker_each() -> None:
    """One worker process per CUDA device, pinned by CUDA_VISIBLE_DEVICES, each job run once (no GPU needed: the
    jobs only report what they see)."""
    done = []
    devices = Devices(['cuda:0', 'cuda:3'])
    try:
        devices.run([(_visible_device, (str(k),), done.append) for k in range(6)])
    finally:
        devices.close()
    assert sorted(d['tag'] for d in done) == [str(k) for k in range(6)] and all(d['cuda'] for d in done)
    pids = {d['device']: set() for d in done}
    for d in done:
        pids[d['device']].add(d['pid'])
    assert set(pids) <= {'0', '3'} and all(len(p) == 1 for p in pids.values())
    assert os.getpid() not in {d['pid'] for d in done}


@pytest.mark.parametrize('weights', [False, True], ids=['fresh', 'backbone-weights'])
def test_every_method_the_plain_baseline_included_sees_the_heads_data_config(tmp_path: Path, weights: bool) -> None:
    import timm
    from safetensors.torch import save_file

    from fgvc_zoo.training.loop import build_model

    backbone_weights = None
    if weights:  # the plain model loads the file as its own pretrained weights; the data config must survive that
        backbone_weights = str(tmp_path / 'test_resnet.safetensors')
        save_file(timm.create_model('test_resnet', num_classes=4).state_dict(), backbone_weights)
    config = compare.CompareConfig(
        output=str(tmp_path), backbone='test_resnet', methods=['plain', 'probe', 'lfd', 'iagn'], lrs=[0.01],
        synthetic={},
        backbone_weights=backbone_weights,
    )  # fmt: skip
    own = timm.data.resolve_data_config({}, model=timm.create_model('test_resnet'))
    # NTS-Net's eval: squash to 600 x 600, centre-crop 448, bilinear.
    heads = dict(interpolation='bilinear', crop_pct=448 / 600, crop_mode='squash')
    assert compare.REFERENCE_PREPROCESSING == heads
    assert {k: own[k] for k in heads} != heads, 'the plain backbone would otherwise see other pixels'
    for method in config.methods:
        model = build_model(compare.run_config(config, method, 0.01, 0).resolve(), 4)
        resolved = timm.data.resolve_data_config({}, model=model)
        assert {k: resolved[k] for k in heads} == heads, method


def test_nothing_recorded_names_a_machine_path(compared: tuple[Path, Path]) -> None:
    """Run records, summary, report, each run's results.json, config and card: the output folder and the data are
    named relative to the output, or by name."""
    out, data = compared
    written = [out / 'REPORT.md', out / 'summary.json', *(out / 'runs').glob('*.json')]
    for run_dir in (p for p in (out / 'runs').iterdir() if p.is_dir()):
        written += [run_dir / 'results.json', run_dir / 'config.json', run_dir / 'README.md']
    machine = {str(p) for p in (out, data, out.resolve(), data.resolve())}
    for path in written:
        text = path.read_text()
        assert not [m for m in machine if m in text], path
    record = json.loads(next((out / 'runs').glob('plain_*.json')).read_text())
    assert ' --data-dir data ' in record['command'] and ' --output runs/plain_lr' in record['command']


def test_the_estimate_is_printed_before_the_first_run(compared: tuple[Path, Path]) -> None:
    log = (compared[0] / 'log.txt').read_text().splitlines()
    assert re.fullmatch(r'About \d+ minutes for 9 runs \(at most 2 epochs each.*plain [\d.]+ s, probe [\d.]+ s, '
                        r'dpnet [\d.]+ s\.', log[0]), log[0]  # fmt: skip


@pytest.mark.parametrize(
    'flags, expected',
    [
        ([], dict(epochs=8, seeds=2, lrs=[0.01], img_size=96, patience=3, num_classes=6)),
        (['--epochs', '6', '--synthetic-args', 'num_classes=5'], dict(epochs=6, seeds=2, num_classes=5)),
    ],
    ids=['quick', 'flags-win'],
)
def test_the_quick_preset_fills_what_the_command_line_leaves(flags, expected, monkeypatch) -> None:
    seen = {}
    monkeypatch.setattr(compare, 'run_compare', lambda config: seen.setdefault('config', config))
    argv = ['compare', '--synthetic', '--backbone', 'test_resnet', '--output', 'o', '--preset', 'quick', *flags]
    assert run(argv) == 0
    config = seen['config']
    for key, value in expected.items():
        assert (config.synthetic[key] if key == 'num_classes' else getattr(config, key)) == value, key


def test_a_method_added_to_a_comparison_keeps_the_records_of_the_others(tmp_path: Path) -> None:
    """The budget a record must match holds the model args of its own method only."""
    from fgvc_zoo.compare.runner import load_records

    def config(method_args: dict[str, str]) -> compare.CompareConfig:
        return compare.CompareConfig(output=str(tmp_path), backbone='test_resnet', methods=['probe', 'dpnet', 'lfd'],
                                     lrs=[0.01], synthetic={}, method_args=method_args)  # fmt: skip

    first = config({'dpnet': 'pool=max'})
    (tmp_path / compare.RUNS).mkdir()
    record = dict(method='dpnet', lr=0.01, seed=0, budget=json.loads(json.dumps(first.budget())))
    (tmp_path / compare.RUNS / 'dpnet_lr0.01_seed0.json').write_text(json.dumps(record))
    widened = config({'dpnet': 'pool=max', 'lfd': 'zoom_size=32'})
    assert list(load_records(widened, json.loads(json.dumps(widened.budget())))) == [('dpnet', 0.01, 0)]
    changed = config({'dpnet': 'pool=avg', 'lfd': 'zoom_size=32'})
    with pytest.raises(UsageError, match=r"another budget \(differs in \['method_args'\]\)"):
        load_records(changed, json.loads(json.dumps(changed.budget())))


def test_frozen_methods_train_on_cached_maps_and_the_report_says_so(tmp_path: Path) -> None:
    """`--cache-frozen`: the probe and frozen DP-Net train with the trainer's `--cache-features`, plain on images;
    each frozen method's maps are computed by its first run and reused by its second (the same backbone weights:
    seed 0 and 1 of a random `test_resnet` would differ, so the runs load one weights file); the report states which
    methods were cached, their augmentation and the maps' cost."""
    data = _tiny_data(tmp_path / 'data')
    out, weights = tmp_path / 'out', tmp_path / 'test_resnet.safetensors'
    save_file(timm.create_model('test_resnet').state_dict(), str(weights))
    tiny = [*TINY, '--lrs', '0.01', '--seeds', '2', '--epochs', '1', '--explain', '0', '--cache-frozen', 'flip']
    assert run([*tiny, '--data-dir', str(data), '--output', str(out), '--backbone-weights', str(weights)]) == 0
    records = {p.stem: json.loads(p.read_text()) for p in (out / 'runs').glob('*.json')}
    assert {n: '--cache-features flip' in r['command'] for n, r in records.items()} == {
        f'{m}_lr0.01_seed{s}': m != 'plain' for m in ('plain', 'probe', 'dpnet') for s in (0, 1)
    }
    assert all(r['budget']['cache_frozen'] == 'flip' for r in records.values())
    computed = {n: (r['frozen_maps_s'] or 0) > 0 for n, r in records.items()}
    assert computed == {n: n.endswith('seed0') and not n.startswith('plain') for n in records}
    report = (out / 'REPORT.md').read_text()
    assert "probe, dpnet trained on their frozen backbone's maps computed once" in report
    assert 'plain trained on images freshly cropped and flipped' in report
    computed_once = r'probe: of the 2 runs that record it, 1 computed them \(\d+\.\d+ s in all, .*\) and 1 reused'
    assert re.search(computed_once, report)


@pytest.mark.parametrize(
    ('method', 'method_args', 'cached'),
    [('plain', None, 'off'), ('probe', None, 'crops'), ('dpnet', None, 'crops'), ('lfd', None, 'off'),
     ('dpnet', 'freeze_backbone=false', 'off')],
)  # fmt: skip
def test_only_methods_on_a_frozen_map_are_cached(method: str, method_args: str | None, cached: str) -> None:
    args = {method: method_args} if method_args else {}
    config = compare.CompareConfig(output='o', backbone='test_resnet', methods=[method], lrs=[0.01], synthetic={},
                                   method_args=args, cache_frozen='crops')  # fmt: skip
    assert compare.run_config(config, method, 0.01, 0).cache_features == cached
    assert 'cache_frozen' not in dataclasses.replace(config, cache_frozen='off').budget()
