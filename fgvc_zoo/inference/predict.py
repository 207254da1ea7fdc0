"""The top-k classes of images with their names and probabilities (`fgvc-zoo predict`), from a handful of images
to a million: sources (images, folders, globs, lists of paths) expanded to files, decoded by data loader workers,
run in batches on the device (PyTorch, or onnxruntime on an ONNX export), and streamed as one row per image to a
CSV or JSONL file that a killed run resumes; Parquet written from the finished rows; shards per process under
`accelerate launch`, merged in source order.

A row is `{'path', 'indices', 'labels', 'probabilities', 'error'}`: the top-k best first, or the error of a file
that could not be read (missing, zero-byte, not an image, decompression-bomb sized), and then empty lists. A table
is UTF-8 throughout: a file name whose bytes are not (a camera's, a zip file's, a Windows share's) is written with
those bytes as `\\xNN` (`table_path`). Paths are compared (`--resume`, merging, each image once) in that form,
made absolute: `./tiny3/a.jpg` and `tiny3/a.jpg` are one image, its row keeps the first spelling.
"""

import contextlib
import csv
import glob
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..data import UnreadableImageError, create_transforms, load_image, resolve_fgvc_data_config
from ..errors import UsageError
from ..runtime import resolve_device

__all__ = [
    'predict',
    'format_predictions',
    'topk_rows',
    'LIST_EXTENSIONS',
    'TABLE_EXTENSIONS',
    'expand_sources',
    'table_path',
    'ImageFiles',
    'collate_images',
    'TorchRunner',
    'OnnxRunner',
    'iter_predictions',
    'RowWriter',
    'read_rows',
    'write_table',
    'shard',
    'merge_rows',
    'predict_to_file',
    'ProcessShard',
    'process_shard',
]

LIST_EXTENSIONS = ('.txt', '.lst')  # a source with one of these is a text file of image paths, one a line
TABLE_EXTENSIONS = ('.csv', '.jsonl', '.parquet')
Row = dict[str, Any]


@torch.no_grad()
def predict(
    model: nn.Module,
    images: Sequence[Image.Image],
    transform: Callable,
    label_names: Sequence[str] | None = None,
    topk: int = 5,
) -> list[list[dict[str, Any]]]:
    """Per image, the `topk` most probable classes, best first: {'index', 'label', 'probability'} (softmax)."""
    model.eval()
    device = next(model.parameters()).device
    logits = model(torch.stack([transform(image) for image in images]).to(device))
    return [
        [
            {'index': k, 'label': name, 'probability': p}
            for k, name, p in zip(row['indices'], row['labels'], row['probabilities'], strict=True)
        ]
        for row in topk_rows(logits, label_names, topk)
    ]


def topk_rows(logits: torch.Tensor, label_names: Sequence[str] | None, topk: int) -> list[Row]:
    """Per row of `logits`: {'indices', 'labels', 'probabilities'} of the `topk` most probable classes (softmax),
    best first; without names a class's label is its index."""
    probs = logits.float().softmax(dim=1).cpu()
    if label_names is not None and len(label_names) != probs.shape[1]:
        raise ValueError(f'{len(label_names)} label names for a model with {probs.shape[1]} classes.')
    names = list(label_names) if label_names is not None else [str(k) for k in range(probs.shape[1])]
    values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
    return [
        {'indices': row_indices, 'labels': [names[k] for k in row_indices], 'probabilities': row_values}
        for row_indices, row_values in zip(indices.tolist(), values.tolist(), strict=True)
    ]


def format_predictions(paths: Sequence[str], predictions: Sequence[Sequence[dict[str, Any]]]) -> str:
    """Text output: the image path, then one '  rank. label  probability%' line per class."""
    lines = []
    for path, top in zip(paths, predictions, strict=False):
        lines.append(table_path(path))
        lines += [f'  {rank}. {p["label"]}  {100 * p["probability"]:.2f}%' for rank, p in enumerate(top, 1)]
    return '\n'.join(lines)


def table_path(path: str) -> str:
    """`path` as tables and printouts spell it: valid UTF-8, the bytes of a name that is not UTF-8 (which Python holds
    as lone surrogates, PEP 383) written as `\\xNN`, where a strict UTF-8 writer would abort the run."""
    return path.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')


