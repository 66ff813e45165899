"""The files ``pdd predict`` is given -> samples to score (label -1), and what could not be used."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from pdd.data.files import file_problem, has_image_extension, is_hidden
from pdd.data.readers import image_format, nifti_slice_count
from pdd.data.sample import Sample
from pdd.errors import DataError

__all__ = ["collect_inputs"]


def _input_files(folder: Path, report: Callable[[Path, str], None]) -> list[Path]:
    """Every non-hidden entry below ``folder`` that is not a folder, sorted. Links to folders are
    followed, each real folder once (judged by device and inode), so a link loop ends where it
    closes; a folder that cannot be listed is reported."""
    found: list[Path] = []
    visited: set[tuple[int, int]] = set()

    def unreadable(exc: OSError) -> None:
        report(Path(exc.filename or folder), f"cannot read folder ({exc.strerror or exc})")

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        info = os.stat(dirpath)
        if (info.st_dev, info.st_ino) in visited:
            dirnames.clear()
            continue
        visited.add((info.st_dev, info.st_ino))
        dirnames[:] = sorted(name for name in dirnames if not is_hidden(Path(dirpath, name)))
        found += [Path(dirpath, name) for name in filenames if not is_hidden(Path(dirpath, name))]
    return sorted(found)


def collect_inputs(
    paths: Sequence[str | Path], skipped: list[tuple[str, str]] | None = None
) -> list[Sample]:
    """Samples (label -1, kind ``unknown``) for ``pdd predict``: files, folders searched recursively,
    DICOM and NIfTI (one sample per axial slice).

    Files are recognised by content. A file that looks like an image by name or content but cannot be
    used is reported: appended to ``skipped`` as (path, reason) when a list is given, else raised as
    DataError. So is every entry that is not a regular file (named pipe, socket, device, broken
    link: judged by ``stat``, never opened), a NIfTI volume without slices or with an unusable
    header, and a folder that cannot be listed. Files in folders that are not images at all (no
    image extension, no image content, e.g. a README) are ignored. Links to folders are followed,
    each real folder once. Each file is taken once, under its first spelling (paths are compared
    after resolving links), so a file given twice, or given with its folder, is scored once. A
    path that does not exist is always a DataError.
    """
    samples: list[Sample] = []
    seen: set[str] = set()

    def report(path: Path, reason: str) -> None:
        if skipped is None:
            raise DataError(f"{path}: {reason}")
        skipped.append((str(path), reason))

    for given in paths:
        given = Path(given)
        if given.is_dir():
            candidates = _input_files(given, report)
            explicit = False
        elif os.path.lexists(given):
            candidates = [given]
            explicit = True
        else:
            raise DataError(f"{given}: input not found")
        for path in candidates:
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            try:
                samples += _samples_of(path, explicit)
            except DataError as exc:
                report(path, str(exc).removeprefix(f"{path}: "))
    return samples


def _samples_of(path: Path, explicit: bool) -> list[Sample]:
    """The samples of one file: none for a non-image found in a folder, a DataError for a file
    that claims to be an image (by name, content, or being named explicitly) but cannot be used."""
    problem = file_problem(path)
    if problem is not None:
        raise DataError(f"{path}: {problem}")
    fmt = image_format(path)
    if fmt is None:
        if explicit or has_image_extension(path):
            raise DataError(
                f"{path}: not an image file (content is not PNG, JPEG, BMP, GIF, TIFF, DICOM or NIfTI)"
            )
        return []
    if fmt == "nifti":
        count = nifti_slice_count(path)
        return [Sample(str(path), -1, "unknown", None, i, None) for i in range(count)]
    return [Sample(str(path), -1, "unknown", None, None, None)]
