"""Specification of fgvc_zoo.data: the six FGVC layouts, image folders and HF datasets on miniature trees made
here; robust decoding of every image fault; dataset faults; transforms."""

import contextlib
import io
import math
import os

import numpy as np
import pytest
import scipy.io as scipy_io
import torch
from PIL import Image
from torchvision.datasets import Flowers102

from fgvc_zoo.data import (
    DatasetError,
    MissingSplitError,
    UnreadableDataError,
    UnreadableImageError,
    check_image,
    create_dataset,
    create_transforms,
    detect_layout,
    load_image,
)
from fgvc_zoo.data.synthetic import make_synthetic_fgvc


def _image(path, size=(8, 6), colour=(10, 20, 30), fmt=None) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new('RGB', size, colour).save(path, format=fmt)
    return path


def _write(path, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    return path


def _folder(root, classes=('a', 'b'), per_split=2):
    for split in ('train', 'val'):
        for c in classes:
            for i in range(per_split):
                _image(os.path.join(root, split, c, f'{i}.png'))
    return str(root)


# --- the six FGVC layouts -----------------------------------------------------------------------------------


def _cub(root, images=None, labels=None, split=None, bounding_boxes=True):
    classes = '1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n3 003.Sooty_Albatross\n'
    images = images or {
        1: '001.Black_footed_Albatross/x1.jpg',
        2: '001.Black_footed_Albatross/x2.jpg',
        3: '002.Laysan_Albatross/y1.jpg',
        4: '003.Sooty_Albatross/z1.jpg',
        5: '003.Sooty_Albatross/z2.jpg',
    }
    labels = labels or {1: 1, 2: 1, 3: 2, 4: 3, 5: 3}
    split = split or {1: 1, 2: 0, 3: 1, 4: 1, 5: 0}
    for relative in images.values():
        if '..' not in relative:
            _image(os.path.join(root, 'images', relative), fmt='JPEG')
    _write(os.path.join(root, 'classes.txt'), classes)
    _write(os.path.join(root, 'images.txt'), ''.join(f'{i} {p}\n' for i, p in images.items()))
    _write(os.path.join(root, 'image_class_labels.txt'), ''.join(f'{i} {c}\n' for i, c in labels.items()))
    _write(os.path.join(root, 'train_test_split.txt'), ''.join(f'{i} {s}\n' for i, s in split.items()))
    if bounding_boxes:
        _write(os.path.join(root, 'bounding_boxes.txt'), ''.join(f'{i} 1.0 2.0 3.0 4.0\n' for i in images))
    return str(root)


def test_cub_nested_download_folder_detected_with_names_labels_splits_and_boxes(tmp_path):
    cub = _cub(tmp_path / 'CUB_200_2011')
    assert detect_layout(str(tmp_path)) == ('cub', cub)
    train = create_dataset(str(tmp_path), 'train')
    val = create_dataset(str(tmp_path), 'test')
    assert (train.layout, train.root, train.split, val.split) == ('cub', cub, 'train', 'test')
    assert train.classes == ['Black footed Albatross', 'Laysan Albatross', 'Sooty Albatross']
    images = os.path.join(cub, 'images')
    assert train.samples == [
        (os.path.join(images, '001.Black_footed_Albatross/x1.jpg'), 0),
        (os.path.join(images, '002.Laysan_Albatross/y1.jpg'), 1),
        (os.path.join(images, '003.Sooty_Albatross/z1.jpg'), 2),
    ]
    assert val.targets == [0, 2]
    assert train.boxes == [(1.0, 2.0, 4.0, 6.0)] * 3  # x, y, w, h -> x1, y1, x2, y2
    image, label = train[1]
    assert image.mode == 'RGB' and image.size == (8, 6) and label == 1


@pytest.mark.parametrize('layout', ['cub', 'cars', 'dogs'])
@pytest.mark.parametrize('split', ['val', 'trainval'])
def test_a_layout_without_the_split_says_which_it_has_and_the_fix(tmp_path, layout, split):
    root = {'cub': _cub, 'cars': _cars, 'dogs': _dogs}[layout](tmp_path / layout)
    with pytest.raises(MissingSplitError) as error:
        create_dataset(root, split)
    message = str(error.value)
    assert (
        f'the {layout!r} layout has no {split!r} split' in message
        and "['train', 'test']" in message
        and '\n' not in message
    )
    assert ('--val-fraction' in message) == (split == 'val')
    with pytest.raises(DatasetError, match=r"split 'dev' is not one of \['train', 'trainval', 'val', 'test'"):
        create_dataset(root, 'dev')


def test_nabirds_keeps_only_the_taxonomy_classes_that_label_images(tmp_path):
    ids = {'a1f0': 'owls/o1.jpg', 'b2e1': 'owls/o2.jpg', 'c3d2': 'eagles/e1.jpg', 'd4c3': 'eagles/e2.jpg'}
    for relative in ids.values():
        _image(os.path.join(tmp_path, 'images', relative))
    _write(tmp_path / 'classes.txt', '0 Birds\n1 Perching Birds\n295 Great Horned Owl\n313 Bald Eagle\n')
    _write(tmp_path / 'hierarchy.txt', '295 0\n313 0\n')
    _write(tmp_path / 'images.txt', ''.join(f'{i} {p}\n' for i, p in ids.items()))
    _write(tmp_path / 'image_class_labels.txt', 'a1f0 295\nb2e1 295\nc3d2 313\nd4c3 313\n')
    _write(tmp_path / 'train_test_split.txt', 'a1f0 1\nb2e1 0\nc3d2 1\nd4c3 0\n')
    train = create_dataset(str(tmp_path), 'train')
    assert train.layout == 'nabirds'
    assert train.classes == ['Great Horned Owl', 'Bald Eagle']
    assert [(os.path.basename(p), y) for p, y in train.samples] == [('o1.jpg', 0), ('e1.jpg', 1)]
    assert create_dataset(str(tmp_path), 'test').targets == [0, 1]


def _cars_annotations(rows):
    fields = [('bbox_x1', 'O'), ('bbox_y1', 'O'), ('bbox_x2', 'O'), ('bbox_y2', 'O'), ('class', 'O'), ('fname', 'O')]
    return np.array(rows, dtype=fields)


def _cars(root, test_classes=(2, 1)):
    names = np.array(['AM General Hummer SUV 2000', 'Acura RL Sedan 2012'], dtype=object)
    os.makedirs(root / 'devkit')
    scipy_io.savemat(root / 'devkit' / 'cars_meta.mat', {'class_names': names})
    train = _cars_annotations(
        [(1, 2, 5, 6, 1, '00001.jpg'), (0, 0, 3, 3, 2, '00002.jpg'), (0, 0, 4, 4, 2, '00003.jpg')]
    )
    scipy_io.savemat(root / 'devkit' / 'cars_train_annos.mat', {'annotations': train})
    test = _cars_annotations([(0, 0, 2, 2, c, f'{i:05d}.jpg') for i, c in enumerate(test_classes, 1)])
    scipy_io.savemat(root / 'cars_test_annos_withlabels.mat', {'annotations': test})
    for i in (1, 2, 3):
        _image(os.path.join(root, 'cars_train', f'{i:05d}.jpg'))
    for i in range(1, len(test_classes) + 1):
        _image(os.path.join(root, 'cars_test', f'{i:05d}.jpg'))
    return str(root)


def test_stanford_cars_devkit_layout(tmp_path):
    root = _cars(tmp_path)
    train = create_dataset(root, 'train')
    assert train.layout == 'cars'
    assert train.classes == ['AM General Hummer SUV 2000', 'Acura RL Sedan 2012']
    assert train.samples == [(os.path.join(root, 'cars_train', f'0000{i}.jpg'), y) for i, y in ((1, 0), (2, 1), (3, 1))]
    assert train.boxes[0] == (1.0, 2.0, 5.0, 6.0)
    val = create_dataset(root, 'test')
    assert val.samples == [
        (os.path.join(root, 'cars_test', '00001.jpg'), 1),
        (os.path.join(root, 'cars_test', '00002.jpg'), 0),
    ]


def test_stanford_cars_single_annotation_file_layout(tmp_path):
    fields = [
        ('relative_im_path', 'O'),
        ('bbox_x1', 'O'),
        ('bbox_y1', 'O'),
        ('bbox_x2', 'O'),
        ('bbox_y2', 'O'),
        ('class', 'O'),
        ('test', 'O'),
    ]
    rows = [
        ('car_ims/000001.jpg', 0, 0, 2, 2, 2, 0),
        ('car_ims/000002.jpg', 0, 0, 2, 2, 1, 1),
        ('car_ims/000003.jpg', 0, 0, 2, 2, 1, 0),
    ]
    scipy_io.savemat(
        tmp_path / 'cars_annos.mat',
        {'annotations': np.array(rows, dtype=fields), 'class_names': np.array(['Hummer', 'Acura'], dtype=object)},
    )
    for row in rows:
        _image(os.path.join(tmp_path, row[0]))
    train = create_dataset(str(tmp_path), 'train')
    assert train.layout == 'cars' and train.classes == ['Hummer', 'Acura']
    assert [(os.path.basename(p), y) for p, y in train.samples] == [('000001.jpg', 1), ('000003.jpg', 0)]
    assert create_dataset(str(tmp_path), 'test').targets == [0]


def _aircraft(root):
    data = root / 'fgvc-aircraft-2013b' / 'data'
    ids = {
        '1025794': ('707-320', 'Boeing 707', 'Boeing'),
        '1340192': ('A300B4', 'A300', 'Airbus'),
        '0056978': ('727-200', 'Boeing 727', 'Boeing'),
        '0062765': ('A300B4', 'A300', 'Airbus'),
    }
    for image_id in ids:
        _image(os.path.join(data, 'images', image_id + '.jpg'))
    _write(data / 'variants.txt', '707-320\n727-200\nA300B4\n')
    _write(data / 'families.txt', 'A300\nBoeing 707\nBoeing 727\n')
    _write(data / 'manufacturers.txt', 'Airbus\nBoeing\n')
    for level, column in (('variant', 0), ('family', 1), ('manufacturer', 2)):
        splits = {'train': ('1025794',), 'val': ('1340192',), 'test': ('0056978', '0062765')}
        splits['trainval'] = splits['train'] + splits['val']
        for split, members in splits.items():
            _write(data / f'images_{level}_{split}.txt', ''.join(f'{i} {ids[i][column]}\n' for i in members))
    return str(data.parent)


def test_fgvc_aircraft_levels_and_its_official_train_val_trainval_test_splits(tmp_path):
    root = _aircraft(tmp_path)
    variant = create_dataset(root, 'trainval')
    assert variant.layout == 'aircraft'
    assert variant.classes == ['707-320', '727-200', 'A300B4']
    images = os.path.join(root, 'data', 'images')
    assert variant.samples == [(os.path.join(images, '1025794.jpg'), 0), (os.path.join(images, '1340192.jpg'), 2)]
    assert create_dataset(root, 'train').samples == [(os.path.join(images, '1025794.jpg'), 0)]
    assert create_dataset(root, 'validation').samples == [(os.path.join(images, '1340192.jpg'), 2)]
    family = create_dataset(root, 'test', level='family')
    assert family.classes == ['A300', 'Boeing 707', 'Boeing 727']
    assert family.samples == [(os.path.join(images, '0056978.jpg'), 2), (os.path.join(images, '0062765.jpg'), 0)]
    assert create_dataset(root, 'test', level='manufacturer').targets == [1, 0]
    with pytest.raises(DatasetError, match='level'):
        create_dataset(root, level='model')


def test_fgvc_aircraft_keeps_its_banner_as_the_references_and_crops_it_on_request(tmp_path):
    root = _aircraft(tmp_path)
    path = os.path.join(root, 'data', 'images', '1025794.jpg')
    pixels = np.zeros((60, 40, 3), np.uint8)
    pixels[-20:] = 255  # the 20-row banner at the bottom
    Image.fromarray(pixels).save(path, quality=100)
    kept = create_dataset(root, 'train')[0][0]
    assert kept.size == (40, 60)
    cropped = create_dataset(root, 'train', crop_banner=True)[0][0]
    assert cropped.size == (40, 40) and np.asarray(cropped).max() < 30  # no banner row left
    with pytest.raises(DatasetError, match=r"options \['crop_banner'\] are not accepted by the 'folder' layout"):
        create_dataset(str(tmp_path / 'x'), 'train', layout='folder', crop_banner=True)


def _dogs(root, lists='mat'):
    files = {
        'n02085620-Chihuahua': ['n02085620_1.jpg', 'n02085620_2.jpg'],
        'n02085782-Japanese_spaniel': ['n02085782_1.jpg', 'n02085782_2.jpg'],
    }
    for folder, names in files.items():
        for name in names:
            _image(os.path.join(root, 'Images', folder, name))
    train = ['n02085620-Chihuahua/n02085620_1.jpg', 'n02085782-Japanese_spaniel/n02085782_1.jpg']
    test = ['n02085782-Japanese_spaniel/n02085782_2.jpg', 'n02085620-Chihuahua/n02085620_2.jpg']
    if lists == 'mat':
        os.makedirs(root / 'lists')
        for stem, paths, labels in (('train_list', train, [1, 2]), ('test_list', test, [2, 1])):
            scipy_io.savemat(
                root / 'lists' / f'{stem}.mat', {'file_list': np.array(paths, dtype=object), 'labels': np.array(labels)}
            )
    else:
        _write(root / 'train_list.txt', '\n'.join(train))
        _write(root / 'test_list.txt', '\n'.join(test))
    return str(root)


@pytest.mark.parametrize('lists', ['mat', 'txt'])
def test_stanford_dogs_with_mat_or_txt_lists(tmp_path, lists):
    root = _dogs(tmp_path, lists)
    train = create_dataset(root, 'train')
    assert train.layout == 'dogs'
    assert train.classes == ['Chihuahua', 'Japanese spaniel']
    assert [(os.path.basename(p), y) for p, y in train.samples] == [('n02085620_1.jpg', 0), ('n02085782_1.jpg', 1)]
    assert create_dataset(root, 'test').targets == [1, 0]


FLOWER_NAMES_IN_TORCHVISION = hasattr(Flowers102, 'classes')


@pytest.mark.skipif(not FLOWER_NAMES_IN_TORCHVISION, reason='the 102 names need torchvision>=0.20 (Flowers102.classes)')
def test_oxford_flowers_splits_are_trnid_valid_tstid_and_names_are_the_102_flowers(tmp_path):
    for i in range(1, 7):
        _image(os.path.join(tmp_path, 'jpg', f'image_{i:05d}.jpg'))
    scipy_io.savemat(tmp_path / 'imagelabels.mat', {'labels': np.array([[1, 2, 102, 2, 1, 102]])})
    scipy_io.savemat(
        tmp_path / 'setid.mat', {'trnid': np.array([[1, 2]]), 'valid': np.array([[3]]), 'tstid': np.array([[4, 5, 6]])}
    )
    trainval = create_dataset(str(tmp_path), 'trainval')
    assert trainval.layout == 'flowers' and len(trainval.classes) == 102
    assert trainval.classes[0] == 'pink primrose' and trainval.classes[101] == 'blackberry lily'
    assert [(os.path.basename(p), y) for p, y in trainval.samples] == [
        ('image_00001.jpg', 0),
        ('image_00002.jpg', 1),
        ('image_00003.jpg', 101),
    ]
    assert create_dataset(str(tmp_path), 'train').targets == [0, 1]
    assert create_dataset(str(tmp_path), 'val').targets == [101]
    assert create_dataset(str(tmp_path), 'test').targets == [1, 0, 101]


def test_oxford_flowers_on_a_torchvision_without_the_names_is_one_line_naming_the_version(tmp_path, monkeypatch):
    monkeypatch.delattr(Flowers102, 'classes', raising=False)
    _image(os.path.join(tmp_path, 'jpg', 'image_00001.jpg'))
    scipy_io.savemat(tmp_path / 'imagelabels.mat', {'labels': np.array([[1]])})
    scipy_io.savemat(
        tmp_path / 'setid.mat', {'trnid': np.array([[1]]), 'valid': np.array([[1]]), 'tstid': np.array([[1]])}
    )
    with pytest.raises(DatasetError, match=r'torchvision, whose Flowers102 has them from version 0\.20 on') as error:
        create_dataset(str(tmp_path), 'train', layout='flowers')
    assert '\n' not in str(error.value)


def test_image_folder_reads_test_as_test_and_val_as_val(tmp_path):
    _folder(tmp_path / 'x', classes=('b_cls', 'a_cls'))
    os.rename(tmp_path / 'x' / 'val', tmp_path / 'x' / 'test')
    train = create_dataset(str(tmp_path / 'x'), 'train', layout='folder')
    test = create_dataset(str(tmp_path / 'x'), 'test')
    assert train.classes == ['a_cls', 'b_cls'] and test.layout == 'folder' and test.split == 'test'
    assert test.samples[0] == (os.path.join(tmp_path, 'x', 'test', 'a_cls', '0.png'), 0)
    assert test.targets == [0, 0, 1, 1]
    with pytest.raises(
        MissingSplitError, match=r"no val/ or validation/ for the 'val' split \(it has \['train', 'test'\]\)"
    ):
        create_dataset(str(tmp_path / 'x'), 'val')
    _image(os.path.join(tmp_path, 'x', 'val', 'b_cls', 'v.png'))
    val = create_dataset(str(tmp_path / 'x'), 'validation')
    assert val.split == 'val' and val.samples == [(os.path.join(tmp_path, 'x', 'val', 'b_cls', 'v.png'), 1)]
    assert len(create_dataset(str(tmp_path / 'x'), 'test')) == 4


def _hf_dataset(path, image_bytes=None):
    import datasets

    features = datasets.Features({'image': datasets.Image(), 'label': datasets.ClassLabel(names=['cat', 'dog'])})
    colours = [(255, 0, 0), (0, 0, 255)]
    images = [Image.new('RGB', (5, 4), c) for c in colours]
    if image_bytes is not None:
        images = [{'bytes': image_bytes, 'path': None}, images[1]]
    split = datasets.Dataset.from_dict({'image': images, 'label': [1, 0]}, features=features)
    datasets.DatasetDict({'train': split, 'test': split}).save_to_disk(str(path))
    return str(path)


def test_hugging_face_dataset_saved_to_disk(tmp_path):
    root = _hf_dataset(tmp_path / 'hf')
    train = create_dataset(root, 'train')
    val = create_dataset(root, 'test', layout='hf')
    assert (train.layout, train.classes, train.targets) == ('hf', ['cat', 'dog'], [1, 0])
    assert val.samples[1] == (f'{root}[test][1]', 0)
    with pytest.raises(MissingSplitError, match=r"none of \['validation', 'val', 'valid'\] for the 'val' split"):
        create_dataset(root, 'val')
    image, label = val[0]
    assert image.getpixel((0, 0)) == (255, 0, 0) and label == 1
    with pytest.raises(DatasetError, match="no column 'species'"):
        create_dataset(root, layout='hf', label_column='species')


def test_hugging_face_image_that_cannot_be_decoded_is_listed(tmp_path):
    train = create_dataset(_hf_dataset(tmp_path / 'hf', image_bytes=b'not an image'), max_unreadable_fraction=0.5)
    with pytest.warns(UserWarning, match=r'\[train\]\[0\]'):
        assert train.check_images() == [f'{train.root}[train][0]']
    assert train.targets == [0]


def test_unrecognised_folder_lists_what_each_layout_expects(tmp_path):
    _write(tmp_path / 'notes.txt', 'hello')
    with pytest.raises(DatasetError, match='could not recognise') as error:
        create_dataset(str(tmp_path))
    for expected in (
        'cub:',
        'cars_meta.mat',
        'images_{variant,family,manufacturer}',
        'setid.mat',
        'train_list',
        'hierarchy.txt',
        'train/<class>',
        'save_to_disk',
    ):
        assert expected in str(error.value)


def test_unknown_split_layout_and_option_are_refused(tmp_path):
    root = _folder(tmp_path)
    with pytest.raises(DatasetError, match="split 'dev'"):
        create_dataset(root, 'dev')
    with pytest.raises(DatasetError, match="unknown layout 'imagenet'"):
        create_dataset(root, layout='imagenet')
    with pytest.raises(DatasetError, match=r"\['level'\] are not accepted by the 'folder' layout"):
        create_dataset(root, level='family')


# --- image faults -------------------------------------------------------------------------------------------


def test_grayscale_becomes_grey_rgb(tmp_path):
    Image.new('L', (3, 3), 100).save(tmp_path / 'g.png')
    assert load_image(str(tmp_path / 'g.png')).getpixel((1, 1)) == (100, 100, 100)


def test_rgba_is_composited_on_white(tmp_path):
    image = Image.new('RGBA', (3, 1))
    image.putdata([(255, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 128)])
    image.save(tmp_path / 'a.png')
    rgb = load_image(str(tmp_path / 'a.png'))
    # transparent -> white; opaque -> itself; black at alpha 128 over white: 255 * (1 - 128 / 255) = 127
    assert [rgb.getpixel((x, 0)) for x in range(3)] == [(255, 255, 255), (255, 0, 0), (127, 127, 127)]


def test_cmyk_becomes_rgb(tmp_path):
    Image.new('CMYK', (2, 2), (255, 0, 0, 0)).save(tmp_path / 'k.tif')  # full cyan
    assert load_image(str(tmp_path / 'k.tif')).getpixel((0, 0)) == (0, 255, 255)


def test_palette_with_and_without_transparency(tmp_path):
    image = Image.new('P', (2, 1))
    image.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    image.putdata([0, 1])
    image.save(tmp_path / 'p.png')
    assert [load_image(str(tmp_path / 'p.png')).getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), (200, 10, 20)]
    image.save(tmp_path / 't.png', transparency=0)
    assert [load_image(str(tmp_path / 't.png')).getpixel((x, 0)) for x in range(2)] == [(255,) * 3, (200, 10, 20)]


