"""Ground-truth masks -> bool HxW, thresholded at half of their range.

Compression noise and antialiased edges are not lesion. Integer masks: above half of the storage
maximum (127 for 8 bit, 32767 for 16 bit) when any value exceeds it, else every positive value (a
label image: 0/1, 0/1/2/4, a 16-bit 0/255). Float masks: above 0.5 when all values lie in [0, 1]
(probabilities), else above half of their maximum. NIfTI masks (label volumes) > 0.5. Bool masks
as stored. Lossy JPEG masks always above half of the storage maximum (their noise is never a
label), and the first one read in a process warns, naming the file. Any channel above counts.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from pdd.data.readers.dicom import dicom_pixels
from pdd.data.readers.nifti import raw_nifti_slice
from pdd.data.readers.raster import read_pil_raw, read_tiff_raw
from pdd.data.readers.sniff import require_format
from pdd.errors import DataError

__all__ = ["LOSSY_MASK_FORMATS", "read_mask"]


LOSSY_MASK_FORMATS = ("jpeg",)
"""Mask formats whose compression noise makes a threshold at half range necessary (warned once)."""

_WARNED_LOSSY: set[str] = set()


def read_mask(
    path: str | Path, shape: tuple[int, int], slice_index: int | None = None
) -> np.ndarray:
    """Read a ground-truth mask as bool HxW, thresholded at half its range (module docstring).

    ``shape`` is the (height, width) of the image the mask belongs to; masks are never resized
    silently because a size mismatch almost always means the wrong mask was matched.
    """
    path = Path(path)
    fmt = require_format(path)
    if fmt == "dicom":
        raw = dicom_pixels(path)[1]
    elif fmt == "nifti":
        raw = raw_nifti_slice(path, slice_index)
    else:
        raw = read_tiff_raw(path) if fmt == "tiff" else read_pil_raw(path, fmt, None)
    mask = _mask_from_raw(path, fmt, raw)
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    if mask.shape != tuple(shape):
        raise DataError(
            f"{path}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW) "
            f"but its image is {shape[0]}x{shape[1]}"
        )
    return mask


def _mask_from_raw(path: Path, fmt: str, raw: np.ndarray) -> np.ndarray:
    """Anomalous pixels of a stored mask: above half of its range (module docstring's rules)."""
    lossy = fmt in LOSSY_MASK_FORMATS
    if lossy and fmt not in _WARNED_LOSSY:
        _WARNED_LOSSY.add(fmt)
        warnings.warn(
            f"{path}: {fmt.upper()} masks are lossy; mask pixels count as lesion only above half "
            f"of the range, so compression noise is dropped (further {fmt.upper()} masks are "
            "not reported); prefer PNG masks",
            UserWarning,
            stacklevel=3,
        )
    if raw.dtype == np.bool_ or raw.size == 0:
        return raw.astype(np.bool_)
    if fmt == "nifti":
        return raw > 0.5
    high = raw.max()
    if np.issubdtype(raw.dtype, np.integer):
        half = np.iinfo(raw.dtype).max // 2
        return raw > half if lossy or high > half else raw > 0
    if high <= 1.0:
        return raw > 0.5
    return raw > high / 2.0
