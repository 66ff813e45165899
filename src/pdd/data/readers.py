"""One image file -> float32 HxWx3 in [0, 1], whatever medical format it is stored in.

An image already in memory (a NumPy array) is read by the same raster rules with
:func:`image_from_array`.

Formats are recognised by content, not by extension (real datasets ship PNG files named ``.jpg``).
Supported: PNG (8/16 bit), JPEG, BMP, TIFF (via tifffile), DICOM (via pydicom) and NIfTI
(``.nii`` / ``.nii.gz`` via nibabel, one axial slice at a time).

Intensity rules, so that every caller sees the same numbers:

- Integer raster images are divided by the maximum of their storage type (255 for 8 bit,
  65535 for 16 bit), so a 12-bit CT stored in a 16-bit PNG stays dark rather than being stretched
  per image. Float TIFFs already in [0, 1] are kept; other float and integer types (signed, 32 bit)
  are min-max scaled per image; float TIFFs with NaN/inf are rejected. TIFF: first page only.
- DICOM: the modality LUT (RescaleSlope / RescaleIntercept) is applied, then the window given by the
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
- NIfTI: the volume is reoriented to the closest canonical (RAS) orientation; slice ``k`` is
  ``volume[:, :, k]`` shown with anterior at the top. Intensities are scaled per *volume* between its
  0.5th and 99.5th percentiles (robust to a few hot voxels) and clipped; non-finite voxels map to 0;
  a constant volume scales to all zeros. The header's sizes are checked (at most ``MAX_VOXELS``
  voxels, a slice within ``MIN_SIDE`` / ``MAX_PIXELS``, at least one slice) before any voxel is
  read or a sample is built from the slice count.
- Grey images are replicated to 3 channels; alpha channels are dropped.
- TIFF compressions that tifffile cannot decode alone (LZW, JPEG, ...) are decoded by
  ``imagecodecs`` (a dependency); without it such a file is a DataError that says so, not
  "corrupt".
- Bounded decoding: with ``target_size`` (the side the model resizes to), an image whose shorter
  side is at least ``2 * DECODE_OVERSAMPLE * target_size`` is reduced by an integer factor (area
  averages; JPEG by DCT scaling while decoding) to a shorter side of at least
  ``DECODE_OVERSAMPLE * target_size``, keeping its aspect. The intensity rules above then apply to
  the reduced stored values. Without ``target_size`` images are read at full size.

Masks (:func:`read_mask`) are thresholded at half of their range, so that compression noise and
antialiased edges are not lesion. Integer masks: above half of the storage maximum (127 for 8 bit,
32767 for 16 bit) when any value exceeds it, else every positive value (a label image: 0/1,
0/1/2/4, a 16-bit 0/255). Float masks: above 0.5 when all values lie in [0, 1] (probabilities),
else above half of their maximum. NIfTI masks (label volumes) > 0.5. Bool masks as stored. Lossy
JPEG masks always above half of the storage maximum (their noise is never a label), and the first
one read in a process warns, naming the file. Any channel above counts.

Every file is judged by ``stat`` before it is opened: a named pipe, socket, device or broken link
is a DataError and is never opened (opening a FIFO blocks for ever).

Every unusable file raises :class:`pdd.errors.DataError` whose message is ``"<path>: <problem>"``.
"""

from __future__ import annotations

import gzip
import math
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pdd.data.files import file_problem
from pdd.errors import DataError

__all__ = [
    "DECODE_OVERSAMPLE",
    "LOSSY_MASK_FORMATS",
    "MAX_PIXELS",
    "MAX_VOXELS",
    "MIN_SIDE",
    "NIFTI_PERCENTILES",
    "image_format",
    "image_from_array",
    "nifti_slice_count",
    "read_image",
    "read_mask",
]

MIN_SIDE = 8
"""Smallest accepted image side in pixels; anything smaller cannot carry anatomy at model scale."""

MAX_PIXELS = 2**26
"""Largest accepted image (67,108,864 pixels, e.g. 8192 x 8192): a guard against decompression bombs."""

MAX_VOXELS = 2**28
"""Largest accepted NIfTI volume (268,435,456 voxels, 1 GiB as float32), checked from the header."""

NIFTI_PERCENTILES = (0.5, 99.5)
"""Per-volume percentiles mapped to 0 and 1 when reading NIfTI slices."""

DECODE_OVERSAMPLE = 4
"""With ``target_size``, images keep a shorter side of at least this many times the model's side:
the model input is then an antialiased resize of a still finer image (see ``read_image``)."""

