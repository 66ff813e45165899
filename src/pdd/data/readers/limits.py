"""How large an image may be, and how large it is decoded (bounded decoding).

Sizes are checked before any pixel is decoded: ``MIN_SIDE`` / ``MAX_PIXELS`` per image or slice,
``MAX_VOXELS`` per NIfTI volume (from its header).

Bounded decoding: with ``target_size`` (the side the model resizes to), an image whose shorter
side is at least ``2 * DECODE_OVERSAMPLE * target_size`` is reduced by an integer factor (area
averages; JPEG by DCT scaling while decoding) to a shorter side of at least
``DECODE_OVERSAMPLE * target_size``, keeping its aspect. The intensity rules then apply to the
reduced stored values. Without ``target_size`` images are read at full size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pdd.errors import DataError

__all__ = [
    "DECODE_OVERSAMPLE",
    "MAX_PIXELS",
    "MAX_VOXELS",
    "MIN_SIDE",
    "check_size",
    "reduce_by",
    "reduced_size",
    "reduction",
]


MIN_SIDE = 8
"""Smallest accepted image side in pixels; anything smaller cannot carry anatomy at model scale."""

MAX_PIXELS = 2**26
"""Largest accepted image (67,108,864 pixels, e.g. 8192 x 8192): a guard against decompression bombs."""

MAX_VOXELS = 2**28
"""Largest accepted NIfTI volume (268,435,456 voxels, 1 GiB as float32), checked from the header."""

DECODE_OVERSAMPLE = 4
"""With ``target_size``, images keep a shorter side of at least this many times the model's side:
the model input is then an antialiased resize of a still finer image (see ``read_image``)."""


def check_size(path: Path, height: int, width: int) -> None:
    if height * width > MAX_PIXELS:
        raise DataError(
            f"{path}: image is {width}x{height} = {width * height} pixels; the limit is {MAX_PIXELS} "
            "(decompression-bomb guard)"
        )
    if min(height, width) < MIN_SIDE:
        raise DataError(
            f"{path}: image is {width}x{height} pixels, too small (each side must be at least {MIN_SIDE})"
        )


def reduction(shape: tuple[int, ...], target_size: int | None) -> int:
    """The integer factor that keeps the shorter side >= ``DECODE_OVERSAMPLE * target_size``."""
    if target_size is None:
        return 1
    return max(1, min(shape[0], shape[1]) // (DECODE_OVERSAMPLE * target_size))


def reduced_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """(width, height) after reduction; rounded, so the image keeps its exact extent."""
    return max(1, round(width / factor)), max(1, round(height / factor))


def reduce_by(arr: np.ndarray, factor: int) -> np.ndarray:
    """Area averages (Pillow's BOX filter) down to ``reduced_size``, in the array's own storage
    type so the intensity rules do not change (bool: the float fraction, read as grey in [0, 1]);
    per channel for HxWxC."""
    if factor <= 1:
        return arr
    if arr.ndim == 3:
        return np.stack([reduce_by(arr[..., c], factor) for c in range(arr.shape[2])], axis=2)
    size = reduced_size(arr.shape[0], arr.shape[1], factor)
    reduced = np.asarray(
        Image.fromarray(arr.astype(np.float32)).resize(size, Image.Resampling.BOX)
    )
    if arr.dtype == np.bool_:
        return reduced
    if np.issubdtype(arr.dtype, np.integer):
        return np.rint(reduced).astype(arr.dtype)
    return reduced.astype(arr.dtype)
