"""Seeded splits of normal images by group, and the CSV manifests that make any result reproducible.

Small sets (HeadCT, BrainMRI, folder sets without ``test/good``) have no official split. Ours: the
NORMAL images are drawn into test with the seed, whole groups at a time (a group is a volume, a
DICOM series or patient, or a ``group_by`` match: :mod:`pdd.data.groups`), so no patient is ever
both trained on and tested; every abnormal image goes to test. A holdout of the remaining training
groups is kept aside for thresholds and heatmap statistics. Groups are ordered by their first image
key before shuffling, so the split depends only on the seed and the set of files, never on
directory listing order; when every image is its own group the draw is the per-image one of
earlier versions.

Manifest CSV columns: ``path,label,kind,split,class_name,mask_path,group`` with ``split`` in
``train|holdout|test``; paths are relative to the dataset root (so a manifest travels with the
data), a NIfTI slice is written ``path#slice_index``. Manifests without the ``group`` column (older
versions) still read; their groups come from the files alone. Same inputs and seed give a
byte-identical file.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import warnings
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import numpy as np

from pdd.csv_cells import escape_row, unescape_row
from pdd.data.files import file_problem, read_text_file
from pdd.data.groups import assign_groups, compile_group_pattern
from pdd.data.sample import Sample
from pdd.errors import DataError

__all__ = [
    "MANIFEST_COLUMNS",
    "SPLITS",
    "Sample",
    "check_split",
    "manifest_text",
    "read_manifest",
    "seeded_split",
    "write_manifest",
]

MANIFEST_COLUMNS = ("path", "label", "kind", "split", "class_name", "mask_path", "group")
_LEGACY_COLUMNS = MANIFEST_COLUMNS[:-1]
SPLITS = ("train", "holdout", "test")


def _order(sample: Sample) -> tuple[str, str]:
    return (sample.class_name or "", sample.key)


def seeded_split(
    samples: Sequence[Sample],
    fraction: float,
    seed: int,
    salt: int,
    must_take: Collection[tuple[str, str]] = (),
) -> tuple[list[Sample], list[Sample]]:
    """Split samples into (kept, taken) by whole groups, taking as close to ``round(fraction * n)``
    images as the groups allow: at least one group when ``fraction > 0`` and there are two or more,
    never every group. ``salt`` separates the test and holdout draws so that they are independent
    for the same seed. With a single group nothing is taken (the caller decides whether that is
    an error). Groups in ``must_take`` (``(class_name or "", group_id)``; e.g. the normal images of a
    patient whose anomalous images are tested) are taken first and count towards the target.

    Groups are visited in a seeded random order and each is taken when that brings the image count
    closer to the target; with one image per group this takes exactly the first ``round(fraction *
    n)`` groups of the order."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
    members: dict[tuple[str, str], list[Sample]] = {}
    for sample in sorted(samples, key=_order):
        members.setdefault((sample.class_name or "", sample.group_id), []).append(sample)
    groups = list(members.values())
    n = len(samples)
    target = 0
    if fraction > 0 and n >= 2:
        target = min(max(1, math.floor(fraction * n + 0.5)), n - 1)
    chosen = {i for i, key in enumerate(members) if key in must_take}
    if target and len(groups) >= 2:
        order = np.random.default_rng([seed, salt]).permutation(len(groups)).tolist()
        count = sum(len(groups[i]) for i in chosen)
        for index in order:
            size = len(groups[index])
            closer = abs(count + size - target) < abs(count - target)
            if index not in chosen and len(chosen) + 1 < len(groups) and closer:
                chosen.add(index)
                count += size
        if not chosen:  # every group alone overshoots: take the one closest to the target
            chosen = {min(order, key=lambda i: abs(len(groups[i]) - target))}
    kept = [s for i, group in enumerate(groups) if i not in chosen for s in group]
    drawn = [s for i, group in enumerate(groups) if i in chosen for s in group]
    return sorted(kept, key=_order), sorted(drawn, key=_order)