LOSSY_MASK_FORMATS = ("jpeg",)
"""Mask formats whose compression noise makes a threshold at half range necessary (warned once)."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "gif": "GIF"}
_SNIFF_BYTES = 512


def image_format(path: str | Path) -> str | None:
    """The format of a file judged by its first bytes: png, jpeg, bmp, gif, tiff, dicom, nifti, or None.

    Raises DataError when the file is missing, empty or not a regular file (a named pipe would
    block ``open`` for ever, so it is judged by ``stat`` and never opened).
    """
    path = Path(path)
    _require_regular(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as exc:
        raise DataError(f"{path}: cannot open file ({exc.strerror})") from exc
    if not head:
        raise DataError(f"{path}: file is empty (0 bytes)")
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM") and len(head) >= 26:
        return "bmp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if _is_nifti_header(head):
        return "nifti"
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(path, "rb") as handle:
                inner = handle.read(352)
        except (OSError, EOFError):
            return None
        return "nifti" if _is_nifti_header(inner) else None
    if path.suffix.lower() == ".dcm" and _looks_like_raw_dicom(path):
        return "dicom"
    return None


def _require_regular(path: Path) -> None:
    problem = file_problem(path)
    if problem is not None:
        raise DataError(f"{path}: {problem}")


def _is_nifti_header(head: bytes) -> bool:
    """NIfTI-1 (sizeof_hdr 348, magic n+1/ni1) or NIfTI-2 (540, n+2), either byte order."""
    if len(head) >= 348 and head[344:347] in (b"n+1", b"ni1"):
        return True
    return len(head) >= 8 and head[4:7] == b"n+2"


def _looks_like_raw_dicom(path: Path) -> bool:
    """A ``.dcm`` file without the 128-byte preamble, as some exporters write: let pydicom judge."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except Exception:  # pydicom raises many types on garbage; any of them means "not DICOM"
        return False
    return "Rows" in ds and "Columns" in ds


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
    ``image_size``) bounds the decoded size: see "Bounded decoding" in the module docstring. It
    only saves memory for images far larger than the model sees; None reads the full size.
    """
    path = Path(path)
    if target_size is not None and target_size < 1:
        raise ValueError(f"target_size must be a positive side length, got {target_size}")
    fmt = _require_format(path)
    if window is not None and fmt != "dicom":
        raise DataError(
            f"{path}: a display window only applies to DICOM files, this is {fmt.upper()}"
        )
    if slice_index is not None and fmt != "nifti":
        raise DataError(
            f"{path}: a slice index only applies to NIfTI volumes, this is {fmt.upper()}"
        )
    if fmt == "dicom":
        grey_or_rgb = _read_dicom(path, window, target_size)
    elif fmt == "nifti":
        grey_or_rgb = _scaled_nifti_slice(path, slice_index, target_size)
    elif fmt == "tiff":
        raw = _read_tiff_raw(path)
        grey_or_rgb = _scale_raster(_reduce(raw, _reduction(raw.shape, target_size)))
    else:
        grey_or_rgb = _scale_raster(_read_pil_raw(path, fmt, target_size))
    return _to_rgb(grey_or_rgb)


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
    _check_size(Path(name), int(array.shape[0]), int(array.shape[1]))
    return _to_rgb(_scale_raster(array))


def read_mask(
    path: str | Path, shape: tuple[int, int], slice_index: int | None = None
) -> np.ndarray:
    """Read a ground-truth mask as bool HxW, thresholded at half its range (module docstring).

    ``shape`` is the (height, width) of the image the mask belongs to; masks are never resized
    silently because a size mismatch almost always means the wrong mask was matched.
    """
    path = Path(path)
    fmt = _require_format(path)
    if fmt == "dicom":
        raw = _dicom_dataset_pixels(path)[1]
    elif fmt == "nifti":
        raw = _nifti_raw_slice(path, slice_index)
    else:
        raw = _read_tiff_raw(path) if fmt == "tiff" else _read_pil_raw(path, fmt, None)
    mask = _mask_from_raw(path, fmt, raw)
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    if mask.shape != tuple(shape):
        raise DataError(
            f"{path}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW) "
            f"but its image is {shape[0]}x{shape[1]}"
        )
    return mask


_WARNED_LOSSY: set[str] = set()


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


def _require_format(path: Path) -> str:
    fmt = image_format(path)
    if fmt is None:
        raise DataError(
            f"{path}: not an image file (content is not PNG, JPEG, BMP, GIF, TIFF, DICOM or NIfTI)"
        )
    return fmt


def _check_size(path: Path, height: int, width: int) -> None:
    if height * width > MAX_PIXELS:
        raise DataError(
            f"{path}: image is {width}x{height} = {width * height} pixels; the limit is {MAX_PIXELS} "
            "(decompression-bomb guard)"
        )
    if min(height, width) < MIN_SIDE:
        raise DataError(
            f"{path}: image is {width}x{height} pixels, too small (each side must be at least {MIN_SIDE})"
        )


def _reduction(shape: tuple[int, ...], target_size: int | None) -> int:
    """The integer factor that keeps the shorter side >= ``DECODE_OVERSAMPLE * target_size``."""
    if target_size is None:
        return 1
    return max(1, min(shape[0], shape[1]) // (DECODE_OVERSAMPLE * target_size))


def _reduced_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """(width, height) after reduction; rounded, so the image keeps its exact extent."""
    return max(1, round(width / factor)), max(1, round(height / factor))


def _reduce(arr: np.ndarray, factor: int) -> np.ndarray:
    """Area averages (Pillow's BOX filter) down to ``_reduced_size``, in the array's own storage
    type so the intensity rules do not change (bool: the float fraction, read as grey in [0, 1]);
    per channel for HxWxC."""
    if factor <= 1:
        return arr
    if arr.ndim == 3:
        return np.stack([_reduce(arr[..., c], factor) for c in range(arr.shape[2])], axis=2)
    size = _reduced_size(arr.shape[0], arr.shape[1], factor)
    reduced = np.asarray(
        Image.fromarray(arr.astype(np.float32)).resize(size, Image.Resampling.BOX)
    )
    if arr.dtype == np.bool_:
        return reduced
    if np.issubdtype(arr.dtype, np.integer):
        return np.rint(reduced).astype(arr.dtype)
    return reduced.astype(arr.dtype)


# --- raster formats (PIL, tifffile) ---------------------------------------------------------


def _read_pil_raw(path: Path, fmt: str, target_size: int | None) -> np.ndarray:
    """Decoded pixels as stored: HxW or HxWx3 of uint8/uint16/int32/float32, alpha dropped.

    With ``target_size`` a large image is reduced while decoding (JPEG: DCT scaling in the
    decoder; others: area averages right after decoding, before any float copy is made)."""
    name = fmt.upper()
    try:
        with warnings.catch_warnings():
            # Our own MAX_PIXELS check below is stricter than PIL's warning threshold.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=[_PIL_FORMATS[fmt]]) as img:
                _check_size(path, img.height, img.width)
                factor = _reduction((img.height, img.width), target_size)
                if factor > 1 and fmt == "jpeg":
                    img.draft(None, (-(-img.width // factor), -(-img.height // factor)))
                    factor = _reduction((img.height, img.width), target_size)
                img.load()
                if factor > 1:
                    size = _reduced_size(img.height, img.width, factor)
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


def _read_tiff_raw(path: Path) -> np.ndarray:
    """First page of a TIFF as stored (HxW or HxWxC); extra samples beyond RGB are dropped."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            _check_size(path, int(page.imagelength), int(page.imagewidth))
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


def _scale_raster(arr: np.ndarray) -> np.ndarray:
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
    return _min_max(values)


def _min_max(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.float32)
    return ((values - lo) / (hi - lo)).astype(np.float32)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(np.clip(image, 0.0, 1.0), dtype=np.float32)


# --- DICOM ------------------------------------------------------------------------------------


def _dicom_dataset_pixels(path: Path) -> tuple[object, np.ndarray]:
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
    _check_size(path, rows, cols)
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


def _read_dicom(
    path: Path, window: tuple[float, float] | None, target_size: int | None
) -> np.ndarray:
    ds, pixels = _dicom_dataset_pixels(path)
    photometric = str(ds.get("PhotometricInterpretation", ""))  # type: ignore[attr-defined]
    photometric = photometric.strip().upper()
    samples = int(_dicom_number(path, ds, "SamplesPerPixel", 1, integer=True))
    colour = photometric == "PALETTE COLOR" or samples == 3
    if colour and window is not None:
        raise DataError(
            f"{path}: a display window only applies to greyscale DICOM, this file is "
            f"{photometric or 'colour'}"
        )
    factor = _reduction(pixels.shape, target_size)
    if photometric == "PALETTE COLOR":
        return _scale_raster(_reduce(_dicom_palette(path, ds, pixels), factor))
    pixels = _reduce(pixels, factor)
    if samples == 3:
        if not np.issubdtype(pixels.dtype, np.integer):
            return _min_max(pixels.astype(np.float64))
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
        scaled = _min_max(values)
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


# --- NIfTI ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Volume:
    data: np.ndarray  # canonical (RAS) 3-D array, float32
    lo: float
    hi: float


_VOLUME_CACHE: OrderedDict[tuple[str, int, int], _Volume] = OrderedDict()
_VOLUME_CACHE_SIZE = 2  # a dataset reads a volume's slices in order; two volumes cover the seams


def _load_nifti(path: Path) -> _Volume:
    """Canonical 3-D volume and its robust range, cached because datasets read it slice by slice."""
    import nibabel as nib

    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    cached = _VOLUME_CACHE.get(key)
    if cached is not None:
        _VOLUME_CACHE.move_to_end(key)
        return cached
    img = _open_nifti(path)
    _nifti_sizes(path, img)  # every limit, from the header, before any voxel is read
    if len(img.shape) == 4:
        img = img.slicer[..., 0]
    try:
        if len(img.shape) == 2:
            img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., None], img.affine)
        canonical = nib.as_closest_canonical(img)
        data = np.asarray(canonical.get_fdata(dtype=np.float32))
    except Exception as exc:  # truncated gzip, short data block
        raise DataError(f"{path}: truncated or corrupt NIfTI data") from exc
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        lo = hi = 0.0
    else:
        lo, hi = (float(v) for v in np.percentile(finite, NIFTI_PERCENTILES))
    volume = _Volume(data=data, lo=lo, hi=hi)
    _VOLUME_CACHE[key] = volume
    while len(_VOLUME_CACHE) > _VOLUME_CACHE_SIZE:
        _VOLUME_CACHE.popitem(last=False)
    return volume