def test_16_bit_is_rescaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[25700, 65535]], dtype=np.uint16)).save(tmp_path / 's.png')
    rgb = load_image(str(tmp_path / 's.png'))
    assert [rgb.getpixel((x, 0)) for x in range(2)] == [(100,) * 3, (255,) * 3]  # 25700 / 257 = 100


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new('RGB', (4, 2), (0, 0, 255))
    image.putpixel((0, 0), (255, 0, 0))
    image.putpixel((0, 1), (255, 0, 0))  # the left column is red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(tmp_path / 'e.png', exif=exif.tobytes())
    upright = load_image(str(tmp_path / 'e.png'))
    assert upright.size == (2, 4)
    assert upright.getpixel((0, 0)) == upright.getpixel((1, 0)) == (255, 0, 0)  # ... and is now the top row
    assert upright.getpixel((0, 3)) == (0, 0, 255)


def test_tiny_image_passes_and_the_transform_resizes_it(tmp_path):
    Image.new('RGB', (1, 1), (9, 9, 9)).save(tmp_path / 'tiny.png')
    config = {'input_size': (3, 224, 224), 'crop_pct': 0.875, 'interpolation': 'bilinear'}
    assert create_transforms(config, False, img_size=32)(load_image(str(tmp_path / 'tiny.png'))).shape == (3, 32, 32)


