"""Robust image decoding: every image that can be converted becomes RGB, every other one is refused by name.

Scraped FGVC data holds grayscale, CMYK, palette, transparent, 16-bit and EXIF-rotated files, and the occasional
corrupt, truncated, empty or non-image file. `load_image` turns the first group into plain RGB and raises
`UnreadableImageError` (naming the file and the cause) for the second, so that a dataset can skip and count it.
"""

import io
import os
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from ..layers.cam import min_max_scale

__all__ = ['DatasetError', 'UnreadableImageError', 'UnreadableDataError', 'load_image', 'check_image']

# Modes whose transparency is composited on white (see `_to_rgb`).
_ALPHA_MODES = ('RGBA', 'RGBa', 'LA', 'La', 'PA')
# Integer / float single-channel modes that `Image.convert('RGB')` would clip to 255 instead of rescaling.
_WIDE_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F')


class DatasetError(ValueError):
    """A dataset's files or metadata are wrong; the message names the file and the fix."""


class MissingSplitError(DatasetError):
    """The dataset has no such split (CUB has no val split, for one); the message names the splits it has."""


class UnreadableDataError(DatasetError):
    """More of a split is unreadable than the dataset's `max_unreadable_fraction` allows."""


class UnreadableImageError(OSError):
    """One image file cannot be decoded (corrupt, truncated, empty, not an image, or decompression-bomb sized)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f'unreadable image {path!r}: {reason}')
        self.path = path
        self.reason = reason


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB.

    Transparent pixels are composited on white rather than dropping alpha: the colour stored under a fully
    transparent pixel is arbitrary (often black) and would paint a fake background the viewer never saw.
    16-bit and 32-bit integer images are rescaled from the 16-bit range to 8 bits (PIL's own convert clips
    them, which turns most of a 16-bit image white); float images are stretched from their min to max.
    """
    if img.mode == 'RGB':
        return img
    if img.mode == 'P' and 'transparency' in img.info:
        img = img.convert('RGBA')
    if img.mode in _ALPHA_MODES:
        rgba = img.convert('RGBA')
        white = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert('RGB')
    if img.mode in _WIDE_MODES:
        values = np.asarray(img, dtype=np.float64)
        if img.mode == 'F':
            values = min_max_scale(torch.from_numpy(values)).numpy() * 255.0
        else:
            values = values / 257.0  # 65535 -> 255
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode='L').convert('RGB')
    return img.convert('RGB')  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _open_checked(source: str | BinaryIO, path: str) -> Image.Image:
    """Open `source` (a file path, or the bytes of the image named `path`) and refuse decompression bombs."""
    try:  # one stat, inside the try: a file removed after it was listed (or after an isfile) is an error, not a crash
        empty = source.getbuffer().nbytes == 0 if isinstance(source, io.BytesIO) else os.stat(source).st_size == 0
        img = None if empty else Image.open(source)
    except FileNotFoundError:
        raise UnreadableImageError(path, 'file not found') from None
    except Image.DecompressionBombError as e:
        raise UnreadableImageError(path, f'decompression-bomb sized ({e})') from None
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, SyntaxError, struct.error, ...)
        raise UnreadableImageError(path, f'{type(e).__name__}: {e}') from None
    if img is None:
        raise UnreadableImageError(path, 'zero-byte file')
    # PIL only warns between MAX_IMAGE_PIXELS and twice that; we refuse both (a bomb stalls every epoch).
    pixels = img.width * img.height
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        img.close()
        raise UnreadableImageError(
            path,
            f'decompression-bomb sized ({pixels} pixels > PIL.Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS});'
            ' raise PIL.Image.MAX_IMAGE_PIXELS if the image is genuine',
        )
    return img


def load_image(path: str, source: BinaryIO | None = None) -> Image.Image:
    """Decode `path` (or `source`, the image's bytes, named `path` in messages) fully into an upright 8-bit RGB
    image, or raise `UnreadableImageError` naming it.

    A full decode (`load()`) is what catches truncation: `Image.verify()` only checks headers and CRCs of some
    formats and passes a JPEG cut in half. Truncated files are refused unless the user has set
    `PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True` themselves.
    """
    img = _open_checked(path if source is None else source, path)
    try:
        with img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except Exception as e:
        raise UnreadableImageError(path, f'{type(e).__name__}: {e}') from None


def check_image(path: str, source: BinaryIO | None = None) -> str | None:
    """Return None if `path` decodes, else the reason it does not. Cheaper than `load_image`.

    JPEGs are decoded at 1/8 scale (`Image.draft`): the decoder still reads every byte of the stream, so a
    truncated or corrupt file still fails, at a fraction of the time of a full decode.
    """
    try:
        img = _open_checked(path if source is None else source, path)
    except UnreadableImageError as e:
        return e.reason
    try:
        with img:
            if img.format == 'JPEG':
                img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
            _to_rgb(ImageOps.exif_transpose(img))
    except Exception as e:
        return f'{type(e).__name__}: {e}'
    return None
