"""A synthetic fine-grained dataset whose discriminative part is known, and the pointing metric that uses it.

Every image shows the same kind of object (a brown ellipse "body") on a cluttered background (a smooth random
colour field, pixel noise and random shapes). The classes differ ONLY by a small square part on the body: a
dark glyph on a light tile, one glyph per class (bar, plus, ring, triangle, ...). Every glyph is mirror-symmetric,
so the horizontal flip of training augmentation keeps the class. The part sits at a random
spot of the body, so a head that localises well puts its box on the part; `pointing_accuracy` measures
that. Each image is generated from its own seed (seed, split, class, index), so the output is byte-identical
for a seed whatever the order or the number of images asked for.
"""

import json
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = [
    'EVAL_KEEP',
    'GLYPHS',
    'make_synthetic_fgvc',
    'read_part_boxes',
    'pointing_accuracy',
    'synthetic_class_names',
]

BODY_COLOUR = (150, 115, 80)
SPLIT_SEEDS = {'train': 0, 'val': 1}
# The central fraction of each side that the heads' eval transform keeps (LFD's and DP-Net's squash to 600x600 and
# centre crop 448; IAGN's 550 -> 448 keeps more): every part lies inside it, so no eval crop cuts the evidence off.
EVAL_KEEP = 448 / 600