@pytest.mark.parametrize('side', [11, 15])  # 121 px: PIL's warning zone (> 100); 225 px: PIL's error (> 200)
def test_decompression_bomb_sized_image_is_unreadable(tmp_path, monkeypatch, side):
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)
    Image.new('RGB', (side, side)).save(tmp_path / 'bomb.png')
    with pytest.warns(Image.DecompressionBombWarning) if side == 11 else contextlib.nullcontext():
        assert 'decompression-bomb' in check_image(str(tmp_path / 'bomb.png'))
        with pytest.raises(UnreadableImageError, match='decompression-bomb'):
            load_image(str(tmp_path / 'bomb.png'))


def _valid_png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (16, 16, 3), dtype=np.uint8)).save(buffer, 'PNG')
    return buffer.getvalue()


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, 'JPEG')
    return buffer.getvalue()


def _corrupt_png() -> bytes:
    data = bytearray(_valid_png_bytes())
    start = data.find(b'IDAT') + 10
    data[start : start + 20] = bytes(20)  # zeros inside the compressed pixel stream
    return bytes(data)


BAD_FILES = {
    'corrupt.png': (_corrupt_png, 'broken data stream'),
    'truncated.jpg': (lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2], 'truncated'),
    'empty.jpg': (lambda: b'', 'zero-byte'),
    'text.png': (lambda: b'this is a README, not an image\n', 'cannot identify'),
}


