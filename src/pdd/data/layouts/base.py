"""What every layout hands to the splitting step (:class:`Found`), and how a layout is registered.

A layout parses the files of one dataset folder into normal training images, test images or
anomalies, and counted skips, per class; :mod:`pdd.data.loading` does the grouping and seeded
splitting, the same for every layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pdd.data.layouts.discovery import Skipped, sub, subclass_dirs
from pdd.data.sample import Sample
from pdd.errors import DataError

__all__ = ["Found", "Layout", "multi_class", "single_class", "sub_folder_classes"]


@dataclass
class Found:
    """What a layout parser found for one class, before splitting.

    ``test is None`` means no official split (normals in ``train`` are split by seed and ``abnormal``
    all go to test); ``holdout is None`` means no official holdout.
    """

    where: Path
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] | None = None
    abnormal: list[Sample] = field(default_factory=list)
    holdout: list[Sample] | None = None
    skipped: Skipped = field(default_factory=list)


@dataclass(frozen=True)
class Layout:
    """One dataset layout: how it is parsed and which classes a folder of it holds."""

    name: str
    parse: Callable[[Path, str | None], list[Found]]
    """``(root, class_name)`` -> one :class:`Found` per class (the named one, or every one)."""
    classes: Callable[[Path], list[str]] = lambda root: []
    """Class names of a multi-class folder; [] for a single-class set."""
    published: bool = False
    """The official split is kept as given (a group crossing sets there is only a warning)."""


def single_class(
    parse_one: Callable[[Path, str | None], Found], fmt: str
) -> Callable[[Path, str | None], list[Found]]:
    """The parser of a layout that holds one class: a class name is a mistake."""

    def parse(root: Path, class_name: str | None) -> list[Found]:
        if class_name is not None:
            raise DataError(f"{root}: {fmt} set has a single class; do not pass a class name")
        return [parse_one(root, None)]

    return parse


def multi_class(
    root: Path,
    class_name: str | None,
    parse_one: Callable[[Path, str | None], Found],
    marker: Sequence[str],
    fmt: str,
) -> list[Found]:
    """A layout stored either at the root (one class) or once per class in sub-folders, each
    recognised by its ``marker`` folder."""
    if sub(root, *marker).is_dir():
        if class_name is not None:
            raise DataError(f"{root}: {fmt} set has a single class; do not pass a class name")
        return [parse_one(root, None)]
    classes = subclass_dirs(root, marker)
    if class_name is not None:
        if class_name not in [c.name for c in classes]:
            raise DataError(
                f"{root}: class {class_name!r} not found (classes: {', '.join(c.name for c in classes) or 'none'})"
            )
        return [parse_one(root / class_name, class_name)]
    if not classes:
        raise DataError(f"{root}: no {'/'.join(marker)} folder found for the {fmt} layout")
    return [parse_one(cls, cls.name) for cls in classes]


def sub_folder_classes(root: Path, marker: Sequence[str]) -> list[str]:
    """Class names of a layout that :func:`multi_class` parses: [] when stored at the root."""
    if sub(root, *marker).is_dir():
        return []
    return [p.name for p in subclass_dirs(root, marker)]
