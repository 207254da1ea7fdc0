"""Readers of the native folder layouts of the FGVC datasets, and detection of which layout a folder holds.

torchvision's loaders (StanfordCars, FGVCAircraft, Flowers102; none for CUB, NABirds, Dogs) fix the nesting of
the download folder and decode with a bare PIL loader, so we parse the (small) metadata files ourselves: the
download folder may sit one level down, every label and path is checked, and decoding goes through
`images.load_image`, which lets the dataset skip unreadable files.

Every reader returns a `LayoutData` for one split, named for what it is: 'train', 'val' (an official validation
split: Aircraft, Flowers, a folder's val/), 'test', or 'trainval' (train + val, the papers' training set where a
dataset has an official val split). A split the dataset lacks raises `MissingSplitError` naming the ones it has.
"""

import logging
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from timm.data.readers.img_extensions import get_img_extensions

from .images import DatasetError, MissingSplitError

__all__ = ['LayoutData', 'LAYOUTS', 'detect_layout', 'read_layout', 'safe_join', 'display_name']

_logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]


@dataclass
class LayoutData:
    """One split of a file layout: (path, label) samples, class names in label order, optional boxes."""

    samples: list[tuple[str, int]]
    classes: list[str]
    boxes: list[Box] | None = None  # x1, y1, x2, y2 in pixels of the image, one per sample
    bottom_crop: int = 0  # rows cut off the bottom of every image when it is loaded (FGVC-Aircraft's banner)


def display_name(name: str) -> str:
    """A printable class name: bytes that are not UTF-8 (kept in paths by `surrogateescape`) become U+FFFD."""
    return name.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')


def safe_join(root: str, relative: str, source: str) -> str:
    """`root/relative`, refusing absolute paths and `..` that leave `root` (a path from metadata is untrusted).

    The check is lexical (normpath), so symbolic links a user made inside the root still work.
    """
    joined = os.path.normpath(os.path.join(root, relative))
    if os.path.isabs(relative) or os.path.commonpath([joined, os.path.normpath(root)]) != os.path.normpath(root):
        raise DatasetError(
            f'{source}: path {display_name(relative)!r} escapes the dataset root {root!r}; metadata paths must be '
            'relative and stay inside the root (fix or remove that line)'
        )
    return joined


def _require(path: str, layout: str) -> str:
    if not os.path.isfile(path):
        raise DatasetError(
            f'missing {os.path.basename(path)!r} of the {layout!r} layout (looked for {path}); '
            f'the {layout!r} layout expects: {LAYOUTS[layout].expects}'
        )
    return path