def _listing(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def check_split(
    train: Sequence[Sample],
    holdout: Sequence[Sample],
    test: Sequence[Sample],
    source: str,
    *,
    published: bool = False,
) -> None:
    """The protocol's invariants: train/holdout hold normal images only, no image is in two sets
    (compared as real files, however a path is spelled) and no group crosses sets.

    Raised as DataError (not ``assert``) because a hand-edited manifest can break them too. A
    ``published`` split (ZhangLab, Uni-Medical, BMAD) is kept as given: a crossing group there is
    a warning naming it, so that results stay comparable with the literature."""
    for name, part in (("train", train), ("holdout", holdout)):
        for sample in part:
            if sample.label != 0:
                raise DataError(f"{source}: {sample.key} is anomalous but assigned to {name}")
    real: dict[str, str] = {}
    seen: dict[tuple[str, int | None], str] = {}
    where: dict[tuple[str, str], list[str]] = {}
    for name, part in (("train", train), ("holdout", holdout), ("test", test)):
        for sample in part:
            if sample.path not in real:
                real[sample.path] = os.path.realpath(sample.path)
            identity = (real[sample.path], sample.slice_index)
            other = seen.get(identity)
            if other is not None:
                raise DataError(f"{source}: {sample.key} is listed in both {other} and {name}")
            seen[identity] = name
            sets = where.setdefault((sample.class_name or "", sample.group_id), [])
            if name not in sets:
                sets.append(name)
    crossing = [(cls, group, sets) for (cls, group), sets in where.items() if len(sets) > 1]
    if not crossing:
        return
    described = [
        f"group {group!r}{f' of class {cls!r}' if cls else ''} is in {_listing(sets)}"
        for cls, group, sets in crossing
    ]
    if not published:
        raise DataError(
            f"{source}: {described[0]}; all images of one volume, series, patient or group "
            "must be in one set"
        )
    more = f" (and {len(described) - 3} more)" if len(described) > 3 else ""
    warnings.warn(
        f"{source}: published split kept as given, but {'; '.join(described[:3])}{more}",
        stacklevel=2,
    )


def _relative(path: str | None, root: Path) -> str:
    if path is None:
        return ""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def manifest_text(parts: dict[str, Iterable[Sample]], root: str | Path) -> str:
    """The manifest CSV for ``{"train": [...], "holdout": [...], "test": [...]}``."""
    root = Path(root)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for split in SPLITS:
        for s in parts.get(split, ()):
            path = _relative(s.path, root)
            key = path if s.slice_index is None else f"{path}#{s.slice_index}"
            writer.writerow(
                escape_row([
                    key,
                    s.label,
                    s.kind,
                    split,
                    s.class_name or "",
                    _relative(s.mask_path, root),
                    s.group or "",
                ])
            )
    return buffer.getvalue()


def write_manifest(path: str | Path, parts: dict[str, Iterable[Sample]], root: str | Path) -> Path:
    """Write the manifest atomically (a crash never leaves half a split behind)."""
    from pdd.fileio import atomic_write_text

    path = Path(path)
    atomic_write_text(path, manifest_text(parts, root))
    return path


def _split_key(text: str) -> tuple[str, int | None]:
    head, sep, tail = text.rpartition("#")
    if sep and tail.isdigit():
        return head, int(tail)
    return text, None


def _inside(root: Path, listed: str) -> Path | None:
    """``root / listed`` with ``.`` and ``..`` resolved, or None when that leaves the root; so two
    spellings of one file compare equal and a row cannot reach into another dataset."""
    absolute = Path(os.path.abspath(root / listed))
    try:
        relative = absolute.relative_to(os.path.abspath(root))
    except ValueError:
        return None
    return root / relative if relative.parts else None


def _listed_file(where: str, root: Path, listed: str, what: str) -> str:
    """The normalised path of a file a manifest row names, which must be a regular file inside
    ``root``; anything else is a DataError naming the row."""
    path = _inside(root, listed)
    if path is None:
        raise DataError(f"{where}: {what} {listed!r} is outside the dataset folder {root}")
    problem = file_problem(path)
    if problem == "file not found":
        raise DataError(
            f"{where}: listed {what} does not exist: {path} "
            "(a stale manifest, or one written for another dataset?)"
        )
    if problem is not None:
        raise DataError(f"{where}: listed {what} {path}: {problem}")
    return str(path)


def read_manifest(
    path: str | Path,
    root: str | Path,
    *,
    group_by: str | re.Pattern[str] | None = None,
    published: bool = False,
) -> dict[str, list[Sample]]:
    """Read a manifest back into ``{"train", "holdout", "test"}`` lists, resolving relative paths
    against ``root``. Every listed file must be a regular file inside ``root``, so a stale manifest
    or one from another dataset fails loudly. Groups are rebuilt from the files (and ``group_by``)
    merged with the manifest's ``group`` column, then checked with :func:`check_split`
    (``published``: a crossing group is only a warning)."""
    path, root = Path(path), Path(root)
    pattern = compile_group_pattern(group_by)
    text = read_text_file(path, "split manifest")
    rows = [unescape_row(row) for row in csv.reader(io.StringIO(text))]  # pdd.csv_cells
    header = tuple(c.strip() for c in rows[0]) if rows else ()
    if header not in (MANIFEST_COLUMNS, _LEGACY_COLUMNS):
        raise DataError(
            f"{path}: not a split manifest (header must be {','.join(MANIFEST_COLUMNS)})"
        )
    parts: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        where = f"{path}: line {line_no}"
        if len(row) != len(header):
            raise DataError(f"{where}: expected {len(header)} columns, got {len(row)}")
        key, label, kind, split, class_name, mask = row[:6]
        group = row[6] if len(row) > 6 else ""
        if split not in parts:
            raise DataError(f"{where}: split must be train, holdout or test, got {split!r}")
        if label not in ("0", "1"):
            raise DataError(f"{where}: label must be 0 or 1, got {label!r}")
        if mask and label == "0":
            raise DataError(
                f"{where}: {key} is normal (label 0) but has a mask {mask!r}; "
                "only anomalous images may have one"
            )
        file_part, slice_index = _split_key(key)
        parts[split].append(
            Sample(
                path=_listed_file(where, root, file_part, "file"),
                label=int(label),
                kind=kind,
                mask_path=_listed_file(where, root, mask, "mask") if mask else None,
                slice_index=slice_index,
                class_name=class_name or None,
                group=group or None,
            )
        )
    flat = assign_groups([s for split in SPLITS for s in parts[split]], root, pattern)
    grouped: dict[str, list[Sample]] = {}
    for split in SPLITS:
        grouped[split], flat = flat[: len(parts[split])], flat[len(parts[split]) :]
    check_split(
        grouped["train"], grouped["holdout"], grouped["test"], str(path), published=published
    )
    return grouped
