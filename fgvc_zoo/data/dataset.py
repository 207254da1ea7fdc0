"""`FgvcDataset` over any supported layout, and `create_dataset`, the one entry point of the trainer and eval.

Unreadable images. `check_images()` decodes every image once up front (a thread pool; JPEGs at 1/8 scale, which
still reads the whole stream) and drops the unreadable ones from `.samples` with a warning naming each; their
paths are in `.unreadable` (reasons in `.unreadable_reasons`) for the run's output, and `UnreadableDataError` is
raised when more than `max_unreadable_fraction` of the split is unreadable. The trainer calls it in every process
before building its loaders, so that all ranks drop the same images and the list is complete, not lost inside
DataLoader worker copies.
A file that still fails later (changed on disk after the check, or no check was run) is warned about by name
and replaced by the next readable sample, so a long run does not die on one file; it is recorded in that
process's copy of `.unreadable` only.
"""

import io
import logging
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch.utils.data
from PIL import Image
from tqdm.auto import tqdm

from .images import DatasetError, MissingSplitError, UnreadableDataError, UnreadableImageError, check_image, load_image
from .layouts import LAYOUTS, Box, detect_layout, read_layout

__all__ = ['FgvcDataset', 'create_dataset', 'normalize_split', 'carve_val', 'LAYOUT_NAMES', 'SPLITS']

_logger = logging.getLogger(__name__)

LAYOUT_NAMES = tuple(LAYOUTS)
# A split is named for what it is: 'test' is never read as 'val'. 'trainval' (train + the official val split, the
# papers' training set when they report test accuracy) exists only where a layout has an official val split.
SPLITS = ('train', 'trainval', 'val', 'test')
SPLIT_ALIASES = {'validation': 'val'}
# Options each layout accepts besides the common `max_unreadable_fraction`.
LAYOUT_OPTIONS = {'aircraft': ('level', 'crop_banner'), 'hf': ('image_column', 'label_column', 'hf_split', 'name')}
MAX_WARNINGS = 20  # one warning per unreadable file up to this many per check, then one summary
HF_SPLIT_NAMES = {'train': ('train',), 'val': ('validation', 'val', 'valid'), 'test': ('test',)}


def normalize_split(split: str) -> str:
    """One of SPLITS ('validation' is 'val'); an unknown name is a `DatasetError`."""
    split = SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise DatasetError(f'split {split!r} is not one of {[*SPLITS, *SPLIT_ALIASES]}')
    return split