@pytest.mark.parametrize('name', sorted(BAD_FILES))
def test_unreadable_file_raises_naming_it(tmp_path, name):
    content, reason = BAD_FILES[name]
    (tmp_path / name).write_bytes(content())
    with pytest.raises(UnreadableImageError, match=reason) as error:
        load_image(str(tmp_path / name))
    assert str(tmp_path / name) in str(error.value)
    assert reason in check_image(str(tmp_path / name))


def test_a_file_removed_after_it_was_seen_is_unreadable_not_a_crash(tmp_path, monkeypatch):
    """The file is there when first looked at, gone right after (another process, a sync): its error, like a missing
    file's, is what a dataset skips and predict writes as a row."""
    path = tmp_path / 'gone.png'
    stat = os.stat

    def stat_then_remove(name, *args, **kwargs):
        result = stat(name, *args, **kwargs)
        if os.fspath(name) == str(path):
            path.unlink(missing_ok=True)
        return result

    monkeypatch.setattr(os, 'stat', stat_then_remove)
    path.write_bytes(_valid_png_bytes())
    with pytest.raises(UnreadableImageError, match='file not found'):
        load_image(str(path))
    path.write_bytes(_valid_png_bytes())
    assert check_image(str(path)) == 'file not found'


def _folder_with_bad_files(tmp_path, good_per_class=3):
    root = _folder(tmp_path / 'data', per_split=good_per_class)
    bad = []
    for name, (content, _) in sorted(BAD_FILES.items()):
        path = tmp_path / 'data' / 'train' / 'a' / name
        path.write_bytes(content())
        bad.append(str(path))
    return root, bad