def _read_rows(path: str, layout: str, columns: int) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a whitespace table; the last field keeps its spaces (file or class names)."""
    rows = []
    # surrogateescape: a non-UTF-8 file name in the metadata still maps back to the same bytes on disk.
    with open(_require(path, layout), encoding='utf-8', errors='surrogateescape') as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split(maxsplit=columns - 1)
            if len(fields) < columns:
                raise DatasetError(f'{path} line {number}: expected {columns} fields, got {line.strip()!r}')
            rows.append((number, [x.strip() for x in fields]))
    return rows


def _load_mat(path: str, layout: str) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DatasetError(f'reading {path} ({layout!r} layout) needs scipy: pip install scipy') from None
    return loadmat(_require(path, layout), squeeze_me=True)


def _flat(values) -> np.ndarray:
    """A .mat array as 1-D (loadmat's squeeze_me turns a one-element array into a scalar)."""
    return np.atleast_1d(values).reshape(-1)


def _check_split(split: str, layout: str, have: Sequence[str]) -> None:
    if split not in have:
        carve = ', or pass --val-fraction to carve a val split from train' if split == 'val' else ''
        raise MissingSplitError(f'the {layout!r} layout has no {split!r} split: ask for one of {list(have)}{carve}')


def _first_file(root: str, names: Sequence[str]) -> str | None:
    return next((os.path.join(root, n) for n in names if os.path.isfile(os.path.join(root, n))), None)


# --- CUB-200-2011 and NABirds -----------------------------------------------------------------------------------


def _read_cub_like(root: str, split: str, layout: str) -> LayoutData:
    """images.txt / image_class_labels.txt / train_test_split.txt / classes.txt (both datasets share them)."""
    _check_split(split, layout, ('train', 'test'))
    path_of = {i: (n, p) for n, (i, p) in _read_rows(os.path.join(root, 'images.txt'), layout, 2)}
    label_path = os.path.join(root, 'image_class_labels.txt')
    label_of = {i: (n, c) for n, (i, c) in _read_rows(label_path, layout, 2)}
    split_path = os.path.join(root, 'train_test_split.txt')
    is_train = {i: flag for _, (i, flag) in _read_rows(split_path, layout, 2)}
    class_rows = _read_rows(os.path.join(root, 'classes.txt'), layout, 2)
    name_of = {c: name for _, (c, name) in class_rows}

    used = set()
    for image_id, (number, class_id) in label_of.items():
        if class_id not in name_of:
            raise DatasetError(
                f'{label_path} line {number}: class id {class_id} of image {image_id} is not in classes.txt '
                f'(label out of range; valid ids: {class_rows[0][1][0]}..{class_rows[-1][1][0]})'
            )
        used.add(class_id)
    # NABirds lists its whole taxonomy in classes.txt; only the classes that label images are classes to learn.
    class_ids = [c for _, (c, _) in class_rows if c in used]
    index_of = {c: i for i, c in enumerate(class_ids)}
    if layout == 'cub':
        classes = [re.sub(r'^\d+\.', '', name_of[c]).replace('_', ' ') for c in class_ids]
    else:
        classes = [name_of[c] for c in class_ids]

    boxes_of = {}
    box_path = os.path.join(root, 'bounding_boxes.txt')
    if os.path.isfile(box_path):
        for _, (i, box) in _read_rows(box_path, layout, 2):
            x, y, w, h = map(float, box.split())
            boxes_of[i] = (x, y, x + w, y + h)

    want = '1' if split == 'train' else '0'
    samples, boxes = [], []
    images_root = os.path.join(root, 'images')
    for image_id, (number, relative) in path_of.items():
        if image_id not in label_of or image_id not in is_train:
            missing = 'image_class_labels.txt' if image_id not in label_of else 'train_test_split.txt'
            raise DatasetError(f'image id {image_id} (images.txt line {number}) has no row in {missing}')
        if is_train[image_id] != want:
            continue
        samples.append((safe_join(images_root, relative, f'images.txt line {number}'), index_of[label_of[image_id][1]]))
        boxes.append(boxes_of.get(image_id))
    return LayoutData(samples, classes, boxes if boxes_of else None)


def _read_cub(root: str, split: str) -> LayoutData:
    return _read_cub_like(root, split, 'cub')


def _read_nabirds(root: str, split: str) -> LayoutData:
    return _read_cub_like(root, split, 'nabirds')


# --- Stanford Cars ----------------------------------------------------------------------------------------------


def _cars_devkit(root: str) -> str:
    return os.path.join(root, 'devkit') if os.path.isdir(os.path.join(root, 'devkit')) else root


def _read_cars(root: str, split: str) -> LayoutData:
    """The devkit layout (cars_train/, cars_test/, devkit/*.mat) or the single-file cars_annos.mat + car_ims/."""
    _check_split(split, 'cars', ('train', 'test'))
    all_annos = os.path.join(root, 'cars_annos.mat')
    if os.path.isfile(all_annos):
        mat = _load_mat(all_annos, 'cars')
        annotations, image_root = mat['annotations'], root
        annotations = _flat(annotations)
        annotations = [a for a in annotations if bool(a['test']) == (split == 'test')]
        path_field = 'relative_im_path'
        class_names, source = mat['class_names'], all_annos
    else:
        devkit = _cars_devkit(root)
        class_names = _load_mat(os.path.join(devkit, 'cars_meta.mat'), 'cars')['class_names']
        if split == 'train':
            source, image_root = os.path.join(devkit, 'cars_train_annos.mat'), os.path.join(root, 'cars_train')
        else:
            names = ('cars_test_annos_withlabels.mat',)
            source = _first_file(devkit, names) or _first_file(root, names) or os.path.join(devkit, names[0])
            image_root = os.path.join(root, 'cars_test')
        annotations = _flat(_load_mat(source, 'cars')['annotations'])
        path_field = 'fname'
        if len(annotations) and 'class' not in annotations.dtype.names:
            raise DatasetError(f'{source} has no class labels; use cars_test_annos_withlabels.mat from the devkit')
    classes = [str(n) for n in _flat(class_names)]
    samples, boxes = [], []
    for number, a in enumerate(annotations, 1):
        label = int(a['class'])
        if not 1 <= label <= len(classes):
            raise DatasetError(
                f'{source} annotation {number}: class {label} is outside 1..{len(classes)} of '
                'cars_meta.mat (label out of range)'
            )
        samples.append((safe_join(image_root, str(a[path_field]), f'{source} annotation {number}'), label - 1))
        boxes.append(tuple(float(a[k]) for k in ('bbox_x1', 'bbox_y1', 'bbox_x2', 'bbox_y2')))
    return LayoutData(samples, classes, boxes)


# --- FGVC-Aircraft ----------------------------------------------------------------------------------------------

AIRCRAFT_LEVELS = {'variant': 'variants.txt', 'family': 'families.txt', 'manufacturer': 'manufacturers.txt'}
# Every FGVC-Aircraft image ends in a copyright banner this many rows high (the dataset's README).
AIRCRAFT_BANNER_ROWS = 20


def _aircraft_data(root: str) -> str:
    return os.path.join(root, 'data') if os.path.isdir(os.path.join(root, 'data')) else root


def _read_aircraft(root: str, split: str, level: str = 'variant', crop_banner: bool = False) -> LayoutData:
    """data/images_<level>_{train,val,trainval,test}.txt: the official splits (the papers train on trainval).

    The images keep their bottom copyright banner, as NTS-Net and PMG (and so the papers' numbers) keep it;
    `crop_banner=True` cuts its `AIRCRAFT_BANNER_ROWS` rows off every image.
    """
    if level not in AIRCRAFT_LEVELS:
        raise DatasetError(f'aircraft level {level!r} is not one of {sorted(AIRCRAFT_LEVELS)}')
    _check_split(split, 'aircraft', ('train', 'trainval', 'val', 'test'))
    data = _aircraft_data(root)
    names_path = os.path.join(data, AIRCRAFT_LEVELS[level])
    with open(_require(names_path, 'aircraft'), encoding='utf-8') as f:
        classes = [line.strip() for line in f if line.strip()]
    index_of = {name: i for i, name in enumerate(classes)}
    list_path = os.path.join(data, f'images_{level}_{split}.txt')
    box_of = {}
    box_path = os.path.join(data, 'images_box.txt')
    if os.path.isfile(box_path):
        for _, (i, box) in _read_rows(box_path, 'aircraft', 2):
            box_of[i] = tuple(map(float, box.split()))
    samples, boxes = [], []
    for number, (image_id, name) in _read_rows(list_path, 'aircraft', 2):
        if name not in index_of:
            raise DatasetError(
                f'{list_path} line {number}: {name!r} is not a class of {names_path} (label out of range)'
            )
        source = f'{list_path} line {number}'
        samples.append((safe_join(os.path.join(data, 'images'), image_id + '.jpg', source), index_of[name]))
        boxes.append(box_of.get(image_id))
    return LayoutData(samples, classes, boxes if box_of else None, AIRCRAFT_BANNER_ROWS if crop_banner else 0)


# --- Stanford Dogs ----------------------------------------------------------------------------------------------


def _dogs_lists(root: str) -> str:
    return os.path.join(root, 'lists') if os.path.isdir(os.path.join(root, 'lists')) else root


def _read_dogs(root: str, split: str) -> LayoutData:
    """Images/<wnid>-<name>/*.jpg with {train,test}_list.mat (or .txt: one relative path per line)."""
    _check_split(split, 'dogs', ('train', 'test'))
    images_root = os.path.join(root, 'Images')
    folders = sorted(d for d in os.listdir(images_root) if os.path.isdir(os.path.join(images_root, d)))
    classes = [display_name(re.sub(r'^n\d+-', '', d)).replace('_', ' ') for d in folders]
    lists = _dogs_lists(root)
    stem = 'train_list' if split == 'train' else 'test_list'
    samples = []
    txt = os.path.join(lists, stem + '.txt')
    if os.path.isfile(txt):
        index_of = {d: i for i, d in enumerate(folders)}
        for number, (relative,) in _read_rows(txt, 'dogs', 1):
            folder = relative.replace('\\', '/').split('/')[0]
            if folder not in index_of:
                raise DatasetError(
                    f'{txt} line {number}: class folder {display_name(folder)!r} is not in '
                    f'{images_root} (label out of range)'
                )
            samples.append((safe_join(images_root, relative, f'{txt} line {number}'), index_of[folder]))
        return LayoutData(samples, classes)
    source = os.path.join(lists, stem + '.mat')
    mat = _load_mat(source, 'dogs')
    for number, (relative, label) in enumerate(zip(_flat(mat['file_list']), _flat(mat['labels']), strict=False), 1):
        if not 1 <= int(label) <= len(folders):
            raise DatasetError(
                f'{source} entry {number}: label {int(label)} is outside 1..{len(folders)} '
                f'(the class folders of {images_root}; label out of range)'
            )
        samples.append((safe_join(images_root, str(relative), f'{source} entry {number}'), int(label) - 1))
    return LayoutData(samples, classes)


# --- Oxford Flowers-102 -----------------------------------------------------------------------------------------


FLOWERS_SPLITS = {'train': ('trnid',), 'trainval': ('trnid', 'valid'), 'val': ('valid',), 'test': ('tstid',)}


def _read_flowers(root: str, split: str) -> LayoutData:
    """jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat: 'train' trnid, 'val' valid, 'trainval' both, 'test' tstid."""
    import torchvision
    from torchvision.datasets import Flowers102  # the 102 names are not in the dataset's files; reuse its list

    if not hasattr(Flowers102, 'classes'):
        raise DatasetError(
            f'{root}: the flowers layout takes the 102 class names from torchvision, whose Flowers102 has them from '
            f'version 0.20 on (this is {torchvision.__version__}): upgrade torchvision with its torch.'
        )
    classes = list(Flowers102.classes)
    _check_split(split, 'flowers', tuple(FLOWERS_SPLITS))
    labels_path = os.path.join(root, 'imagelabels.mat')
    labels = _flat(_load_mat(labels_path, 'flowers')['labels'])
    setid = _load_mat(os.path.join(root, 'setid.mat'), 'flowers')
    keys = FLOWERS_SPLITS[split]
    samples = []
    for image_id in (int(i) for key in keys for i in _flat(setid[key])):
        if not 1 <= image_id <= len(labels):
            raise DatasetError(f'setid.mat: image id {image_id} is outside 1..{len(labels)} of {labels_path}')
        label = int(labels[image_id - 1])
        if not 1 <= label <= len(classes):
            raise DatasetError(
                f'{labels_path}: label {label} of image {image_id} is outside 1..{len(classes)} (label out of range)'
            )
        samples.append((os.path.join(root, 'jpg', f'image_{image_id:05d}.jpg'), label - 1))
    return LayoutData(samples, classes)


# --- generic image folder ---------------------------------------------------------------------------------------

FOLDER_SPLITS = {'train': ('train',), 'val': ('val', 'validation'), 'test': ('test',)}


def _class_files(folder: str) -> list[str]:
    extensions = get_img_extensions()
    files = []
    for directory, subdirs, names in os.walk(folder):
        subdirs.sort()
        files += [
            os.path.join(directory, n)
            for n in sorted(names)
            if not n.startswith('.') and os.path.splitext(n)[1].lower() in extensions
        ]
    return files


def _read_split_folder(split_root: str) -> dict[str, list[str]]:
    """class folder -> image files; empty class folders are warned about and skipped."""
    files_of = {}
    for name in sorted(os.listdir(split_root)):
        folder = os.path.join(split_root, name)
        if not os.path.isdir(folder) or name.startswith('.'):
            continue
        files = _class_files(folder)
        if not files:
            warnings.warn(
                f'class folder {display_name(folder)!r} holds no images ({"/".join(get_img_extensions())})'
                ': skipped, the class is not part of the dataset',
                stacklevel=2,
            )
            continue
        files_of[name] = files
    return files_of


def _folder_split_root(root: str, split: str) -> str:
    folders = FOLDER_SPLITS.get(split, ())
    found = next((os.path.join(root, d) for d in folders if os.path.isdir(os.path.join(root, d))), None)
    if found is None:
        have = [s for s, names in FOLDER_SPLITS.items() if any(os.path.isdir(os.path.join(root, d)) for d in names)]
        raise MissingSplitError(
            f'{root} has no {" or ".join(d + "/" for d in folders) or "folder"} for the {split!r} split (it has '
            f'{have}); evaluate on another, pass --val-fraction to carve val from train, or add '
            f'{(folders or ("test",))[0]}/: the folder layout expects: {LAYOUTS["folder"].expects}'
        )
    return found


def _read_folder(root: str, split: str) -> LayoutData:
    """root/{train,val,test}/<class>/* (val/, test/ or both); classes are the train class folders, sorted."""
    train_files = _read_split_folder(_folder_split_root(root, 'train'))
    if not train_files:
        raise DatasetError(f'{_folder_split_root(root, "train")} holds no class folder with images')
    folders = sorted(train_files)
    if split == 'train':
        files_of = train_files
    else:
        files_of = _read_split_folder(_folder_split_root(root, split))
        unknown = sorted(set(files_of) - set(train_files))
        if unknown:
            raise DatasetError(
                f'{_folder_split_root(root, split)} has class folders that are not in the train split: '
                f'{[display_name(u) for u in unknown]}; the model cannot predict them. Add training images for '
                f'them or remove them from the {split} folder'
            )
    index_of = {name: i for i, name in enumerate(folders)}
    samples = [(path, index_of[name]) for name in sorted(files_of) for path in files_of[name]]
    return LayoutData(samples, [display_name(f) for f in folders])


# --- detection --------------------------------------------------------------------------------------------------


@dataclass
class Layout:
    expects: str
    detect: Callable[[str], bool]
    read: Callable[..., LayoutData] | None  # None: not a file layout ('hf', read by dataset.py)


def _has(root: str, *names: str) -> bool:
    return all(os.path.exists(os.path.join(root, n)) for n in names)


_CUB_FILES = ('images.txt', 'image_class_labels.txt', 'train_test_split.txt', 'classes.txt')

LAYOUTS: dict[str, Layout] = {
    'hf': Layout(
        'a Hugging Face datasets folder written by save_to_disk (dataset_dict.json or state.json), '
        'an image folder for load_dataset("imagefolder"), or a load_dataset name',
        lambda r: _has(r, 'dataset_dict.json') or _has(r, 'state.json', 'dataset_info.json'),
        None,
    ),
    'cub': Layout(
        'images/, images.txt, image_class_labels.txt, train_test_split.txt, classes.txt (optional bounding_boxes.txt)',
        lambda r: _has(r, *_CUB_FILES) and not _has(r, 'hierarchy.txt'),
        _read_cub,
    ),
    'nabirds': Layout(
        'the CUB files (images/, images.txt, image_class_labels.txt, train_test_split.txt, classes.txt) '
        'plus hierarchy.txt',
        lambda r: _has(r, *_CUB_FILES, 'hierarchy.txt'),
        _read_nabirds,
    ),
    'cars': Layout(
        'cars_train/, cars_test/, devkit/cars_meta.mat, devkit/cars_train_annos.mat and '
        'cars_test_annos_withlabels.mat (in devkit/ or the root); or car_ims/ with cars_annos.mat',
        lambda r: _has(r, 'devkit', 'cars_train') or _has(r, 'cars_meta.mat') or _has(r, 'cars_annos.mat'),
        _read_cars,
    ),
    'aircraft': Layout(
        'data/images/, data/images_{variant,family,manufacturer}_{train,val,trainval,test}.txt, '
        'data/{variants,families,manufacturers}.txt',
        lambda r: _has(_aircraft_data(r), 'variants.txt', 'images'),
        _read_aircraft,
    ),
    'dogs': Layout(
        'Images/<wnid>-<breed>/*.jpg, train_list.mat and test_list.mat (in lists/ or the root), or train_list.txt and '
        'test_list.txt (one path under Images/ per line)',
        lambda r: (
            _has(r, 'Images') and (_has(_dogs_lists(r), 'train_list.mat') or _has(_dogs_lists(r), 'train_list.txt'))
        ),
        _read_dogs,
    ),
    'flowers': Layout(
        'jpg/, imagelabels.mat, setid.mat', lambda r: _has(r, 'jpg', 'imagelabels.mat', 'setid.mat'), _read_flowers
    ),
    'folder': Layout(
        'train/<class>/*.jpg|png and val/<class>/* and/or test/<class>/*',
        lambda r: _has(r, 'train') and any(_has(r, d) for d in FOLDER_SPLITS['val'] + FOLDER_SPLITS['test']),
        _read_folder,
    ),
}


def detect_layout(root: str) -> tuple[str, str]:
    """(layout, folder that holds it): the root itself, else its single sub-folder that matches (a download
    folder such as CUB_200_2011/ inside the given root)."""
    if not os.path.isdir(root):
        raise DatasetError(f'dataset root {root!r} is not a folder')
    for name, layout in LAYOUTS.items():
        if layout.detect(root):
            return name, root
    matches = []
    for folder in (os.path.join(root, d) for d in sorted(os.listdir(root))):
        name = next((name for name, layout in LAYOUTS.items() if os.path.isdir(folder) and layout.detect(folder)), None)
        if name is not None:
            matches.append((name, folder))
    if len(matches) == 1:
        return matches[0]
    expected = '\n'.join(f'  {name}: {layout.expects}' for name, layout in LAYOUTS.items())
    found = f'several candidates {matches}' if matches else 'none of them'
    raise DatasetError(
        f'could not recognise the dataset layout of {root!r} ({found}); pass layout=... or arrange '
        f'the files as one of:\n{expected}'
    )


def read_layout(layout: str, root: str, split: str, **options) -> LayoutData:
    """Read one split of a file layout; an empty split is an error."""
    data = LAYOUTS[layout].read(root, split, **options)
    if not data.samples:
        raise DatasetError(f'the {split!r} split of {root!r} ({layout} layout) has no images')
    _logger.info(
        '%s: %s layout, %s split, %d images, %d classes', root, layout, split, len(data.samples), len(data.classes)
    )
    return data
