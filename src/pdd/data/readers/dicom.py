"""DICOM files (via pydicom), one frame each.

The modality LUT (RescaleSlope / RescaleIntercept) is applied, then the window given by the
caller, else the file's first WindowCenter / WindowWidth, else the image's own min-max.
MONOCHROME1 is inverted so that bright always means dense. A constant image scales to all zeros
(a defined output, not an error: blank frames exist in real series). NaN/inf after rescaling,
missing pixel data and multi-frame files are DataErrors. Numeric attributes are checked per tag,
because pydicom keeps an unparsable value as text (or a list) instead of failing: RescaleSlope,
RescaleIntercept, NumberOfFrames, Rows, Columns, SamplesPerPixel and BitsStored must hold exactly
one finite number; WindowCenter / WindowWidth may hold several (DICOM's alternative windows) and
the first is used, but it must be a finite number. Anything else is a DataError naming the tag.

Colour: PALETTE COLOR pixels are indices, mapped through the file's palette
(``pydicom.pixels.apply_color_lut``) and scaled by the palette's storage type; RGB pixels are
divided by ``2**BitsStored - 1``. A display window is refused on colour files (a DataError rather
than silently ignoring what the caller asked for).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pdd.data.readers.limits import check_size, reduce_by, reduction
from pdd.data.readers.raster import min_max, scale_raster
from pdd.errors import DataError

__all__ = ["dicom_pixels", "read_dicom"]


def dicom_pixels(path: Path) -> tuple[object, np.ndarray]:
    """The pydicom dataset and its stored pixel array (single frame)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as exc:
        raise DataError(f"{path}: truncated or corrupt DICOM file") from exc
    pixel_tags = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    if not any(tag in ds for tag in pixel_tags):
        raise DataError(f"{path}: DICOM file has no pixel data")
    rows = int(_dicom_number(path, ds, "Rows", 0, integer=True))
    cols = int(_dicom_number(path, ds, "Columns", 0, integer=True))
    check_size(path, rows, cols)
    _ensure_transfer_syntax(ds)
    frames = int(_dicom_number(path, ds, "NumberOfFrames", 1, integer=True))
    if frames > 1:
        raise DataError(
            f"{path}: multi-frame DICOM ({frames} frames) is not supported; export one file per frame"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's value warnings; we raise on what we use
            pixels = np.asarray(ds.pixel_array)
    except Exception as exc:  # missing decoder plugin, truncated data, bad attributes
        raise DataError(f"{path}: cannot decode DICOM pixel data ({exc})") from exc
    return ds, pixels


def _ensure_transfer_syntax(ds: object) -> None:
    """Files written without the DICOM file header (no preamble, no meta) carry no transfer syntax;
    the encoding pydicom detected while reading is the right one to decode their pixels with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import (
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding  # type: ignore[attr-defined]
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()  # type: ignore[attr-defined]
    if implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def read_dicom(
    path: Path, window: tuple[float, float] | None, target_size: int | None
) -> np.ndarray:
    ds, pixels = dicom_pixels(path)
    photometric = str(ds.get("PhotometricInterpretation", ""))  # type: ignore[attr-defined]
    photometric = photometric.strip().upper()
    samples = int(_dicom_number(path, ds, "SamplesPerPixel", 1, integer=True))
    colour = photometric == "PALETTE COLOR" or samples == 3
    if colour and window is not None:
        raise DataError(
            f"{path}: a display window only applies to greyscale DICOM, this file is "
            f"{photometric or 'colour'}"
        )
    factor = reduction(pixels.shape, target_size)
    if photometric == "PALETTE COLOR":
        return scale_raster(reduce_by(_dicom_palette(path, ds, pixels), factor))
    pixels = reduce_by(pixels, factor)
    if samples == 3:
        if not np.issubdtype(pixels.dtype, np.integer):
            return min_max(pixels.astype(np.float64))
        bits = int(_dicom_number(path, ds, "BitsStored", 8, integer=True))
        return (pixels.astype(np.float32) / float(2**bits - 1)).clip(0.0, 1.0)
    values = pixels.astype(np.float64)
    values = values * _dicom_number(path, ds, "RescaleSlope", 1.0) + _dicom_number(
        path, ds, "RescaleIntercept", 0.0
    )
    if not np.all(np.isfinite(values)):
        raise DataError(f"{path}: DICOM pixel data contains NaN or infinite values")
    chosen = window if window is not None else _dicom_window(path, ds)
    if chosen is not None:
        center, width = float(chosen[0]), float(chosen[1])
        if not (np.isfinite(center) and np.isfinite(width) and width > 0):
            raise DataError(f"{path}: invalid DICOM window center {center} / width {width}")
        lo = center - width / 2.0
        scaled = np.clip((values - lo) / width, 0.0, 1.0).astype(np.float32)
    else:
        scaled = min_max(values)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return scaled


def _dicom_palette(path: Path, ds: object, indices: np.ndarray) -> np.ndarray:
    """PALETTE COLOR indices -> RGB through the file's own lookup table (uint8 or uint16)."""
    from pydicom.pixels import apply_color_lut

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rgb = np.asarray(apply_color_lut(indices, ds))
    except Exception as exc:  # missing or inconsistent LUT descriptor / data
        raise DataError(f"{path}: PALETTE COLOR DICOM without a usable palette ({exc})") from exc
    return rgb[..., :3]


def _dicom_number(
    path: Path, ds: object, keyword: str, default: float, *, integer: bool = False,
    first_of_many: bool = False,
) -> float:
    """A numeric attribute; ``default`` only when it is absent or empty (never to paper over a
    bad value). pydicom keeps a value it cannot parse as text and several values as a list, so
    those are checked here: a non-number, a non-finite number, or several values where DICOM
    allows one (unless ``first_of_many``) is a DataError naming the file and the tag."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about invalid values; we raise below
            value = ds.get(keyword)  # type: ignore[attr-defined]
    except Exception as exc:  # strict-mode conversion errors on a raw element
        raise DataError(f"{path}: DICOM {keyword} cannot be read ({exc})") from exc
    if value is None or value == "":
        return default
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):  # MultiValue
        values = list(value)
        if not values:
            return default
        if len(values) > 1 and not first_of_many:
            shown = "\\".join(str(v) for v in values)
            raise DataError(
                f"{path}: DICOM {keyword} has {len(values)} values ({shown}); it must have one"
            )
        value = values[0]
    try:
        number = int(value) if integer else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{path}: DICOM {keyword} is {str(value)!r}, not a number") from None
    if not math.isfinite(number):
        raise DataError(f"{path}: DICOM {keyword} is {str(value)!r}, not a finite number")
    return number


def _dicom_window(path: Path, ds: object) -> tuple[float, float] | None:
    """The file's first window (DICOM lists alternatives; the first is the default), or None."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:  # type: ignore[operator]
        return None
    center = _dicom_number(path, ds, "WindowCenter", math.nan, first_of_many=True)
    width = _dicom_number(path, ds, "WindowWidth", math.nan, first_of_many=True)
    if math.isnan(center) or math.isnan(width):  # present but empty
        return None
    return center, width