def test_check_images_skips_warns_and_lists_every_unreadable_file(tmp_path):
    root, bad = _folder_with_bad_files(tmp_path)
    train = create_dataset(root, max_unreadable_fraction=0.5)
    assert len(train) == 10
    with pytest.warns(UserWarning) as warned:
        assert sorted(train.check_images()) == sorted(bad)
    assert sorted(train.unreadable) == sorted(bad)
    assert all(any(path in str(w.message) for w in warned) for path in bad)
    assert len(train) == 6 and not set(bad) & {p for p, _ in train.samples}
    assert 'zero-byte' in train.unreadable_reasons[str(tmp_path / 'data' / 'train' / 'a' / 'empty.jpg')]


def test_more_unreadable_than_the_allowed_share_stops_with_the_list(tmp_path):
    root, bad = _folder_with_bad_files(tmp_path)
    train = create_dataset(root)  # default max_unreadable_fraction=0.01; 4 of 10 are unreadable
    with pytest.warns(UserWarning), pytest.raises(UnreadableDataError, match=r'4 of 10 images \(40.0%\)') as error:
        train.check_images()
    assert all(path in str(error.value) for path in bad)


def test_unreadable_file_met_while_training_is_replaced_by_the_next_sample(tmp_path):
    root, bad = _folder_with_bad_files(tmp_path, good_per_class=1)
    train = create_dataset(root, max_unreadable_fraction=1.0)
    # train/a holds 0.png then the four bad files (sorted); the next readable sample is train/b/0.png
    index = [p for p, _ in train.samples].index(bad[0])
    with pytest.warns(UserWarning) as warned:
        image, label = train[index]
    assert image.size == (8, 6) and label == 1
    assert train.unreadable == bad and [p for p in bad if any(p in str(w.message) for w in warned)] == bad


