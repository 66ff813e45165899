"""File-system checks that never open a file, and what a file's name says about it.

Opening a FIFO blocks for ever and a socket or device is never image data, so every path a dataset
layout or manifest names is judged with ``stat`` first (which follows symbolic links but does not
open anything); only regular files are ever read. Names decide only which files a dataset layout
looks at (hidden files are ignored, images are found by extension); the readers judge content.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pdd.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "file_problem",
    "file_stem",
    "has_image_extension",
    "is_hidden",
    "is_nifti_name",
    "read_text_file",
]

IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".dcm",
    ".nii",
    ".nii.gz",
)
"""Extensions by which dataset layouts find image files (any letter case)."""

_SYSTEM_FILES = ("Thumbs.db", "desktop.ini", "__MACOSX")


def is_hidden(path: Path) -> bool:
    """Dot files and the clutter operating systems leave in folders: never data."""
    return path.name.startswith(".") or path.name in _SYSTEM_FILES


def has_image_extension(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_EXTENSIONS)


def is_nifti_name(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def file_stem(path: Path) -> str:
    """The name without its extension; both parts of ``.nii.gz`` are removed."""
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a regular file, or None when it can."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "broken symbolic link" if os.path.islink(path) else "file not found"
    except OSError as exc:
        return f"cannot inspect file ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "not a regular file (named pipe)"
    if stat.S_ISSOCK(mode):
        return "not a regular file (socket)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "not a regular file (device)"
    return "not a regular file"


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of a small metadata file (a leading byte-order mark is dropped); a missing,
    non-regular or undecodable file is a DataError naming it."""
    problem = file_problem(path)
    if problem == "file not found":
        raise DataError(f"{path}: {what} not found")
    if problem is not None:
        raise DataError(f"{path}: cannot read {what}: {problem}")
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read {what} ({exc})") from exc