def _path_key(path: str) -> str:
    """What two spellings of one path have in common (`./a/b.jpg`, `a//b.jpg`, `/cwd/a/b.jpg`), in table form."""
    return os.path.abspath(table_path(path))


def _is_image_name(path: str) -> bool:
    return path.lower().endswith(IMG_EXTENSIONS)


def _folder_images(folder: str) -> list[str]:
    """The image files under `folder`, recursively, sorted. Symlinked folders are followed, but each real folder is
    walked once, under its first name (its real one where it is in the tree): a link back up the tree would
    otherwise list every image again at each turn of the loop, until the path grows too long."""
    seen: set[str] = set()
    found = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        dirs.sort(key=lambda name: (os.path.islink(os.path.join(root, name)), name))  # real folders first
        found += [os.path.join(root, name) for name in names if _is_image_name(name)]
    return sorted(found)


def expand_sources(sources: Sequence[str]) -> list[str]:
    """The image paths of `sources`, in order, each once: a folder gives its image files (torchvision's
    extensions) recursively in sorted order (each real folder once), a glob (`*`, `?`, `[`) its sorted matches, a
    `.txt`/`.lst` file its lines (paths as written; blank lines and `#` comments skipped), anything else is an image
    path, kept even if it does not exist (its row says so). A folder or glob with no image, or a missing list file,
    is a usage error."""
    paths: list[str] = []
    for source in sources:
        if os.path.isdir(source):
            found = _folder_images(source)
            if not found:
                raise UsageError(f'{source}: a folder with no image file ({", ".join(IMG_EXTENSIONS)}) in it.')
            paths += found
        elif source.lower().endswith(LIST_EXTENSIONS):
            try:
                lines = [os.fsdecode(line) for line in Path(source).read_bytes().splitlines()]  # names as os.walk's
            except OSError as e:
                raise UsageError(f'{source}: cannot read this list of image paths ({e.strerror}).') from None
            paths += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith('#')]
        elif glob.has_magic(source) and not os.path.exists(source):
            found = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p) and _is_image_name(p))
            if not found:
                raise UsageError(f'{source}: the pattern matches no image file; quote it so the shell leaves it.')
            paths += found
        else:
            paths.append(source)
    unique: dict[str, str] = {}
    for path in paths:
        unique.setdefault(_path_key(path), path)  # each image once, first place and spelling kept
    return list(unique.values())


class ImageFiles(torch.utils.data.Dataset):
    """`(index, tensor, None)` of each path, or `(index, None, error)` for a file that cannot be decoded."""

    def __init__(self, paths: Sequence[str], transform: Callable):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.transform(load_image(self.paths[index])), None
        except UnreadableImageError as e:  # missing (or vanished), zero-byte, corrupt, not an image, a bomb
            return index, None, str(e)