def _open_nifti(path: Path):  # -> nibabel image; untyped library object
    import nibabel as nib

    _require_regular(path)
    try:
        return nib.load(path)
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, zlib errors, ...
        raise DataError(f"{path}: truncated or corrupt NIfTI file") from exc


def nifti_slice_count(path: str | Path) -> int:
    """Number of axial slices of a NIfTI volume, read from the header only (no voxel data).

    The header's sizes are checked first (``MAX_VOXELS``, the slice size, at least one slice), so
    a header claiming millions of slices never becomes millions of samples."""
    path = Path(path)
    return _nifti_sizes(path, _open_nifti(path))[2]


def _nifti_sizes(path: Path, img) -> tuple[int, int, int]:  # img: a nibabel image
    """Canonical (x, y, z) sizes from the header, every limit checked; z is the slice count."""
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise DataError(
            f"{path}: NIfTI image has {len(img.shape)} dimensions {tuple(img.shape)}; "
            "only 3-D volumes (or 4-D with one volume) are supported"
        )
    voxels = math.prod(shape)
    if voxels > MAX_VOXELS:
        raise DataError(
            f"{path}: NIfTI volume has {voxels} voxels {shape}; the limit is {MAX_VOXELS} "
            "(decompression-bomb guard)"
        )
    width, height, slices = _canonical_shape(path, img, shape)
    _check_size(path, height, width)  # a displayed slice is rot90 of canonical (x, y)
    if slices < 1:
        raise DataError(f"{path}: NIfTI volume has 0 axial slices {shape}; there is no image in it")
    return width, height, slices