def _glyph_masks(u: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
    """Class name -> glyph mask over part coordinates u (right), v (down) in [-1, 1]; all symmetric in u."""
    r = np.hypot(u, v)
    return {
        'hbar': np.abs(v) < 0.3,
        'vbar': np.abs(u) < 0.3,
        'plus': (np.abs(u) < 0.25) | (np.abs(v) < 0.25),
        'cross': (np.abs(u - v) < 0.35) | (np.abs(u + v) < 0.35),
        'ring': (0.45 < r) & (r < 0.85),
        'disc': r < 0.6,
        'triangle_up': (v < 0.7) & (np.abs(u) < (v + 0.9) * 0.5),
        'triangle_down': (v > -0.7) & (np.abs(u) < (0.9 - v) * 0.5),
        'square': (np.maximum(np.abs(u), np.abs(v)) > 0.5) & (np.maximum(np.abs(u), np.abs(v)) < 0.85),
        'diamond': np.abs(u) + np.abs(v) < 0.8,
        'two_hbars': (np.abs(np.abs(v) - 0.5) < 0.2),
        'two_vbars': (np.abs(np.abs(u) - 0.5) < 0.2),
    }


GLYPHS = tuple(_glyph_masks(np.zeros(1), np.zeros(1)))


def synthetic_class_names(num_classes: int) -> list[str]:
    """Folder (= class) names: the glyph of each class, e.g. ['hbar', 'vbar', 'plus', 'cross']."""
    if not 2 <= num_classes <= len(GLYPHS):
        raise ValueError(
            f'num_classes={num_classes}: the synthetic dataset has 2 to {len(GLYPHS)} classes '
            f'(one per glyph: {", ".join(GLYPHS)})'
        )
    return list(GLYPHS[:num_classes])


def _background(rng: np.random.Generator, size: int, shapes: int = 10) -> Image.Image:
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    field = np.asarray(coarse.resize((size, size), Image.BILINEAR), dtype=np.int16)
    field = field + rng.integers(-20, 21, field.shape, dtype=np.int16)  # pixel noise
    image = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(shapes):
        x1, y1 = rng.integers(-size // 4, size, 2)
        w, h = rng.integers(size // 16, size // 3, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(3)
        if shape == 0:
            draw.ellipse((x1, y1, x1 + w, y1 + h), fill=colour)
        elif shape == 1:
            draw.rectangle((x1, y1, x1 + w, y1 + h), fill=colour)
        else:
            draw.line((x1, y1, x1 + w, y1 + h), fill=colour, width=int(rng.integers(1, 4)))
    return image


def _part_tile(side: int, glyph: str) -> np.ndarray:
    """(side, side, 3) uint8: the glyph in dark grey on a light grey tile."""
    v, u = (np.mgrid[0:side, 0:side].astype(np.float32) + 0.5) / side * 2 - 1
    tile = np.where(_glyph_masks(u, v)[glyph], 25, 230).astype(np.uint8)
    return np.repeat(tile[..., None], 3, axis=2)


def _render(rng: np.random.Generator, size: int, glyph: str, part_side: int, clutter: int = 10):
    """One image and its part box [x1, y1, x2, y2] (pixels, x2/y2 exclusive)."""
    image = _background(rng, size, clutter)
    cx, cy = rng.uniform(0.4, 0.6, 2) * size
    ax, ay = rng.uniform(0.22, 0.34, 2) * size
    jitter = rng.integers(-15, 16, 3)
    body = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(BODY_COLOUR, jitter, strict=False))
    ImageDraw.Draw(image).ellipse((cx - ax, cy - ay, cx + ax, cy + ay), fill=body)
    # the part's centre: uniform in the body ellipse shrunk by the part's half side, so the part stays on it
    radius, theta = np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
    half = part_side / 2
    px = cx + radius * max(ax - half, 0) * np.cos(theta)
    py = cy + radius * max(ay - half, 0) * np.sin(theta)
    # Pulled towards the body's centre into what the eval crop keeps (it stays on the body: cx, cy lie inside).
    margin = (1 - EVAL_KEEP) / 2 * size + half
    px, py = (float(np.clip(p, margin, size - margin)) for p in (px, py))
    x1 = int(np.clip(round(px - half), 0, size - part_side))
    y1 = int(np.clip(round(py - half), 0, size - part_side))
    pixels = np.array(image)
    pixels[y1 : y1 + part_side, x1 : x1 + part_side] = _part_tile(part_side, glyph)
    return Image.fromarray(pixels), [x1, y1, x1 + part_side, y1 + part_side]


def make_synthetic_fgvc(
    root: str,
    num_classes: int = 4,
    train_per_class: int = 16,
    val_per_class: int = 8,
    image_size: int = 128,
    seed: int = 0,
    part_size: float = 0.15,
    clutter: int = 10,
    held_out_split: str = 'val',
) -> str:
    """Write root/{train,val}/<class>/*.png (a 'folder' layout) and root/parts.json; return root.

    `clutter`: random shapes drawn on each background (more make the body and its part harder to find);
    `held_out_split`: the held-out folder's name ('test' for a dataset whose val split is carved from train); its
    images are the same whatever its name. parts.json maps each image's path relative to root
    ('train/hbar/0000.png') to its part box [x1, y1, x2, y2] in pixels (x2, y2 exclusive).
    """
    part_side = max(3, round(part_size * image_size))
    if part_side > image_size // 2:
        raise ValueError(
            f'part_size={part_size} makes a part of {part_side} px, more than half of image_size='
            f'{image_size}; the part must be small (e.g. 0.1-0.2)'
        )
    if held_out_split == 'train':
        raise ValueError("held_out_split='train' would mix the held-out images into the training folder")
    names = synthetic_class_names(num_classes)
    parts = {}
    for split, per_class in (('train', train_per_class), (held_out_split, val_per_class)):
        for class_index, name in enumerate(names):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(per_class):
                rng = np.random.default_rng([seed, SPLIT_SEEDS['train' if split == 'train' else 'val'], class_index, i])
                image, box = _render(rng, image_size, name, part_side, clutter)
                relative = f'{split}/{name}/{i:04d}.png'
                image.save(os.path.join(root, relative), compress_level=1)
                parts[relative] = box
    with open(os.path.join(root, 'parts.json'), 'w') as f:
        json.dump(parts, f, indent=0, sort_keys=True)
    return root


def read_part_boxes(root: str) -> dict[str, list[int]]:
    """parts.json of a synthetic dataset, keyed by absolute image path (as in `FgvcDataset.samples`)."""
    with open(os.path.join(root, 'parts.json')) as f:
        return {os.path.join(root, relative): box for relative, box in json.load(f).items()}


ArrayLike = np.ndarray | torch.Tensor | Sequence[Sequence[float]]


def pointing_accuracy(boxes_or_points: ArrayLike, part_boxes: ArrayLike) -> float:
    """Share of images whose predicted box [x1, y1, x2, y2] contains the centre of the part box (borders count),
    or, given (N, 2) points (x, y), whose point falls inside the part box."""
    predicted = np.asarray(
        boxes_or_points.detach().cpu() if torch.is_tensor(boxes_or_points) else boxes_or_points, dtype=np.float64
    )
    parts = np.asarray(part_boxes.detach().cpu() if torch.is_tensor(part_boxes) else part_boxes, dtype=np.float64)
    if predicted.ndim != 2 or predicted.shape[1] not in (2, 4) or parts.shape != (len(predicted), 4):
        raise ValueError(
            f'pointing_accuracy needs (N, 4) boxes or (N, 2) points and (N, 4) part boxes, got '
            f'{predicted.shape} and {parts.shape}'
        )
    if len(predicted) == 0:
        raise ValueError('pointing_accuracy of zero images is undefined')
    if predicted.shape[1] == 4:
        region, point = predicted, (parts[:, :2] + parts[:, 2:]) / 2
    else:
        region, point = parts, predicted
    inside = (
        (region[:, 0] <= point[:, 0])
        & (point[:, 0] <= region[:, 2])
        & (region[:, 1] <= point[:, 1])
        & (point[:, 1] <= region[:, 3])
    )
    return float(inside.mean())
