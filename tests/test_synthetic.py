"""Specification of the synthetic fine-grained dataset and the pointing metric."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fgvc_zoo.data import GLYPHS, create_dataset, make_synthetic_fgvc, pointing_accuracy, read_part_boxes

LIGHT, DARK = 230, 25  # the part tile's two grey levels


def _files(root):
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, 'rb') as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = _files(make_synthetic_fgvc(str(tmp_path / 'a'), num_classes=3, train_per_class=2, val_per_class=1, seed=7))
    b = _files(make_synthetic_fgvc(str(tmp_path / 'b'), num_classes=3, train_per_class=2, val_per_class=1, seed=7))
    c = _files(make_synthetic_fgvc(str(tmp_path / 'c'), num_classes=3, train_per_class=2, val_per_class=1, seed=8))
    assert len(a) == 3 * 3 + 1 and a == b
    assert sorted(a) == sorted(c) and all(a[k] != c[k] for k in a if k.endswith('.png'))


def test_an_image_does_not_depend_on_how_many_are_generated(tmp_path):
    few = make_synthetic_fgvc(str(tmp_path / 'few'), num_classes=2, train_per_class=1, val_per_class=1)
    many = make_synthetic_fgvc(str(tmp_path / 'many'), num_classes=4, train_per_class=3, val_per_class=2)
    for relative in ('train/hbar/0000.png', 'val/vbar/0000.png'):
        assert _files(few)[relative] == _files(many)[relative]


def test_folder_layout_with_one_class_per_glyph(tmp_path):
    root = make_synthetic_fgvc(str(tmp_path), num_classes=4, train_per_class=3, val_per_class=2, image_size=64)
    train, val = create_dataset(root, 'train'), create_dataset(root, 'val')
    assert train.layout == 'folder' and train.classes == sorted(['hbar', 'vbar', 'plus', 'cross'])
    assert (len(train), len(val)) == (12, 8)
    image, _ = train[0]
    assert image.size == (64, 64) and image.mode == 'RGB'


def test_part_box_holds_the_class_glyph_tile(tmp_path):
    root = make_synthetic_fgvc(
        str(tmp_path), num_classes=2, train_per_class=4, val_per_class=2, image_size=128, part_size=0.15
    )
    parts = read_part_boxes(root)
    with open(os.path.join(root, 'parts.json')) as f:
        assert len(json.load(f)) == 2 * 4 + 2 * 2
    for path, (x1, y1, x2, y2) in parts.items():
        assert x2 - x1 == y2 - y1 == 19  # round(0.15 * 128)
        assert 0 <= x1 and x2 <= 128 and 0 <= y1 and y2 <= 128
        tile = np.asarray(Image.open(path))[y1:y2, x1:x2, 0]
        assert set(np.unique(tile)) == {LIGHT, DARK}
        # 'hbar': rows with |v| < 0.3 are dark, v = (row + 0.5) / 19 * 2 - 1: row 9 -> 0 (dark), row 0 -> -0.95
        # 'vbar': the same in columns
        centre_row, top_row, centre_col = tile[9], tile[0], tile[:, 9]
        if '/hbar/' in path:
            assert (centre_row == DARK).all() and (top_row == LIGHT).all()
        else:
            assert (centre_col == DARK).all() and (tile[:, 0] == LIGHT).all()


def test_every_glyph_survives_a_horizontal_flip_and_glyphs_differ(tmp_path):
    root = make_synthetic_fgvc(
        str(tmp_path), num_classes=len(GLYPHS), train_per_class=1, val_per_class=1, image_size=128
    )
    tiles = {}
    for path, (x1, y1, x2, y2) in read_part_boxes(root).items():
        if path.startswith(os.path.join(root, 'train')):
            tile = np.asarray(Image.open(path))[y1:y2, x1:x2, 0]
            assert (tile == tile[:, ::-1]).all(), path
            tiles[path.split(os.sep)[-2]] = tile.tobytes()
    assert sorted(tiles) == sorted(GLYPHS) and len(set(tiles.values())) == len(GLYPHS)


def test_part_lands_at_different_spots(tmp_path):
    root = make_synthetic_fgvc(str(tmp_path), num_classes=2, train_per_class=8, val_per_class=1)
    corners = {tuple(box[:2]) for box in read_part_boxes(root).values()}
    assert len(corners) >= 8


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match='2 to 12 classes'):
        make_synthetic_fgvc(str(tmp_path), num_classes=13)
    with pytest.raises(ValueError, match='part must be small'):
        make_synthetic_fgvc(str(tmp_path), part_size=0.6)


def test_pointing_accuracy_with_boxes_hand_computed():
    predicted = [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 5], [5, 5, 9, 9]]
    parts = [
        [4, 4, 6, 6],  # centre (5, 5) inside [0, 10]^2: hit
        [0, 0, 2, 2],  # centre (1, 1) outside [20, 30]^2: miss
        [4, 4, 6, 6],  # centre (5, 5) on the border of [0, 5]^2: hit
        [0, 0, 8, 2],
    ]  # centre (4, 1) left of x1 = 5: miss
    assert pointing_accuracy(predicted, parts) == 0.5
    assert pointing_accuracy(torch.tensor(predicted[:1]), torch.tensor(parts[:1])) == 1.0


def test_pointing_accuracy_with_points_hand_computed():
    parts = np.array([[4, 4, 6, 6], [4, 4, 6, 6], [0, 0, 10, 10]])
    points = np.array([[5, 5], [7, 5], [10, 0]])  # inside, right of x2, on the corner
    assert pointing_accuracy(points, parts) == pytest.approx(2 / 3)


def test_pointing_accuracy_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r'\(N, 4\) boxes or \(N, 2\) points'):
        pointing_accuracy([[0, 0, 1]], [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match='zero images'):
        pointing_accuracy(np.zeros((0, 4)), np.zeros((0, 4)))
