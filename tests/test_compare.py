"""`fgvc-zoo compare`: the report's numbers are those of its run records, the test split is read only after every
run has trained, the val split is carved per class, and a rerun continues instead of retraining."""

import json
import math
import os
import re
import statistics
from pathlib import Path

import pytest
from scipy.stats import t

from fgvc_zoo import compare
from fgvc_zoo.cli import run
from fgvc_zoo.commands import compare as compare_command
from fgvc_zoo.data import carve_val, create_dataset, make_synthetic_fgvc
from fgvc_zoo.errors import UsageError

TINY = [
    'compare', '--backbone', 'test_resnet', '--methods', 'plain', 'dpnet', '--epochs', '1', '--lrs', '0.01', '0.03',
    '--seeds', '2', '--batch-size', '8', '--img-size', '64', '--devices', 'cpu', '--explain', '1',
]  # fmt: skip
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
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    names = [c.strip() for c in lines[start].strip('|').split('|')]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith('|'):
            break
        cells = [c.strip() for c in line.strip('|').split('|')]
        rows[cells[0]] = dict(zip(names, cells, strict=True))
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
    train_job = compare._train_job

    def spying_train_job(*args, **kwargs):
        seen_test.append((out / compare.TEST_DATA).exists())
        return train_job(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compare, '_train_job', spying_train_job)
        assert run([*TINY, '--data-dir', str(data), '--output', str(out)]) == 0
    assert seen_test == [False] * 6, 'a run trained after the test split was linked (or not 2 lrs + 1 seed each)'
    return out, data


def test_report_numbers_are_the_records(compared: tuple[Path, Path]) -> None:
    compared = compared[0]
    report = (compared / 'REPORT.md').read_text()
    records = [json.loads(p.read_text()) for p in sorted((compared / 'runs').glob('*.json'))]
    assert len(records) == 6  # per method: lrs 0.01 and 0.03 at seed 0, seed 1 at the chosen lr

    sweep = _table(report, '| method | lr chosen')
    tests = _table(report, '| method | test top-1')
    cost = _table(report, '| method | train images/s')
    chosen = {}
    for method in ('plain', 'dpnet'):
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

    for column, key in (('top-1 - plain', 'test_top1'), ('mean per-class - plain', 'test_mean_class_accuracy')):
        diffs = [h[key] - p[key] for h, p in zip(runs['dpnet'], runs['plain'], strict=True)]
        mean, std = _pm(tests['dpnet'][column])
        assert _close(mean, statistics.mean(diffs)) and _close(std, statistics.stdev(diffs)), column
    diffs = [h['test_top1'] - p['test_top1'] for h, p in zip(runs['dpnet'], runs['plain'], strict=True)]
    half = t.ppf(0.975, 1) * statistics.stdev(diffs) / math.sqrt(2)
    low, high = map(float, tests['dpnet']['95 % interval'].strip('[]').split(', '))
    assert _close(low, statistics.mean(diffs) - half) and _close(high, statistics.mean(diffs) + half)
    shown = low > 0 or high < 0
    assert tests['dpnet']['reading'].startswith(('above', 'below') if shown else 'no difference shown')

    for method in chosen:
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

    per_class = _table(report, '| method | largest gains')['dpnet']
    classes = runs['plain'][0]['test_per_class_accuracy']
    gain = {
        c: statistics.mean(r['test_per_class_accuracy'][c] for r in runs['dpnet'])
        - statistics.mean(r['test_per_class_accuracy'][c] for r in runs['plain'])
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
        run([*TINY, '--data-dir', str(data), '--output', str(compared), '--epochs', '2'])
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
    root, layout = compare._source(config)
    assert layout == 'folder' and sorted(p.name for p in Path(root).iterdir()) == ['parts.json', 'test', 'train']
    assert len(create_dataset(root, 'test', layout)) == 3
    splits = compare.prepare_splits(config)
    assert (splits['train_images'], splits['val_images']) == (3, 3)
    assert not (tmp_path / compare.TEST_DATA).exists()


def test_a_disagreement_is_drawn_with_the_heads_explanation(compared: tuple[Path, Path]) -> None:
    out = compared[0]
    splits = json.loads((out / 'splits.json').read_text())
    summary = json.loads((out / 'summary.json').read_text())
    runs = [json.loads((out / 'runs' / f'{m}_lr{summary[m]["lr"]:g}_seed0.json').read_text()) for m in summary]
    truth = create_dataset(str(out / compare.TEST_DATA), 'test', 'folder').targets
    runs[0]['test_predictions'] = [(y + 1) % 4 for y in truth]  # plain wrong everywhere: every image disagrees
    runs[1]['test_predictions'] = list(truth)
    config = compare.CompareConfig(output=str(out), backbone='test_resnet', methods=['plain', 'dpnet'], lrs=[0.01],
                                   img_size=64, explain=2)  # fmt: skip
    drawn = compare._disagreements(config, summary, runs, out / compare.TEST_DATA, splits)
    names = [splits['classes'][y] for y in truth[:2]]
    assert [(d['method'], d['true'], d['head']) for d in drawn] == [('dpnet', name, name) for name in names]
    assert all(d['plain'] != d['true'] and (out / d['png']).stat().st_size > 1000 for d in drawn)


def _visible_device(tag: str, cuda: bool) -> dict[str, object]:
    """A job run in a device worker: what it saw."""
    return dict(tag=tag, cuda=cuda, device=os.environ.get('CUDA_VISIBLE_DEVICES'), pid=os.getpid())


@pytest.mark.slow  # two worker processes, each importing torch
def test_cuda_devices_get_one_pinned_worker_each() -> None:
    """One worker process per CUDA device, pinned by CUDA_VISIBLE_DEVICES, each job run once (no GPU needed: the
    jobs only report what they see)."""
    done = []
    devices = compare._Devices(['cuda:0', 'cuda:3'])
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

    from fgvc_zoo.commands.common import ArgumentParser
    from fgvc_zoo.training.config import add_train_arguments, resolve_config
    from fgvc_zoo.training.loop import build_model

    backbone_weights = None
    if weights:  # the plain model loads the file as its own pretrained weights; the data config must survive that
        backbone_weights = str(tmp_path / 'test_resnet.safetensors')
        save_file(timm.create_model('test_resnet', num_classes=4).state_dict(), backbone_weights)
    config = compare.CompareConfig(
        output=str(tmp_path), backbone='test_resnet', methods=['plain', 'lfd', 'iagn'], lrs=[0.01], synthetic={},
        backbone_weights=backbone_weights,
    )  # fmt: skip
    own = timm.data.resolve_data_config({}, model=timm.create_model('test_resnet'))
    # NTS-Net's eval: squash to 600 x 600, centre-crop 448, bilinear.
    heads = dict(interpolation='bilinear', crop_pct=448 / 600, crop_mode='squash')
    assert {k: own[k] for k in heads} != heads, 'the plain backbone would otherwise see other pixels'
    parser = ArgumentParser()
    add_train_arguments(parser)
    for method in config.methods:
        argv = compare.train_argv(config, method, 0.01, 0)
        model = build_model(resolve_config(parser.parse_args(argv)), 4)
        resolved = timm.data.resolve_data_config({}, model=model)
        assert {k: resolved[k] for k in heads} == heads, method
