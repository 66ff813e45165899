"""One image file (or one NIfTI axial slice) -> float32 HxWx3 in [0, 1], whatever its format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pdd.data.readers.dicom import read_dicom
from pdd.data.readers.limits import reduce_by, reduction
from pdd.data.readers.nifti import scaled_nifti_slice
from pdd.data.readers.raster import read_pil_raw, read_tiff_raw, scale_raster, to_rgb
from pdd.data.readers.sniff import require_format
from pdd.errors import DataError

__all__ = ["read_image"]


def read_image(
    path: str | Path,
    slice_index: int | None = None,
    window: tuple[float, float] | None = None,
    target_size: int | None = None,
) -> np.ndarray:
    """Read one image (or one NIfTI axial slice) as float32 HxWx3 in [0, 1].

    ``window`` = (center, width) overrides a greyscale DICOM file's own window; it is an error for
    other formats and colour DICOM because silently ignoring it would give the user different
    numbers than asked. ``target_size`` (the side the image will be resized to, e.g. the model's
    ``image_size``) bounds the decoded size: see :mod:`pdd.data.readers.limits`. It
    only saves memory for images far larger than the model sees; None reads the full size.
    """
    path = Path(path)
    if target_size is not None and target_size < 1:
        raise ValueError(f"target_size must be a positive side length, got {target_size}")
    fmt = require_format(path)
    if window is not None and fmt != "dicom":
        raise DataError(
            f"{path}: a display window only applies to DICOM files, this is {fmt.upper()}"
        )
    if slice_index is not None and fmt != "nifti":
        raise DataError(
            f"{path}: a slice index only applies to NIfTI volumes, this is {fmt.upper()}"
        )
    if fmt == "dicom":
        grey_or_rgb = read_dicom(path, window, target_size)
    elif fmt == "nifti":
        grey_or_rgb = scaled_nifti_slice(path, slice_index, target_size)
    elif fmt == "tiff":
        raw = read_tiff_raw(path)
        grey_or_rgb = scale_raster(reduce_by(raw, reduction(raw.shape, target_size)))
    else:
        grey_or_rgb = scale_raster(read_pil_raw(path, fmt, target_size))
    return to_rgb(grey_or_rgb)