# --- dataset faults -----------------------------------------------------------------------------------------


def test_missing_split_file_names_it_and_the_layout(tmp_path):
    root = _cub(tmp_path)
    os.remove(tmp_path / 'train_test_split.txt')
    with pytest.raises(DatasetError, match="missing 'train_test_split.txt' of the 'cub' layout") as error:
        create_dataset(root, layout='cub')
    assert 'image_class_labels.txt' in str(error.value)  # the message lists what the layout expects


def test_label_out_of_range(tmp_path):
    root = _cub(tmp_path / 'cub', labels={1: 1, 2: 1, 3: 2, 4: 9, 5: 3})
    with pytest.raises(DatasetError, match=r'image_class_labels.txt line 4: class id 9 .*label out of range'):
        create_dataset(root)
    cars = _cars(tmp_path / 'cars', test_classes=(1, 3))
    with pytest.raises(DatasetError, match=r'annotation 2: class 3 is outside 1..2'):
        create_dataset(cars, 'test')


def test_empty_class_folder_is_warned_and_skipped(tmp_path):
    root = _folder(tmp_path)
    os.makedirs(tmp_path / 'train' / 'c_empty')
    with pytest.warns(UserWarning, match='c_empty.* holds no images'):
        train = create_dataset(root)
    assert train.classes == ['a', 'b']


def test_class_in_val_not_in_train_is_named(tmp_path):
    root = _folder(tmp_path)
    _image(os.path.join(root, 'val', 'zebra', '0.png'))
    with pytest.raises(DatasetError, match=r"not in the train split: \['zebra'\]"):
        create_dataset(root, 'val')


def test_non_utf8_file_and_class_names_load(tmp_path):
    root = _folder(tmp_path)
    os.makedirs(os.path.join(os.fsencode(root), b'train', b'caf\xe9'))
    Image.new('RGB', (4, 4), (1, 2, 3)).save(os.path.join(os.fsencode(root), b'train', b'caf\xe9', b'\xff\xfe.png'))
    train = create_dataset(root)
    assert train.classes == ['a', 'b', 'caf\ufffd']
    image, label = train[len(train) - 1]
    assert label == 2 and image.getpixel((0, 0)) == (1, 2, 3)


def test_non_utf8_path_in_metadata_loads(tmp_path):
    root = _cub(tmp_path)
    latin1 = os.fsdecode(b'001.Black_footed_Albatross/caf\xe9.jpg')
    _image(os.path.join(root, 'images', latin1))
    with open(tmp_path / 'images.txt', 'ab') as f:
        f.write(b'6 001.Black_footed_Albatross/caf\xe9.jpg\n')
    _write(tmp_path / 'image_class_labels.txt', '1 1\n2 1\n3 2\n4 3\n5 3\n6 1\n')
    _write(tmp_path / 'train_test_split.txt', '1 1\n2 0\n3 1\n4 1\n5 0\n6 1\n')
    train = create_dataset(root)
    assert train.samples[-1] == (os.path.join(root, 'images', latin1), 0)
    assert train[len(train) - 1][0].size == (8, 6)


