"""Which format a file is, judged by its first bytes, never by its extension (real datasets ship
PNG files named ``.jpg``).

Every file is judged by ``stat`` before it is opened: a named pipe, socket, device or broken link
is a DataError and is never opened (opening a FIFO blocks for ever).
"""

from __future__ import annotations

import gzip
from pathlib import Path

from pdd.data.files import file_problem
from pdd.errors import DataError

__all__ = ["image_format", "require_format", "require_regular"]


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_SNIFF_BYTES = 512


def image_format(path: str | Path) -> str | None:
    """The format of a file judged by its first bytes: png, jpeg, bmp, gif, tiff, dicom, nifti, or None.

    Raises DataError when the file is missing, empty or not a regular file (a named pipe would
    block ``open`` for ever, so it is judged by ``stat`` and never opened).
    """
    path = Path(path)
    require_regular(path)
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


def require_regular(path: Path) -> None:
    problem = file_problem(path)
    if problem is not None:
        raise DataError(f"{path}: {problem}")


def require_format(path: Path) -> str:
    fmt = image_format(path)
    if fmt is None:
        raise DataError(
            f"{path}: not an image file (content is not PNG, JPEG, BMP, GIF, TIFF, DICOM or NIfTI)"
        )
    return fmt


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