def _canonical_shape(path: Path, img, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(x, y, z) sizes after reorientation to RAS of a stored 3-D ``shape``."""
    import nibabel as nib

    axis_codes = nib.orientations.io_orientation(img.affine)[:, 0]
    if not np.all(np.isfinite(axis_codes)):
        raise DataError(f"{path}: NIfTI affine is degenerate; the axial axis is undefined")
    sizes = [0, 0, 0]
    for stored_axis, code in enumerate(axis_codes[:3]):
        sizes[int(code)] = shape[stored_axis]
    return sizes[0], sizes[1], sizes[2]


def _slice(path: Path, volume: np.ndarray, slice_index: int | None) -> np.ndarray:
    count = volume.shape[2]
    if slice_index is None:
        if count != 1:
            raise DataError(
                f"{path}: NIfTI volume has {count} axial slices; a slice index is needed"
            )
        slice_index = 0
    if not 0 <= slice_index < count:
        raise DataError(
            f"{path}: slice index {slice_index} is outside the volume's {count} axial slices"
        )
    return np.rot90(volume[:, :, slice_index])  # rows run anterior (top) to posterior


def _scaled_nifti_slice(
    path: Path, slice_index: int | None, target_size: int | None
) -> np.ndarray:
    volume = _load_nifti(path)
    plane = _slice(path, volume.data, slice_index).astype(np.float64)
    plane = np.where(np.isfinite(plane), plane, volume.lo)
    plane = _reduce(plane, _reduction(plane.shape, target_size))
    if volume.hi <= volume.lo:
        return np.zeros(plane.shape, np.float32)
    return np.clip((plane - volume.lo) / (volume.hi - volume.lo), 0.0, 1.0).astype(np.float32)


def _nifti_raw_slice(path: Path, slice_index: int | None) -> np.ndarray:
    volume = _load_nifti(path)
    plane = _slice(path, volume.data, slice_index)
    return np.where(np.isfinite(plane), plane, 0.0)