@pytest.mark.parametrize('path', ['../../etc/passwd', '/etc/passwd', 'ok/../../outside.jpg'])
def test_metadata_paths_cannot_escape_the_root(tmp_path, path):
    root = _cub(
        tmp_path, images={1: '001.Black_footed_Albatross/x1.jpg', 2: path, 3: 'a/b.jpg', 4: 'c/d.jpg', 5: 'e/f.jpg'}
    )
    with pytest.raises(DatasetError, match=r'images.txt line 2: path .* escapes the dataset root'):
        create_dataset(root, 'test')


def test_dogs_list_cannot_escape_the_root(tmp_path):
    root = _dogs(tmp_path, 'txt')
    _write(tmp_path / 'train_list.txt', 'n02085620-Chihuahua/../../../secret.jpg\n')
    with pytest.raises(DatasetError, match='escapes the dataset root'):
        create_dataset(root)


# --- transforms ---------------------------------------------------------------------------------------------


def test_eval_transform_resizes_by_crop_pct_then_centre_crops():
    config = {
        'input_size': (3, 448, 448),
        'crop_pct': 0.875,
        'interpolation': 'bilinear',
        'mean': (0.5, 0.5, 0.5),
        'std': (0.5, 0.5, 0.5),
    }
    transform = create_transforms(config, is_training=False, img_size=56)
    resize, crop = transform.transforms[0], transform.transforms[1]
    assert resize.size == 64 and crop.size == (56, 56)  # 56 / 0.875 = 64
    white = transform(Image.new('RGB', (100, 80), (255, 255, 255)))
    assert white.shape == (3, 56, 56) and torch.allclose(white, torch.ones(1))  # (1 - 0.5) / 0.5


def test_train_transform_is_random_resized_crop_and_flip_at_the_config_size():
    import timm

    model = timm.create_model('test_resnet', pretrained=False)
    names = [type(t).__name__ for t in create_transforms(model, is_training=True).transforms]
    assert names[:2] == ['RandomResizedCropAndInterpolation', 'RandomHorizontalFlip'] and 'ColorJitter' not in names
    fgvc = {'input_size': (3, 448, 448), 'crop_pct': 0.875, 'interpolation': 'bilinear'}
    assert create_transforms(fgvc, True).transforms[0].size == (448, 448)


def _square_image(width: int = 120, height: int = 80, side: int = 16) -> Image.Image:
    """Black, with a white `side` x `side` square at the centre: its side in an output measures the zoom."""
    image = np.zeros((height, width, 3), np.uint8)
    top, left = (height - side) // 2, (width - side) // 2
    image[top : top + side, left : left + side] = 255
    return Image.fromarray(image)


def _square_sides(transform, image: Image.Image, draws: int = 30) -> list[float]:
    torch.manual_seed(0)
    return [(transform(image)[0] > 0.5).sum().item() ** 0.5 for _ in range(draws)]


def test_resize_crop_zooms_every_draw_by_exactly_img_size_over_crop_pct_and_rrc_does_not():
    # mean 0 / std 1: the output is the image in [0, 1]. 64 / 0.875 = 73 px short side: a fixed zoom of 73 / 80.
    config = {
        'input_size': (3, 64, 64),
        'crop_pct': 0.875,
        'interpolation': 'bilinear',
        'mean': (0,) * 3,
        'std': (1,) * 3,
    }
    image, side = _square_image(side=16), 16
    resize_crop = create_transforms(config, is_training=True, train_crop='resize_crop')
    assert [type(t).__name__ for t in resize_crop.transforms[:3]] == ['Resize', 'RandomCrop', 'RandomHorizontalFlip']
    zoom = (64 // 0.875) / 80
    assert resize_crop(image).shape == (3, 64, 64) and resize_crop(image.transpose(Image.TRANSPOSE)).shape == (
        3,
        64,
        64,
    )
    assert all(abs(s - side * zoom) < 1 for s in _square_sides(resize_crop, image))
    # timm's random resized crop (area 0.08-1) zooms the object by up to 1 / sqrt(0.08) = 3.5x the whole-image scale.
    rrc = create_transforms(config, is_training=True, train_crop='rrc')
    assert rrc(image).shape == (3, 64, 64)
    assert max(_square_sides(rrc, image)) > 1.5 * side * zoom


def test_resize_crop_refuses_the_random_resized_crop_options_and_unknown_crops():
    config = {'input_size': (3, 64, 64), 'crop_pct': 0.875, 'interpolation': 'bilinear'}
    with pytest.raises(ValueError, match=r"scale set the random resized crop's range.*train_crop='rrc'"):
        create_transforms(config, True, train_crop='resize_crop', scale=(0.5, 1.0))
    with pytest.raises(ValueError, match=r"train_crop='centre' is not one of \('rrc', 'resize_crop'\)"):
        create_transforms(config, True, train_crop='centre')


# The references' pipelines, built from torchvision as their code writes them (NTS-Net core/dataset.py, PMG train.py).
REFERENCES = {
    'lfd_resnet50': (600, 0),  # NTS-Net: Resize((600, 600)) -> RandomCrop(448) / CenterCrop(448)
    'iagn_resnet50': (550, 8),  # PMG: Resize((550, 550)) -> RandomCrop(448, padding=8) / CenterCrop(448)
    'dpnet_resnet50': (600, 0),  # no reference: LFD's, a choice (docs/methods.md)
}


def _reference(scale: int, padding: int, train: bool, config: dict):
    from torchvision import transforms as T

    crop = [T.RandomCrop(448, padding=padding or None), T.RandomHorizontalFlip()] if train else [T.CenterCrop(448)]
    normalize = [T.ToTensor(), T.Normalize(config['mean'], config['std'])]
    return T.Compose([T.Resize((scale, scale), interpolation=T.InterpolationMode.BILINEAR), *crop, *normalize])


@pytest.mark.parametrize('name', list(REFERENCES))
def test_each_heads_cfg_gives_timm_users_the_references_squash_and_centre_crop_pixel_for_pixel(name):
    import timm

    scale, _ = REFERENCES[name]
    config = timm.data.resolve_data_config({}, model=timm.create_model(name))
    assert config['crop_mode'] == 'squash' and config['input_size'] == (3, 448, 448)
    assert math.floor(448 / config['crop_pct']) == scale
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8))  # 4:3
    ours = timm.data.create_transform(**config)(image)
    torch.testing.assert_close(ours, _reference(scale, 0, False, config)(image), atol=0, rtol=0)
    torch.testing.assert_close(create_transforms(config, is_training=False)(image), ours, atol=0, rtol=0)


