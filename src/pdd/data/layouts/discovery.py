"""Finding a layout's image files: case-insensitive folders, counted skips, NIfTI slices.

Pixel data is never decoded here (that would read the whole set twice); a broken image raises
DataError naming the file when :class:`pdd.data.image_dataset.ImageDataset` loads it. Entries that
are not regular files are judged by ``stat`` (:func:`pdd.data.files.file_problem`), never opened.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from pdd.data.files import (
    file_problem,
    file_stem,
    has_image_extension,
    is_hidden,
    is_nifti_name,
)
from pdd.data.readers import nifti_slice_count
from pdd.data.sample import Sample
from pdd.errors import DataError

__all__ = [
    "Skipped",
    "expand",
    "images_in",
    "mask_index",
    "regular",
    "require_dir",
    "sub",
    "subclass_dirs",
]

Skipped = list[tuple[str, str]]
"""(path, reason) of every file a layout saw and did not use."""


def sub(parent: Path, *names: str) -> Path:
    """``parent/names...`` where each folder name matches in any letter case (an exact match
    wins); the exact spelling, which does not exist, when nothing matches."""
    path = parent
    for name in names:
        exact = path / name
        if not exact.is_dir() and path.is_dir():
            exact = next(
                (p for p in sorted(path.iterdir()) if p.name.lower() == name.lower() and p.is_dir()),
                exact,
            )
        path = exact
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")
    return path


def regular(entry: Path, skipped: Skipped | None) -> bool:
    """Whether ``entry`` is a regular file (judged without opening it); other non-folders are
    counted in ``skipped`` when a list is given."""
    problem = file_problem(entry)
    if problem is not None and skipped is not None and not entry.is_dir():
        skipped.append((str(entry), problem))
    return problem is None


def images_in(folder: Path, skipped: Skipped) -> list[Path]:
    """Image files of a folder, sorted; other files are counted skips, an empty folder too."""
    images: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if is_hidden(entry) or not regular(entry, skipped):
            continue
        if has_image_extension(entry):
            images.append(entry)
        else:
            skipped.append((str(entry), "not an image file (unknown extension)"))
    if not images:
        skipped.append((str(folder), "empty folder: no images"))
    return images


def mask_index(folder: Path, skipped: Skipped | None) -> dict[str, Path]:
    """image stem -> mask file, for masks named <stem>.<ext> or <stem>_mask.<ext>; entries that
    are not regular files are counted in ``skipped`` when a list is given."""
    if not folder.is_dir():
        return {}
    index: dict[str, Path] = {}
    for mask in sorted(folder.iterdir()):
        if not is_hidden(mask) and regular(mask, skipped) and has_image_extension(mask):
            index[file_stem(mask).removesuffix("_mask")] = mask
    return index


def expand(
    paths: Iterable[Path],
    skipped: Skipped,
    *,
    label: int,
    kind: str,
    class_name: str | None,
    masks: dict[str, Path] | None = None,
) -> list[Sample]:
    """Samples for image files: a NIfTI volume becomes one sample per axial slice; one whose
    header cannot be used is a counted skip with the reader's reason."""
    samples: list[Sample] = []
    for path in paths:
        mask = masks.get(file_stem(path)) if masks else None
        mask_path = str(mask) if mask is not None else None
        if is_nifti_name(path):
            try:
                count = nifti_slice_count(path)
            except DataError as exc:
                skipped.append((str(path), str(exc).removeprefix(f"{path}: ")))
                continue
            samples += [
                Sample(str(path), label, kind, mask_path, index, class_name)
                for index in range(count)
            ]
        else:
            samples.append(Sample(str(path), label, kind, mask_path, None, class_name))
    return samples


def subclass_dirs(root: Path, marker: Sequence[str]) -> list[Path]:
    """The sub-folders of ``root`` that hold ``marker`` (one class of a multi-class set each)."""
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.is_dir() and not is_hidden(p) and sub(p, *marker).is_dir()
    )