def collate_images(
    items: Sequence[tuple[int, torch.Tensor | None, str | None]],
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """A batch of `ImageFiles` items: (indices of the decoded images, their stacked tensors, (index, error)s)."""
    good = [(index, x) for index, x, _ in items if x is not None]
    errors = [(index, error) for index, x, error in items if x is None]
    return [index for index, _ in good], torch.stack([x for _, x in good]) if good else None, errors


class TorchRunner:
    """A PyTorch model as `logits = runner(x)`: on `device`, with optional autocast (`amp`: a dtype name),
    channels-last memory format and `torch.compile`."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        amp: str | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ):
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=self.memory_format).eval()
        if compile:
            self.model = torch.compile(self.model)
        self.amp_dtype = getattr(torch, amp) if amp else None
        if amp and not isinstance(self.amp_dtype, torch.dtype):
            raise UsageError(f'--amp {amp}: not a torch dtype; pass bfloat16 or float16.')

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            return self.model(x).float()


class OnnxRunner:
    """An ONNX export (`export_onnx`) run by onnxruntime as `logits = runner(x)`, with the preprocessing and class
    names its metadata records (`transform`, `label_names`, `data_config`)."""

    def __init__(self, path: str, device: torch.device, threads: int, img_size: int | None = None):
        from ..hub.onnx import DATA_CONFIG_KEYS, read_onnx_metadata

        try:
            import onnxruntime
        except ImportError as e:
            raise ImportError('--onnx needs onnxruntime: `pip install fgvc-zoo[onnx]`.') from e
        if not os.path.isfile(path):
            raise UsageError(f'--onnx {path}: no such file; write one with `fgvc-zoo export DIR --onnx`.')
        metadata = read_onnx_metadata(path)
        self.data_config = resolve_fgvc_data_config({key: metadata[key] for key in DATA_CONFIG_KEYS})
        size = self.data_config['input_size'][1:]
        if img_size is not None and tuple(size) != (img_size, img_size):
            raise UsageError(f'--img-size {img_size}: {path} was exported for {size[0]}x{size[1]} inputs; drop it.')
        self.transform = create_transforms(self.data_config, is_training=False)
        self.label_names = metadata.get('label_names')
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers = ['CPUExecutionProvider']
        if device.type == 'cuda' and 'CUDAExecutionProvider' in onnxruntime.get_available_providers():
            providers.insert(0, ('CUDAExecutionProvider', {'device_id': device.index or 0}))
        self.session = onnxruntime.InferenceSession(path, options, providers=providers)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(['logits'], {'input': x.numpy()})[0]).float()


def iter_predictions(
    paths: Sequence[str],
    runner: Callable[[torch.Tensor], torch.Tensor],
    transform: Callable,
    label_names: Sequence[str] | None,
    topk: int,
    batch_size: int = 16,
    workers: int = 2,
    pin_memory: bool = False,
) -> Iterator[list[Row]]:
    """The rows of `paths`, one list per batch, in order: files decoded by `workers` loader processes while the
    runner computes the previous batch."""
    loader = torch.utils.data.DataLoader(
        ImageFiles(paths, transform),
        batch_size=batch_size,
        num_workers=min(workers, max(1, -(-len(paths) // batch_size))),
        collate_fn=collate_images,
        pin_memory=pin_memory,
    )
    for indices, x, errors in loader:
        empty = {'indices': [], 'labels': [], 'probabilities': []}
        rows = {index: {'path': paths[index], **empty, 'error': error} for index, error in errors}
        if x is not None:
            for index, row in zip(indices, topk_rows(runner(x), label_names, topk), strict=True):
                rows[index] = {'path': paths[index], **row, 'error': None}
        yield [rows[index] for index in sorted(rows)]


def _csv_header(k: int) -> list[str]:
    return ['path', *(f'{name}_{rank}' for rank in range(1, k + 1) for name in ('index', 'label', 'probability'))] + [
        'error'
    ]


def _csv_line(row: Row, k: int) -> list[Any]:
    ranks = [
        value
        for rank in range(k)
        for value in (
            (row['indices'][rank], row['labels'][rank], row['probabilities'][rank])
            if rank < len(row['indices'])
            else ('', '', '')
        )
    ]
    return [table_path(row['path']), *ranks, row['error'] or '']


def _csv_row(record: dict[str, str]) -> Row:
    k = sum(1 for key in record if key.startswith('index_'))
    ranks = [rank for rank in range(1, k + 1) if record[f'index_{rank}'] != '']
    return {
        'path': record['path'],
        'indices': [int(record[f'index_{rank}']) for rank in ranks],
        'labels': [record[f'label_{rank}'] for rank in ranks],
        'probabilities': [float(record[f'probability_{rank}']) for rank in ranks],
        'error': record['error'] or None,
    }


def _complete_lines(path: Path) -> bytes:
    """The file's bytes up to its last newline: a line cut by a kill mid-write is dropped (and truncated away)."""
    data = path.read_bytes()
    end = data.rfind(b'\n') + 1
    if end < len(data):
        with open(path, 'r+b') as f:
            f.truncate(end)
    return data[:end]


def read_rows(path: str | os.PathLike) -> list[Row]:
    """The rows of a CSV, JSONL or Parquet table written here (a CSV or JSONL cut mid-line by a kill is truncated
    to its last whole row)."""
    path = Path(path)
    if path.suffix == '.parquet':
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = _complete_lines(path).decode()
    if path.suffix == '.csv':
        return [_csv_row(record) for record in csv.DictReader(io.StringIO(text))]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _csv_topk(path: Path) -> int | None:
    """The k of a CSV table's header, None for an empty file."""
    with open(path, newline='') as f:
        header = next(csv.reader(f), None)
    if header is None:
        return None
    if header[0] != 'path' or header != _csv_header((len(header) - 2) // 3):
        raise UsageError(f'{path}: not a table written by `fgvc-zoo predict` (its header: {",".join(header[:4])}...).')
    return (len(header) - 2) // 3


class RowWriter:
    """Rows appended to a CSV or JSONL file, flushed batch by batch (a kill loses at most the batch in flight)."""

    def __init__(self, path: str | os.PathLike, topk: int):
        self.path = Path(path)
        self.topk = topk
        self.csv = self.path.suffix == '.csv'
        if self.csv and self.path.exists():
            k = _csv_topk(self.path)
            if k is not None and k != topk:
                raise UsageError(f'{self.path} holds the top-{k} of each image; resume it with --topk {k}.')
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, 'a', newline='' if self.csv else None, encoding='utf-8')
        if self.csv and new:
            self.write_lines([_csv_header(topk)])

    def write_lines(self, lines: Sequence[Any]) -> None:
        buffer = io.StringIO()
        if self.csv:
            csv.writer(buffer, lineterminator='\n').writerows(lines)
        else:
            buffer.writelines(
                json.dumps({**line, 'path': table_path(line['path'])}, ensure_ascii=False) + '\n' for line in lines
            )
        self.file.write(buffer.getvalue())  # one write, then flush: whole batches reach the file
        self.file.flush()

    def write(self, rows: Sequence[Row]) -> None:
        self.write_lines([_csv_line(row, self.topk) for row in rows] if self.csv else rows)

    def close(self) -> None:
        self.file.close()


def write_table(path: str | os.PathLike, rows: Sequence[Row], topk: int) -> None:
    """Write `rows` as the table `path` names (.csv, .jsonl, or .parquet through pyarrow), atomically: a temporary
    file beside it, then renamed."""
    path = Path(path)
    temporary = path.with_name(f'.{path.stem}.tmp{path.suffix}')  # the suffix names the format
    if path.suffix == '.parquet':
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(f'{path}: writing Parquet needs pyarrow (`pip install pyarrow`); or ask for .csv.') from e
        schema = pa.schema(
            [
                ('path', pa.string()),
                ('indices', pa.list_(pa.int64())),
                ('labels', pa.list_(pa.string())),
                ('probabilities', pa.list_(pa.float64())),
                ('error', pa.string()),
            ]
        )
        rows = [{**row, 'path': table_path(row['path'])} for row in rows]
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), temporary)
    else:
        temporary.unlink(missing_ok=True)
        writer = RowWriter(temporary, topk)
        writer.write(rows)
        writer.close()
    os.replace(temporary, path)


