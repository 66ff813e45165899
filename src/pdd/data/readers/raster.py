"""Raster images: PNG (8/16 bit), JPEG, BMP, GIF (via Pillow) and TIFF (via tifffile), and arrays.

Intensity rules, so that every caller sees the same numbers:

- Integer raster images are divided by the maximum of their storage type (255 for 8 bit,
  65535 for 16 bit), so a 12-bit CT stored in a 16-bit PNG stays dark rather than being stretched
  per image. Float TIFFs already in [0, 1] are kept; other float and integer types (signed, 32 bit)
  are min-max scaled per image; float TIFFs with NaN/inf are rejected. TIFF: first page only.
- Grey images are replicated to 3 channels; alpha channels are dropped.
- TIFF compressions that tifffile cannot decode alone (LZW, JPEG, ...) are decoded by
  ``imagecodecs`` (a dependency); without it such a file is a DataError that says so, not
  "corrupt".

An image already in memory (a NumPy array) is read by the same rules with
:func:`image_from_array`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from pdd.data.readers.limits import MAX_PIXELS, check_size, reduced_size, reduction
from pdd.errors import DataError

__all__ = ["image_from_array", "min_max", "read_pil_raw", "read_tiff_raw", "scale_raster", "to_rgb"]


_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "gif": "GIF"}


def image_from_array(values: np.ndarray, name: str = "array") -> np.ndarray:
    """An image already in memory (HxW or HxWxC, C = 1..4) as float32 HxWx3 in [0, 1].

    The raster rules of a file apply (size limits, storage-type scaling, grey to RGB, alpha
    dropped), so an array and the PNG/TIFF it was saved as read to the same numbers. ``name``
    stands in for a path in error messages. No bounded decoding: the array is used at full size.
    """
    array = np.asarray(values)
    if array.ndim == 3 and array.shape[2] in (1, 2):
        array = array[..., 0]  # grey, or grey + alpha
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]  # alpha dropped
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise DataError(f"{name}: expected HxW or HxWxC (C = 1..4), got shape {np.shape(values)}")
    if not (
        np.issubdtype(array.dtype, np.integer)
        or np.issubdtype(array.dtype, np.floating)
        or array.dtype == np.bool_
    ):
        raise DataError(f"{name}: expected integer or float pixels, got {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise DataError(f"{name}: pixel data contains NaN or infinite values")
    check_size(Path(name), int(array.shape[0]), int(array.shape[1]))
    return to_rgb(scale_raster(array))


def read_pil_raw(path: Path, fmt: str, target_size: int | None) -> np.ndarray:
    """Decoded pixels as stored: HxW or HxWx3 of uint8/uint16/int32/float32, alpha dropped.

    With ``target_size`` a large image is reduced while decoding (JPEG: DCT scaling in the
    decoder; others: area averages right after decoding, before any float copy is made)."""
    name = fmt.upper()
    try:
        with warnings.catch_warnings():
            # Our own MAX_PIXELS check below is stricter than PIL's warning threshold.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=[_PIL_FORMATS[fmt]]) as img:
                check_size(path, img.height, img.width)
                factor = reduction((img.height, img.width), target_size)
                if factor > 1 and fmt == "jpeg":
                    img.draft(None, (-(-img.width // factor), -(-img.height // factor)))
                    factor = reduction((img.height, img.width), target_size)
                img.load()
                if factor > 1:
                    size = reduced_size(img.height, img.width, factor)
                    return _pil_to_array(_reducible(img).resize(size, Image.Resampling.BOX))
                return _pil_to_array(img)
    except Image.DecompressionBombError:
        raise DataError(
            f"{path}: image is larger than {2 * Image.MAX_IMAGE_PIXELS} pixels; the limit is "
            f"{MAX_PIXELS} (decompression-bomb guard)"
        ) from None
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: truncated or corrupt {name} data") from exc


def _reducible(img: Image.Image) -> Image.Image:
    """A mode whose pixels can be averaged: palette indices and 1-bit become colour / grey, 16-bit
    grey becomes 32-bit (exact; ``_pil_to_array`` turns it back into uint16)."""
    if img.mode == "1":
        return img.convert("L")
    if img.mode in ("P", "PA"):
        return img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    if img.mode.startswith("I;16"):
        return img.convert("I")
    return img


def _pil_to_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "1":
        return np.asarray(img.convert("L"))
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
        mode = "RGB"
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16)
    arr = np.asarray(img)
    if mode in ("LA", "La", "PA"):
        return arr[..., 0]
    if mode in ("RGBA", "RGBa", "RGBX"):
        return arr[..., :3]
    if mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        return arr.astype(np.uint16)  # 16-bit PNGs decoded as 32-bit ints by some Pillow paths
    return arr


def read_tiff_raw(path: Path) -> np.ndarray:
    """First page of a TIFF as stored (HxW or HxWxC); extra samples beyond RGB are dropped."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            check_size(path, int(page.imagelength), int(page.imagewidth))
            arr = page.asarray()
    except DataError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error, ...
        if "imagecodecs" in str(exc):  # a compression tifffile only decodes with imagecodecs
            raise DataError(
                f"{path}: TIFF compression {_tiff_compression(path)} needs the imagecodecs "
                "package (pip install imagecodecs); the file itself may be fine"
            ) from exc
        raise DataError(f"{path}: truncated or corrupt TIFF data") from exc
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, 2)  # planar (CxHxW) storage
    if arr.ndim == 3:
        if arr.shape[2] == 1:
            arr = arr[..., 0]
        elif arr.shape[2] == 2:
            arr = arr[..., 0]  # grey + alpha
        else:
            arr = arr[..., :3]
    if arr.ndim != 2 and not (arr.ndim == 3 and arr.shape[2] == 3):
        raise DataError(f"{path}: unsupported TIFF pixel layout {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise DataError(f"{path}: TIFF pixel data contains NaN or infinite values")
    return arr


def _tiff_compression(path: Path) -> str:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tif.pages.first.compression.name
    except Exception:  # only used to word an error message
        return "(unknown)"


def scale_raster(arr: np.ndarray) -> np.ndarray:
    """Storage-type scaling for raster images (see module docstring)."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    values = arr.astype(np.float64)
    if np.issubdtype(arr.dtype, np.floating) and values.min() >= 0.0 and values.max() <= 1.0:
        return values.astype(np.float32)
    return min_max(values)


def min_max(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.float32)
    return ((values - lo) / (hi - lo)).astype(np.float32)


def to_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(np.clip(image, 0.0, 1.0), dtype=np.float32)