def carve_val(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) indices: per class a `fraction` of the images (at least one where a class has two) for val.

    Stratified and deterministic: class `c`'s images are permuted by a generator seeded with (seed, c) only, so
    the carve of one class does not depend on the others.
    """
    train, val = [], []
    labels = np.asarray(labels)
    for label in np.unique(labels):
        index = np.random.default_rng([seed, int(label)]).permutation(np.flatnonzero(labels == label))
        count = max(1, round(fraction * len(index))) if len(index) >= 2 else 0
        val += index[:count].tolist()
        train += index[count:].tolist()
    return sorted(train), sorted(val)


class FgvcDataset(torch.utils.data.Dataset):
    """Images and integer labels of one split, with class names in label order.

    `dataset[i]` is `(transform(image), label)`; without a transform the image is an RGB `PIL.Image`.
    """

    def __init__(
        self,
        root: str,
        split: str,
        layout: str,
        classes: list[str],
        samples: list[tuple[str, int]],
        transform: Callable | None = None,
        boxes: list[Box | None] | None = None,
        max_unreadable_fraction: float = 0.01,
        hf_images: Any | None = None,
        bottom_crop: int = 0,
    ):
        """
        Args:
            root: the folder (or Hugging Face dataset name) the split was read from.
            split: one of SPLITS.
            layout: the layout name the split was read with.
            classes: human-readable class names, index = label.
            samples: (path, label) per image; for 'hf' the path is a name `root[split][row]` for messages.
            transform: applied to the RGB PIL image.
            boxes: optional object box (x1, y1, x2, y2) in image pixels per sample, None where unknown.
            max_unreadable_fraction: share of the split that may be unreadable before `UnreadableDataError`.
            hf_images: for 'hf', the split's `datasets.Dataset` with the image column not decoded.
        """
        self.root = root
        self.split = split
        self.layout = layout
        self.classes = list(classes)
        self.samples = list(samples)
        self.transform = transform
        self.boxes = list(boxes) if boxes is not None else None
        self.bottom_crop = bottom_crop
        self.max_unreadable_fraction = max_unreadable_fraction
        self.unreadable: list[str] = []
        self.unreadable_reasons: dict[str, str] = {}
        self._hf_images = hf_images
        self._rows = list(range(len(self.samples)))  # sample -> row of hf_images; kept aligned when filtering
        self._total = len(self.samples)
        bad = [(path, label) for path, label in self.samples if not 0 <= label < len(self.classes)]
        if bad:
            raise DatasetError(
                f'{root} ({layout}, {split}): label {bad[0][1]} of {bad[0][0]!r} is outside '
                f'0..{len(self.classes) - 1} (label out of range; {len(bad)} samples in all)'
            )

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def _image_source(self, index: int) -> tuple[str, io.BytesIO | None]:
        path = self.samples[index][0]
        if self._hf_images is None:
            return path, None
        entry = self._hf_images[self._rows[index]]
        if entry.get('bytes') is not None:
            return path, io.BytesIO(entry['bytes'])
        return entry['path'], None

    def load(self, index: int) -> Image.Image:
        """The RGB image of sample `index`, untransformed (less `bottom_crop` rows); raises `UnreadableImageError`."""
        image = load_image(*self._image_source(index))
        if self.bottom_crop:
            image = image.crop((0, 0, image.width, max(1, image.height - self.bottom_crop)))
        return image

    def __getitem__(self, index: int):
        for offset in range(len(self.samples)):
            candidate = (index + offset) % len(self.samples)
            path = self.samples[candidate][0]
            if path in self.unreadable_reasons:
                continue
            try:
                image = self.load(candidate)
            except UnreadableImageError as e:
                self._record_unreadable([(path, e.reason)])
                continue
            if offset:
                _logger.debug('sample %d replaced by %d (unreadable image)', index, candidate)
            label = self.samples[candidate][1]
            return (self.transform(image) if self.transform is not None else image), label
        raise UnreadableDataError(f'no readable image left in {self.root} ({self.layout}, {self.split})')

    def _record_unreadable(self, failures: list[tuple[str, str]]) -> None:
        new = [(path, reason) for path, reason in dict(failures).items() if path not in self.unreadable_reasons]
        for path, reason in new[:MAX_WARNINGS]:
            warnings.warn(f'skipping unreadable image {path!r}: {reason}', stacklevel=2)
        if len(new) > MAX_WARNINGS:
            warnings.warn(
                f'skipping {len(new) - MAX_WARNINGS} more unreadable images of {self.root} '
                f'({self.split}); dataset.unreadable lists them all',
                stacklevel=2,
            )
        for path, reason in new:
            self.unreadable.append(path)
            self.unreadable_reasons[path] = reason
        fraction = len(self.unreadable) / max(self._total, 1)
        if fraction > self.max_unreadable_fraction:
            shown = '\n'.join(f'  {p}: {self.unreadable_reasons[p]}' for p in self.unreadable[:10])
            more = f'\n  ... and {len(self.unreadable) - 10} more' if len(self.unreadable) > 10 else ''
            raise UnreadableDataError(
                f'{len(self.unreadable)} of {self._total} images ({fraction:.1%}) of {self.root} ({self.layout}, '
                f'{self.split}) are unreadable, more than max_unreadable_fraction={self.max_unreadable_fraction}:'
                f'\n{shown}{more}\nFix or remove these files, or raise max_unreadable_fraction'
            )

    def check_images(self, progress: bool = False, num_workers: int | None = None) -> list[str]:
        """Decode every image once; drop the unreadable ones from the split and return their paths.

        Raises `UnreadableDataError` if more than `max_unreadable_fraction` of the split is unreadable.
        """

        def check(index: int) -> str | None:
            path, source = self._image_source(index)
            return check_image(path, source)

        workers = num_workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding
            reasons = list(
                tqdm(
                    pool.map(check, range(len(self.samples))),
                    total=len(self.samples),
                    desc=f'checking {self.split} images',
                    disable=not progress,
                )
            )
        failures = [(self.samples[i][0], r) for i, r in enumerate(reasons) if r is not None]
        keep = [i for i, r in enumerate(reasons) if r is None]
        self.samples = [self.samples[i] for i in keep]
        self._rows = [self._rows[i] for i in keep]
        if self.boxes is not None:
            self.boxes = [self.boxes[i] for i in keep]
        self._record_unreadable(failures)
        return [path for path, _ in failures]

    def subset(self, indices: list[int], split: str) -> 'FgvcDataset':
        """The samples at `indices` as a split of its own (a val split carved from train, `carve_val`)."""
        part = FgvcDataset(
            self.root,
            split,
            self.layout,
            self.classes,
            [self.samples[i] for i in indices],
            transform=self.transform,
            boxes=[self.boxes[i] for i in indices] if self.boxes is not None else None,
            max_unreadable_fraction=self.max_unreadable_fraction,
            hf_images=self._hf_images,
            bottom_crop=self.bottom_crop,
        )
        part._rows = [self._rows[i] for i in indices]
        return part

    def __repr__(self) -> str:
        return (
            f'FgvcDataset(root={self.root!r}, layout={self.layout!r}, split={self.split!r}, '
            f'images={len(self)}, classes={len(self.classes)}, unreadable={len(self.unreadable)})'
        )


def _hf_split(
    root: str,
    split: str,
    image_column: str = 'image',
    label_column: str = 'label',
    hf_split: str | None = None,
    name: str | None = None,
) -> tuple[Any, list[int], list[str], str]:
    """The split's datasets.Dataset of undecoded images, its labels, its class names, and its split key."""
    import datasets

    if os.path.isdir(root) and LAYOUTS['hf'].detect(root):
        loaded = datasets.load_from_disk(root)
    elif os.path.isdir(root):
        loaded = datasets.load_dataset('imagefolder', data_dir=root)
    else:
        loaded = datasets.load_dataset(root, name)
    if isinstance(loaded, datasets.DatasetDict):
        wanted = (hf_split,) if hf_split else HF_SPLIT_NAMES.get(split, ())
        key = next((k for k in wanted if k in loaded), None)
        if key is None:
            raise MissingSplitError(
                f'{root} has splits {sorted(loaded)} but none of {list(wanted or [split])} for the {split!r} split; '
                'pass hf_split=... to name it (or --val-fraction to carve a val split from train)'
            )
        ds = loaded[key]
    else:
        raise DatasetError(
            f'{root} holds a single split; save a DatasetDict with "train" and "validation" (or '
            '"test") splits, e.g. ds.train_test_split(test_size=0.2).save_to_disk(...)'
        )
    for column in (image_column, label_column):
        if column not in ds.column_names:
            raise DatasetError(
                f'{root}[{key}] has no column {column!r} (columns: {ds.column_names}); pass '
                'image_column=... / label_column=...'
            )
    feature = ds.features[label_column]
    if not isinstance(feature, datasets.ClassLabel):
        raise DatasetError(
            f'{root}[{key}] column {label_column!r} is {feature}, not a ClassLabel, so it has no '
            f'class names; encode it first: ds = ds.class_encode_column({label_column!r})'
        )
    if not isinstance(ds.features[image_column], datasets.Image):
        raise DatasetError(f'{root}[{key}] column {image_column!r} is {ds.features[image_column]}, not an Image')
    images = ds.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    return images, [int(label) for label in ds[label_column]], list(feature.names), key


