"""The data of a comparison: a val split carved from the training images, materialised as a folder of
symlinks that the trainer reads; the test split linked only after every run has trained.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..data import carve_val, create_dataset, make_synthetic_fgvc
from ..errors import UsageError
from .protocol import DATA, TEST_DATA, CompareConfig


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


def data_source(config: CompareConfig) -> tuple[str, str]:
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
    root, layout = data_source(config)
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