def shard(paths: Sequence[str], rank: int, world_size: int) -> list[str]:
    """The paths process `rank` of `world_size` predicts: every world_size-th, so shards stay balanced."""
    return list(paths[rank::world_size])


def merge_rows(row_lists: Sequence[Sequence[Row]], sources: Sequence[str]) -> list[Row]:
    """The rows of all shards (and earlier runs) in source order, each path once (its first row); a row of a path
    not among `sources` (an earlier run's) comes first, in its own order."""
    order = {_path_key(path): index for index, path in enumerate(sources)}
    merged: dict[str, Row] = {}
    for rows in row_lists:
        for row in rows:
            merged.setdefault(_path_key(row['path']), row)
    return sorted(merged.values(), key=lambda row: order.get(_path_key(row['path']), -1))


def _part_files(output: Path) -> list[Path]:
    return sorted(output.parent.glob(glob.escape(output.name) + '.part*.jsonl'))


def predict_to_file(
    sources: Sequence[str],
    output: str | os.PathLike,
    runner: Callable[[torch.Tensor], torch.Tensor],
    transform: Callable,
    label_names: Sequence[str] | None,
    topk: int = 5,
    batch_size: int = 16,
    workers: int = 2,
    resume: bool = False,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    pin_memory: bool = False,
    progress: bool = True,
    on_error: Callable[[str], None] | None = None,
) -> int:
    """Predict every image path of `sources` (already expanded) into the table `output`; returns how many of its
    rows are errors (this run's and, with `resume`, the earlier ones).

    One process writing CSV or JSONL streams to `output` itself. Parquet, and every process of a sharded run
    (`rank` of `world_size`, e.g. under `accelerate launch`), stream to `OUTPUT.partRofW.jsonl`; after `barrier()`
    rank 0 merges them (and the rows `output` already held) in source order into `output` and removes them.
    `resume` skips every path that `output` or a part file already has a row for; without it an existing `output`
    or part file is an error, so that a long run's rows are never overwritten by mistake.
    """
    output = Path(output)
    if output.suffix not in TABLE_EXTENSIONS:
        raise UsageError(f'--output {output}: name a {", ".join(TABLE_EXTENSIONS)} file (the format follows it).')
    streams_itself = world_size == 1 and output.suffix != '.parquet'
    leftovers = ([output] if output.exists() else []) + _part_files(output)
    if leftovers and not resume:
        raise UsageError(f'--output {output}: {leftovers[0]} exists; pass --resume to continue it, or remove it.')
    earlier = {path: read_rows(path) for path in leftovers}
    done = {_path_key(row['path']) for rows in earlier.values() for row in rows}
    failed = sum(row['error'] is not None for rows in earlier.values() for row in rows)
    todo = [path for path in sources if _path_key(path) not in done]
    pending = shard(todo, rank, world_size)
    barrier()  # every process has looked for leftovers before any writes its part (else one sees another's file)

    part = output if streams_itself else output.with_name(f'{output.name}.part{rank}of{world_size}.jsonl')
    writer = RowWriter(part, topk) if pending or streams_itself else None
    from tqdm.auto import tqdm

    bar = tqdm(total=len(pending), unit='img', desc='predict', disable=None if progress and rank == 0 else True)
    start, count = time.perf_counter(), 0
    try:
        for rows in iter_predictions(pending, runner, transform, label_names, topk, batch_size, workers, pin_memory):
            writer.write(rows)
            for row in rows:
                if row['error'] is not None:
                    failed += 1
                    if on_error is not None:
                        on_error(row['error'])
            count += len(rows)
            bar.update(len(rows))
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if count and progress and rank == 0:
        elapsed = time.perf_counter() - start
        print(f'{count} images in {elapsed:.1f} s ({count / elapsed:.1f} images/s) -> {output}', file=sys.stderr)
    elif not todo and progress and rank == 0:
        print(f'{output} has a row for every image: nothing left to predict.', file=sys.stderr)
    if streams_itself:
        return failed
    barrier()
    if rank != 0:
        return failed
    parts = _part_files(output)
    rows = merge_rows([earlier.get(output, []), *(read_rows(path) for path in parts)], sources)
    write_table(output, rows, topk)
    for path in parts:
        path.unlink()
    return sum(row['error'] is not None for row in rows)


class ProcessShard(NamedTuple):
    """This process's part of a predict run (`predict_to_file`'s `rank`, `world_size` and `barrier`) and its device."""

    rank: int
    world_size: int
    device: str | torch.device
    barrier: Callable[[], None]


def process_shard(device: str | torch.device, output: str | None) -> ProcessShard:
    """The whole run on `device`, or under `accelerate launch` / torchrun (WORLD_SIZE > 1) one shard per process,
    whose rows are merged into the one `output` table."""
    if int(os.environ.get('WORLD_SIZE', '1')) <= 1:
        return ProcessShard(0, 1, device, lambda: None)
    if not output:
        raise UsageError('several processes write their rows to one table: pass --output FILE.')
    from accelerate import PartialState

    # cpu=True on a machine without an accelerator: else accelerate sets up no process group for a CPU launch,
    # and every process would take itself for the only one.
    state = PartialState(cpu=resolve_device(str(device)).type == 'cpu')
    return ProcessShard(state.process_index, state.num_processes, state.device, state.wait_for_everyone)