class _HfImages:
    """Row access to the undecoded image column: {'bytes': ..., 'path': ...}."""

    def __init__(self, images: Any, column: str):
        self.images = images
        self.column = column

    def __getitem__(self, row: int) -> dict[str, Any]:
        return self.images[row][self.column]


def _resolve_root(layout: str, root: str) -> str:
    """The root itself, or its single sub-folder that holds `layout` (e.g. CUB_200_2011/ in a download folder)."""
    if layout == 'hf' or not os.path.isdir(root) or LAYOUTS[layout].detect(root):
        return root
    nested = [os.path.join(root, d) for d in sorted(os.listdir(root)) if LAYOUTS[layout].detect(os.path.join(root, d))]
    return nested[0] if len(nested) == 1 else root


def create_dataset(
    root: str, split: str = 'train', layout: str = 'auto', transform: Callable | None = None, **options
) -> FgvcDataset:
    """One split of the dataset at `root`.

    Args:
        root: dataset folder (or, with layout='hf', a `datasets.load_dataset` name).
        split: one of SPLITS ('validation' is 'val'), read as the layout names it: CUB's held-out split is 'test',
            never 'val'. A split the layout lacks raises `MissingSplitError`.
        layout: 'auto' (detected from the files; the choice is logged) or one of LAYOUT_NAMES.
        transform: applied to each RGB PIL image.
        options: max_unreadable_fraction (0.01); aircraft: level ('variant' | 'family' | 'manufacturer'),
            crop_banner (False: the images keep their copyright banner, as the references do);
            hf: image_column ('image'), label_column ('label'), hf_split (the split's key), name (config name).
    """
    split = normalize_split(split)
    max_unreadable_fraction = options.pop('max_unreadable_fraction', 0.01)
    if layout == 'auto':
        layout, root = detect_layout(root)
        _logger.info('dataset %s: detected the %r layout', root, layout)
    elif layout not in LAYOUTS:
        raise DatasetError(f'unknown layout {layout!r}; choose one of {["auto", *LAYOUTS]}')
    else:
        root = _resolve_root(layout, root)
    unknown = sorted(set(options) - set(LAYOUT_OPTIONS.get(layout, ())))
    if unknown:
        raise DatasetError(
            f'options {unknown} are not accepted by the {layout!r} layout '
            f'(it accepts: {list(LAYOUT_OPTIONS.get(layout, ())) + ["max_unreadable_fraction"]})'
        )
    common = dict(transform=transform, max_unreadable_fraction=max_unreadable_fraction)
    if layout == 'hf':
        images, labels, classes, key = _hf_split(root, split, **options)
        samples = [(f'{root}[{key}][{row}]', label) for row, label in enumerate(labels)]
        hf_images = _HfImages(images, options.get('image_column', 'image'))
        return FgvcDataset(root, split, layout, classes, samples, hf_images=hf_images, **common)
    data = read_layout(layout, root, split, **options)
    return FgvcDataset(
        root, split, layout, data.classes, data.samples, boxes=data.boxes, bottom_crop=data.bottom_crop, **common
    )
