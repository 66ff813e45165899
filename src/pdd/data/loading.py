"""A dataset folder -> train / holdout / test lists of :class:`Sample`, whole groups at a time.

The layout modules (:mod:`pdd.data.layouts`) say which images a folder holds; this module applies
the same protocol to all of them:

- No normal training image at all is a DataError. ``has_masks`` is True only when every anomalous
  test image has a mask.
- Every image belongs to a group (:mod:`pdd.data.groups`: a NIfTI volume, a DICOM series and
  patient, a ``group_by`` file-name match, a labels.csv ``group``) that never crosses train /
  holdout / test. Sets without an official split get the seeded group split of
  :mod:`pdd.data.splits` (the normal images of a group with anomalous images go to test with
  them); every set gets a seeded holdout of training groups (BMAD uses its own ``valid/good``
  instead). A crossing group is a DataError, except in the published splits of ZhangLab,
  Uni-Medical and BMAD, which are kept as given with a warning naming the group.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from pdd.data.groups import assign_groups, compile_group_pattern
from pdd.data.layouts import Found, detect_format, get_layout
from pdd.data.sample import Sample
from pdd.data.splits import check_split, read_manifest, seeded_split, write_manifest
from pdd.errors import DataError

__all__ = [
    "DEFAULT_HOLDOUT_FRACTION",
    "DEFAULT_TEST_NORMAL_FRACTION",
    "DatasetSplit",
    "load_dataset",
]

log = logging.getLogger(__name__)

DEFAULT_TEST_NORMAL_FRACTION = 0.25
"""Share of normal images sent to test when a set has no official split (HeadCT: 25 of 100)."""
DEFAULT_HOLDOUT_FRACTION = 0.1
"""Share of training normals held out for thresholds and heatmap statistics."""

_SALT_TEST, _SALT_HOLDOUT = 1, 2


@dataclass
class DatasetSplit:
    """A resolved dataset: which images train, which are held out, which are tested, and what was skipped."""

    train: list[Sample]
    holdout: list[Sample]
    test: list[Sample]
    skipped: list[tuple[str, str]]
    format: str
    root: Path
    has_masks: bool
    class_name: str | None = None

    def write_manifest(self, path: str | Path) -> Path:
        """Write the split as a CSV manifest that ``load_dataset(..., split_file=path)`` reproduces."""
        parts = {"train": self.train, "holdout": self.holdout, "test": self.test}
        return write_manifest(path, parts, self.root)

    def group_counts(self) -> dict[str, int]:
        """How many groups (patients, volumes, series, ...) each set holds, for the run record."""
        return {
            name: len({(s.class_name, s.group_id) for s in part})
            for name, part in (("train", self.train), ("holdout", self.holdout), ("test", self.test))
        }


def load_dataset(
    root: str | Path,
    format: str = "auto",
    *,
    class_name: str | None = None,
    seed: int = 0,
    split_file: str | Path | None = None,
    test_normal_fraction: float = DEFAULT_TEST_NORMAL_FRACTION,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    group_by: str | re.Pattern[str] | None = None,
) -> DatasetSplit:
    """Find a dataset's images and split them into train / holdout / test, whole groups at a time.

    ``group_by`` is a regular expression: an image's group is its first match in the file name (or
    the match's group 1 when the pattern has a group), merged with the volume / DICOM / labels.csv
    groups; a file name that does not match is a DataError. With ``split_file`` the split is read
    from that manifest instead (and must still match files on disk), so a published result can be
    reproduced exactly; the folder is not rescanned then, so ``skipped`` is empty and ``seed`` and
    the fractions are not used; ``class_name`` then selects that class's rows. A group in two sets
    is a DataError naming it (a warning for the published splits of ZhangLab, Uni-Medical and BMAD).
    """
    root = Path(root)
    pattern = compile_group_pattern(group_by)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if format == "auto":
        fmt = detect_format(root)
        log.info("%s: detected dataset layout %r", root, fmt)
    else:
        fmt = format
    layout = get_layout(fmt)
    if split_file is not None:
        parts = read_manifest(split_file, root, group_by=pattern, published=layout.published)
        if class_name is not None:
            parts = _one_class(parts, class_name, split_file)
        if not parts["train"]:
            raise DataError(f"{split_file}: manifest has no training images")
        classes = {s.class_name for part in parts.values() for s in part}
        return DatasetSplit(
            train=parts["train"],
            holdout=parts["holdout"],
            test=parts["test"],
            skipped=[],
            format=fmt,
            root=root,
            has_masks=_all_masked(parts["test"]),
            class_name=next(iter(classes)) if len(classes) == 1 else None,
        )
    train: list[Sample] = []
    holdout: list[Sample] = []
    test: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    for found in layout.parse(root, class_name):
        if not found.train:
            raise DataError(f"{found.where}: no normal training images found for the {fmt} layout")
        class_train, class_holdout, class_test = _split(
            _grouped(found, root, pattern), seed, test_normal_fraction, holdout_fraction
        )
        train += class_train
        holdout += class_holdout
        test += class_test
        skipped += found.skipped
    check_split(train, holdout, test, str(root), published=layout.published)
    return DatasetSplit(
        train=train,
        holdout=holdout,
        test=test,
        skipped=skipped,
        format=fmt,
        root=root,
        has_masks=_all_masked(test),
        class_name=class_name,
    )


def _one_class(
    parts: dict[str, list[Sample]], class_name: str, split_file: str | Path
) -> dict[str, list[Sample]]:
    """The rows of one class of a manifest; a class it does not hold is a DataError, never an
    empty or foreign split."""
    chosen = {name: [s for s in part if s.class_name == class_name] for name, part in parts.items()}
    if not any(chosen.values()):
        classes = sorted({s.class_name or "" for part in parts.values() for s in part} - {""})
        raise DataError(
            f"{split_file}: manifest has no rows of class {class_name!r} "
            f"(classes: {', '.join(classes) or 'none, a single-class set'})"
        )
    return chosen


def _grouped(found: Found, root: Path, pattern: re.Pattern[str] | None) -> Found:
    """``found`` with every sample's group assigned, over all of its lists at once (a patient with
    images in train/good and test/good is one group)."""
    lists = [found.train, found.test or [], found.abnormal, found.holdout or []]
    flat = assign_groups([s for part in lists for s in part], root, pattern)
    grouped: list[list[Sample]] = []
    start = 0
    for part in lists:
        grouped.append(flat[start : start + len(part)])
        start += len(part)
    return dataclasses.replace(
        found,
        train=grouped[0],
        test=None if found.test is None else grouped[1],
        abnormal=grouped[2],
        holdout=None if found.holdout is None else grouped[3],
    )


def _draw(
    where: Path,
    samples: list[Sample],
    fraction: float,
    seed: int,
    salt: int,
    what: str,
    must_take: Collection[tuple[str, str]] = (),
) -> tuple[list[Sample], list[Sample]]:
    """The seeded group draw; refusing, rather than leaking, when a single group holds them all."""
    kept, taken = seeded_split(samples, fraction, seed, salt, must_take)
    if not kept:
        raise DataError(
            f"{where}: no normal training images left: every normal image shares a group "
            "with an anomalous (tested) image"
        )
    if not taken and fraction > 0 and len(samples) >= 2:
        raise DataError(
            f"{where}: cannot hold out {what} normal images: all {len(samples)} belong to group "
            f"{samples[0].group_id!r} (one volume, series, patient or group), which must stay "
            "in one set"
        )
    return kept, taken


def _split(
    found: Found, seed: int, test_fraction: float, holdout_fraction: float
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """One class: the seeded normal test split when there is no official one, then the holdout."""
    train = list(found.train)
    if found.test is None:
        tested = {(s.class_name or "", s.group_id) for s in found.abnormal}
        train, test_normal = _draw(
            found.where, train, test_fraction, seed, _SALT_TEST, "test", tested
        )
        test = test_normal + found.abnormal
    else:
        test = list(found.test)
    if found.holdout is None:
        train, holdout = _draw(
            found.where, train, holdout_fraction, seed, _SALT_HOLDOUT, "holdout"
        )
    else:
        holdout = list(found.holdout)
    return train, holdout, test


def _all_masked(test: Sequence[Sample]) -> bool:
    anomalous = [s for s in test if s.label == 1]
    return bool(anomalous) and all(s.mask_path for s in anomalous)