@pytest.mark.parametrize('name', list(REFERENCES))
def test_resize_crop_is_the_references_square_resize_random_crop_and_flip_pixel_for_pixel(name):
    import timm

    scale, padding = REFERENCES[name]
    config = timm.data.resolve_data_config({}, model=timm.create_model(name))
    ours = create_transforms(config, is_training=True, train_crop='resize_crop', padding=padding)
    reference = _reference(scale, padding, True, config)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 520, 3), dtype=np.uint8))
    for seed in range(4):  # the same random draws: crop position (padded for PMG) and flip
        torch.manual_seed(seed)
        mine = ours(image)
        torch.manual_seed(seed)
        torch.testing.assert_close(mine, reference(image), atol=0, rtol=0)


def test_padding_is_only_for_the_resize_crop():
    config = {'input_size': (3, 64, 64), 'crop_pct': 0.875, 'interpolation': 'bilinear'}
    with pytest.raises(ValueError, match="padding=8 pads the random crop of train_crop='resize_crop' only"):
        create_transforms(config, True, padding=8)


def test_synthetic_parts_lie_inside_what_the_eval_crop_keeps(tmp_path):
    import json

    from fgvc_zoo.data.synthetic import EVAL_KEEP

    size = 128
    make_synthetic_fgvc(str(tmp_path), num_classes=4, train_per_class=40, val_per_class=10, image_size=size)
    boxes = np.array(list(json.loads((tmp_path / 'parts.json').read_text()).values()))
    # 448 / 600 of each side is kept: [0.1267, 0.8733] x size = [16.2, 111.8] px at 128.
    low, high = (1 - EVAL_KEEP) / 2 * size, (1 + EVAL_KEEP) / 2 * size
    assert boxes[:, :2].min() >= math.floor(low) and boxes[:, 2:].max() <= math.ceil(high)
    assert boxes[:, 2:].max() > 0.8 * size  # the parts still reach the kept square's edges, not just its centre


class _ExtremeRng:
    """A generator that puts the body and its part at an extreme: body centre at the end of its range `end`, widest
    body, part at the body's rim in direction `theta` (what random draws reach only rarely)."""

    def __init__(self, end: str, theta: float):
        self.rng, self.end, self.theta = np.random.default_rng(0), end, theta

    def integers(self, *args, **kwargs):
        return self.rng.integers(*args, **kwargs)

    def uniform(self, low=0.0, high=1.0, size=None):
        if high == 2 * np.pi:
            return self.theta
        value = low if (self.end == 'low' and low == 0.4) else high
        return np.full(size, value) if size else value


@pytest.mark.parametrize('end,theta', [('high', 0.0), ('high', np.pi / 2), ('low', np.pi), ('low', 3 * np.pi / 2)])
def test_a_part_at_the_bodys_rim_is_pulled_inside_the_eval_crop(end, theta):
    from fgvc_zoo.data.synthetic import EVAL_KEEP, _render

    size, side = 128, 19
    _, (x1, y1, x2, y2) = _render(_ExtremeRng(end, theta), size, 'hbar', side)
    low, high = (1 - EVAL_KEEP) / 2 * size, (1 + EVAL_KEEP) / 2 * size  # 16.2 and 111.8 px
    assert min(x1, y1) >= math.floor(low) and max(x2, y2) <= math.ceil(high)
    # Pulled to the kept square's edge, not further: centre 0.6 + 0.34 - half would have put it at 120 px.
    assert max(x2, y2) >= math.floor(high) if end == 'high' else min(x1, y1) <= math.ceil(low)
