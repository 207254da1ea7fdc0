"""`fgvc-zoo predict SOURCE... --output FILE`: folders, globs and path lists in; one row per image streamed to CSV,
JSONL or Parquet, errors included; a killed run resumed with every image exactly once; shards merged in order."""

import csv
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from fgvc_zoo.cli import run
from fgvc_zoo.errors import UsageError
from fgvc_zoo.hub import load_model, save_pretrained
from fgvc_zoo.hub.onnx import export_onnx
from fgvc_zoo.inference.predict import (
    RowWriter,
    TorchRunner,
    expand_sources,
    merge_rows,
    predict_to_file,
    read_rows,
    shard,
)
from fgvc_zoo.runtime import load_for_inference

NAMES = ['ant', 'bee', 'cat']
REPO = Path(__file__).resolve().parents[1]


def _bomb_png(path: Path, side: int = 100_000) -> None:
    """A valid PNG header claiming side x side pixels (far above PIL's decompression-bomb limit), no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    header = struct.pack('>IIBBBBB', side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IEND', b''))


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp('model')
    save_pretrained(timm.create_model('lfd', backbone='test_resnet', num_classes=3), folder, label_names=NAMES)
    return folder


@pytest.fixture
def image_folder(tmp_path):
    """6 images in two levels, a text file and 4 unreadable images: zero-byte, not an image, truncated, a bomb."""
    root = tmp_path / 'images'
    (root / 'sub').mkdir(parents=True)
    good = []
    for k in range(6):
        path = root / ('sub' if k % 2 else '') / f'img{k}.{"png" if k % 3 else "jpg"}'
        Image.new('RGB', (64 + 8 * k, 48), (40 * k, 250 - 40 * k, 90)).save(path)
        good.append(str(path))
    (root / 'notes.txt').write_text('not an image, and not an image name: skipped')
    bad = {'empty.jpg': 'zero-byte file', 'text.png': 'UnidentifiedImageError', 'cut.jpg': 'OSError'}
    (root / 'empty.jpg').write_bytes(b'')
    (root / 'text.png').write_text('this is text')
    whole = root / 'img0.jpg'
    (root / 'cut.jpg').write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    _bomb_png(root / 'sub' / 'bomb.png')
    bad['sub/bomb.png'] = 'decompression-bomb sized'
    return root, good, {str(root / name): reason for name, reason in bad.items()}


def _flags(folder: Path) -> list[str]:
    return ['--checkpoint', str(folder), '--img-size', '64', '--topk', '2', '--batch-size', '3', '--workers', '1']


def test_sources_are_folders_globs_lists_and_paths_each_once(image_folder, tmp_path):
    root, good, bad = image_folder
    every = expand_sources([str(root)])
    assert every == sorted(good + list(bad))  # recursive, image names only, sorted
    listing = tmp_path / 'list.txt'
    listing.write_text(f'# a comment\n{good[3]}\n\n  {good[0]}\n')
    missing = str(tmp_path / 'gone.jpg')
    sources = [listing.as_posix(), str(root / '*.png'), good[0], missing]
    pngs = sorted(str(p) for p in root.glob('*.png'))
    assert expand_sources(sources) == [good[3], good[0], *pngs, missing]  # good[0] once, the missing path kept
    (tmp_path / 'empty_folder').mkdir()
    for source in [str(tmp_path / 'empty_folder'), str(tmp_path / '*.gif'), str(tmp_path / 'nolist.txt')]:
        with pytest.raises(UsageError, match='empty_folder|pattern matches no image|cannot read'):
            expand_sources([source])


def test_a_folder_linked_into_its_own_tree_is_walked_once(tmp_path):
    """A link back up the tree (a loop) or to a sibling lists no image twice; a link out of the tree is followed."""
    root, outside = tmp_path / 't', tmp_path / 'outside'
    for folder in (root / 'sub', outside):
        folder.mkdir(parents=True)
    for path in (root / 'a.jpg', root / 'sub' / 'b.jpg', outside / 'c.jpg'):
        Image.new('RGB', (8, 8)).save(path)
    (root / 'sub' / 'up').symlink_to('..')
    (root / 'again').symlink_to('sub')  # sorts before sub: the real folder still gives the names
    (root / 'linked').symlink_to(outside)
    assert expand_sources([str(root)]) == [
        str(root / 'a.jpg'),
        str(root / 'linked' / 'c.jpg'),
        str(root / 'sub' / 'b.jpg'),
    ]


def test_folder_to_csv_one_row_per_image_with_the_error_of_each_unreadable_file(exported, image_folder, tmp_path):
    root, good, bad = image_folder
    output = tmp_path / 'preds.csv'
    assert run(['predict', str(root), *_flags(exported), '--output', str(output)]) == 1  # some failed
    with open(output, newline='') as f:
        records = list(csv.DictReader(f))
    assert [r['path'] for r in records] == expand_sources([str(root)])
    assert list(records[0]) == [
        'path',
        'index_1',
        'label_1',
        'probability_1',
        'index_2',
        'label_2',
        'probability_2',
        'error',
    ]
    by_path = {r['path']: r for r in records}
    for path, reason in bad.items():
        assert reason in by_path[path]['error'] and path in by_path[path]['error'] and by_path[path]['label_1'] == ''
    for path in good:
        r = by_path[path]
        assert r['error'] == '' and r['label_1'] == NAMES[int(r['index_1'])] and r['label_2'] in NAMES
        assert 1 >= float(r['probability_1']) >= float(r['probability_2']) > 0
    # the same model through the in-memory path gives the same top-1
    model, transform, _, _ = load_for_inference(str(exported), img_size=64, device='cpu')
    with torch.no_grad():
        logits = model(torch.stack([transform(Image.open(p).convert('RGB')) for p in good]))
    assert [int(by_path[p]['index_1']) for p in good] == logits.argmax(1).tolist()


def test_csv_header_ends_with_the_error_column(exported, image_folder, tmp_path):
    root, _, _ = image_folder
    output = tmp_path / 'preds.csv'
    run(['predict', str(root), *_flags(exported), '--output', str(output), '--topk', '1'])
    assert output.read_text().splitlines()[0] == 'path,index_1,label_1,probability_1,error'


@pytest.mark.parametrize('suffix', ['.jsonl', '.parquet'])
def test_jsonl_and_parquet_hold_the_same_rows_as_csv(exported, image_folder, tmp_path, suffix):
    root, _, bad = image_folder
    run(['predict', str(root), *_flags(exported), '--output', str(tmp_path / 'preds.csv')])
    assert run(['predict', str(root), *_flags(exported), '--output', str(tmp_path / f'preds{suffix}')]) == 1
    rows, expected = read_rows(tmp_path / f'preds{suffix}'), read_rows(tmp_path / 'preds.csv')
    assert [r['path'] for r in rows] == [r['path'] for r in expected]
    for row, want in zip(rows, expected, strict=True):
        assert row['indices'] == want['indices'] and row['labels'] == want['labels'] and row['error'] == want['error']
        assert row['probabilities'] == pytest.approx(want['probabilities'], abs=1e-6)
    assert not list(tmp_path.glob('*.part*'))  # the Parquet run's stream file is gone once the table is written
    if suffix == '.jsonl':
        first = json.loads((tmp_path / 'preds.jsonl').read_text().splitlines()[0])
        assert list(first) == ['path', 'indices', 'labels', 'probabilities', 'error']


def test_an_image_that_vanishes_after_listing_gets_its_row_and_the_run_goes_on(exported, image_folder, tmp_path):
    root, good, _ = image_folder
    paths = expand_sources([str(root)])
    os.remove(good[2])  # listed, then gone before the loader reaches it
    model, transform, names, _ = load_for_inference(str(exported), img_size=64, device='cpu')
    errors = []
    failed = predict_to_file(
        paths, tmp_path / 'p.jsonl', TorchRunner(model, torch.device('cpu')), transform, names, 2, 4, 1,
        progress=False, on_error=errors.append,
    )  # fmt: skip
    rows = read_rows(tmp_path / 'p.jsonl')
    assert [r['path'] for r in rows] == paths and failed == 5 == len(errors)
    assert 'file not found' in next(r['error'] for r in rows if r['path'] == good[2])


@pytest.fixture
def non_utf8_folder(tmp_path):
    """A good image and a copy named in Latin-1 (`caf\\xe9.jpg`), as cameras, zip files and Windows shares give."""
    root = tmp_path / 'latin1'
    root.mkdir()
    Image.new('RGB', (32, 32), (200, 30, 60)).save(root / 'b.jpg')
    try:
        shutil.copy(root / 'b.jpg', os.path.join(os.fsencode(root), b'caf\xe9.jpg'))
    except OSError:
        pytest.skip('this file system refuses names that are not UTF-8')
    return root


@pytest.mark.parametrize('suffix', ['.csv', '.jsonl', '.parquet'])
def test_a_file_name_that_is_not_utf8_gets_its_row_and_resume_passes_it(exported, non_utf8_folder, tmp_path, suffix):
    output = tmp_path / f'x{suffix}'
    assert run(['predict', str(non_utf8_folder), *_flags(exported), '--output', str(output)]) == 0
    rows = read_rows(output)
    assert [r['path'] for r in rows] == [str(non_utf8_folder / 'b.jpg'), str(non_utf8_folder / 'caf\\xe9.jpg')]
    assert rows[0]['indices'] == rows[1]['indices'] and rows[1]['error'] is None  # the same image, both predicted
    if suffix != '.parquet':
        output.read_bytes().decode('utf-8')  # the table stays UTF-8: the name's byte is spelled \xe9
    assert run(['predict', str(non_utf8_folder), *_flags(exported), '--output', str(output), '--resume']) == 0
    assert read_rows(output) == rows  # the row is known: nothing redone, nothing duplicated


def test_printed_predictions_spell_a_name_that_is_not_utf8_as_the_table_does(exported, non_utf8_folder, capsys):
    assert run(['predict', str(non_utf8_folder), *_flags(exported)]) == 0
    assert f'{non_utf8_folder / "caf"}\\xe9.jpg\n  1. ' in capsys.readouterr().out
    assert run(['predict', str(non_utf8_folder), *_flags(exported), '--json']) == 0
    assert json.loads(capsys.readouterr().out)[1]['image'] == str(non_utf8_folder / 'caf\\xe9.jpg')


def test_an_existing_output_is_never_overwritten_without_resume(exported, image_folder, tmp_path):
    root, _, _ = image_folder
    output = tmp_path / 'preds.csv'
    output.write_text('precious\n')
    with pytest.raises(UsageError, match='pass --resume'):
        run(['predict', str(root), *_flags(exported), '--output', str(output)])
    assert output.read_text() == 'precious\n'
    with pytest.raises(UsageError, match='not a table written by'):
        run(['predict', str(root), *_flags(exported), '--output', str(output), '--resume'])


def test_resume_drops_a_row_cut_mid_write_and_redoes_only_that_image(exported, image_folder, tmp_path):
    root, _, _ = image_folder
    output = tmp_path / 'preds.csv'
    run(['predict', str(root), *_flags(exported), '--output', str(output)])
    lines = output.read_text().splitlines(keepends=True)
    output.write_text(''.join(lines[:4]) + lines[4][:12])  # header, 3 rows and a partial 4th, as a kill leaves it
    with pytest.raises(UsageError, match='with --topk 2'):
        run(['predict', str(root), *_flags(exported), '--output', str(output), '--resume', '--topk', '3'])
    run(['predict', str(root), *_flags(exported), '--output', str(output), '--resume'])
    assert output.read_text().splitlines(keepends=True) == lines


def test_resume_knows_each_image_however_its_folder_is_spelled(exported, image_folder, tmp_path, monkeypatch):
    root, good, _ = image_folder
    monkeypatch.chdir(root.parent)
    output = tmp_path / 'preds.csv'
    run(['predict', 'images', *_flags(exported), '--output', str(output)])
    table = output.read_text()
    for spelling in ('./images', 'images/', str(root), 'images/sub/..'):
        assert run(['predict', spelling, *_flags(exported), '--output', str(output), '--resume']) == 1  # 4 errors
        assert output.read_text() == table  # no image redone, no row duplicated
    assert expand_sources(['images/img0.jpg', './images/img0.jpg', 'images//img0.jpg']) == ['images/img0.jpg']


def test_resuming_a_finished_table_says_there_is_nothing_left_to_predict(exported, image_folder, tmp_path, capsys):
    root, _, _ = image_folder
    output = tmp_path / 'preds.csv'
    run(['predict', str(root), *_flags(exported), '--output', str(output)])
    assert 'images in' in capsys.readouterr().err
    run(['predict', str(root), *_flags(exported), '--output', str(output), '--resume'])
    assert capsys.readouterr().err.splitlines()[-1] == f'{output} has a row for every image: nothing left to predict.'


def test_a_killed_run_resumes_with_every_image_exactly_once(exported, tmp_path):
    """A real process, killed with SIGKILL once some rows are on disk; --resume completes the table."""
    root = tmp_path / 'big'
    root.mkdir()
    gradient = Image.linear_gradient('L').resize((1600, 1600)).convert('RGB')  # ~0.1 s a decode and resize
    for k in range(40):
        gradient.rotate(k).save(root / f'{k:03d}.jpg', quality=90)
    (root / '010.jpg').write_bytes(b'')  # an error row must survive the kill too
    output = tmp_path / 'preds.jsonl'
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': '1'}
    command = [sys.executable, '-m', 'fgvc_zoo.cli', 'predict', str(root), *_flags(exported), '--output', str(output)]
    process = subprocess.Popen([*command, '--batch-size', '2'], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if output.exists() and output.read_text().count('\n') >= 14:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    before = [json.loads(line)['path'] for line in output.read_text().splitlines()]
    assert 14 <= len(before) < 40  # killed mid-way
    assert run(['predict', str(root), *_flags(exported), '--output', str(output), '--resume', '--batch-size', '4']) == 1
    rows = read_rows(output)
    assert [r['path'] for r in rows] == sorted(str(p) for p in root.glob('*.jpg'))  # each once, in order
    assert [r['path'] for r in rows[: len(before)]] == before  # nothing written was lost
    assert [r['path'] for r in rows if r['error']] == [str(root / '010.jpg')]


def test_shards_cover_every_path_once_and_merge_back_in_source_order():
    sources = [f'{k}.jpg' for k in range(11)]
    shards = [shard(sources, rank, 3) for rank in range(3)]
    assert sorted(sum(shards, [])) == sorted(sources) and max(map(len, shards)) - min(map(len, shards)) <= 1
    rows = [[{'path': p, 'error': None} for p in reversed(part)] for part in shards]
    earlier = [{'path': 'old.jpg', 'error': None}, {'path': '4.jpg', 'error': 'x'}]
    merged = merge_rows([earlier, *rows], sources)
    assert [r['path'] for r in merged] == ['old.jpg', *sources]
    assert merged[5]['error'] == 'x'  # the earlier row of a path wins over a later duplicate


def test_one_process_predicts_every_image_and_several_need_the_one_output_table(monkeypatch):
    from fgvc_zoo.inference.predict import process_shard

    monkeypatch.delenv('WORLD_SIZE', raising=False)
    assert process_shard('cpu', None)[:3] == (0, 1, 'cpu')
    monkeypatch.setenv('WORLD_SIZE', '2')  # accelerate launch / torchrun: each process one shard of the rows
    with pytest.raises(UsageError, match='several processes write their rows to one table: pass --output FILE'):
        process_shard('cpu', None)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.xdist_group('multiprocess')  # with the other multi-process tests, on one xdist worker
def test_two_processes_under_torchrun_write_one_table_in_source_order(exported, image_folder, tmp_path):
    root, _, bad = image_folder
    output = tmp_path / 'preds.csv'
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': '1'}
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
    command = [*torchrun, '-m', 'fgvc_zoo.cli', 'predict', str(root), *_flags(exported), '--output', str(output)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=500)
    assert result.returncode == 1, result.stderr[-3000:]  # the unreadable files
    rows = read_rows(output)
    assert [r['path'] for r in rows] == expand_sources([str(root)])
    assert {r['path'] for r in rows if r['error']} == set(bad)
    assert not list(tmp_path.glob('*.part*'))
    run(['predict', str(root), *_flags(exported), '--output', str(tmp_path / 'one.csv')])  # one process
    single = read_rows(tmp_path / 'one.csv')
    assert [(r['indices'], r['error']) for r in rows] == [(r['indices'], r['error']) for r in single]
    for row, want in zip(rows, single, strict=True):
        assert row['probabilities'] == pytest.approx(want['probabilities'], abs=1e-6)


@pytest.mark.parametrize('suffix', ['.csv', '.jsonl'])
def test_each_batch_is_on_disk_once_written(tmp_path, suffix):
    """What a kill leaves: every batch written so far is readable by another reader while the writer is open."""
    writer = RowWriter(tmp_path / f'p{suffix}', topk=1)
    rows = [
        {'path': f'{k}.jpg', 'indices': [1], 'labels': ['b'], 'probabilities': [0.5], 'error': None} for k in range(3)
    ]
    writer.write(rows[:2])
    assert [r['path'] for r in read_rows(tmp_path / f'p{suffix}')] == ['0.jpg', '1.jpg']
    writer.write(rows[2:])
    assert read_rows(tmp_path / f'p{suffix}') == rows
    writer.close()


def test_onnx_runtime_gives_the_rows_of_the_pytorch_model(exported, image_folder, tmp_path):
    """--onnx: onnxruntime with the preprocessing and names the export recorded, no model folder needed."""
    pytest.importorskip('onnxruntime')
    root, _, _ = image_folder
    model = load_model(str(exported))
    onnx_path = export_onnx(model, tmp_path / 'model.onnx', img_size=64, label_names=NAMES)
    flags = _flags(exported)[2:]  # no --checkpoint
    assert run(['predict', str(root), '--onnx', str(onnx_path), *flags, '--output', str(tmp_path / 'o.csv')]) == 1
    run(['predict', str(root), *_flags(exported), '--output', str(tmp_path / 't.csv')])
    onnx_rows, torch_rows = read_rows(tmp_path / 'o.csv'), read_rows(tmp_path / 't.csv')
    assert [(r['path'], r['labels'], r['error']) for r in onnx_rows] == [
        (r['path'], r['labels'], r['error']) for r in torch_rows
    ]
    for row, want in zip(onnx_rows, torch_rows, strict=True):
        assert row['probabilities'] == pytest.approx(want['probabilities'], abs=1e-4)
    with pytest.raises(UsageError, match='exported for 64x64'):
        run(['predict', str(root), '--onnx', str(onnx_path), '--img-size', '96', '--output', str(tmp_path / 'x.csv')])


@pytest.mark.parametrize('flag', [['--channels-last'], ['--amp'], ['--amp', 'float16']])
def test_runtime_options_keep_the_predictions(exported, image_folder, tmp_path, flag):
    root, _, _ = image_folder
    run(['predict', str(root), *_flags(exported), '--output', str(tmp_path / 'plain.jsonl')])
    run(['predict', str(root), *_flags(exported), *flag, '--output', str(tmp_path / 'option.jsonl')])
    plain, option = read_rows(tmp_path / 'plain.jsonl'), read_rows(tmp_path / 'option.jsonl')
    tolerance = 1e-5 if flag == ['--channels-last'] else 0.03  # autocast: bfloat16 / float16 on the CPU
    for row, want in zip(option, plain, strict=True):
        assert row['path'] == want['path'] and row['error'] == want['error']
        assert row['probabilities'] == pytest.approx(want['probabilities'], abs=tolerance)
