"""Seeded splits of normal images and the CSV manifests that make any result reproducible.

Small sets (HeadCT, BrainMRI, folder sets without ``test/good``) have no official split. Ours:
the NORMAL images are shuffled with the seed and a fraction goes to test; every abnormal image goes
to test. A holdout slice of the remaining training normals is kept aside for thresholds and heatmap
statistics. Images are sorted by key before shuffling, so the split depends only on the seed and
the set of files, never on directory listing order.

Manifest CSV columns: ``path,label,kind,split,class_name,mask_path`` with ``split`` in
``train|holdout|test``; paths are relative to the dataset root when inside it (so a manifest
travels with the data), a NIfTI slice is written ``path#slice_index``. Same inputs and seed give a
byte-identical file.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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

MANIFEST_COLUMNS = ("path", "label", "kind", "split", "class_name", "mask_path")
SPLITS = ("train", "holdout", "test")


@dataclass(frozen=True)
class Sample:
    """One image (or one NIfTI axial slice) with its label; label -1 means unknown (prediction)."""

    path: str
    label: int
    kind: str
    mask_path: str | None = None
    slice_index: int | None = None
    class_name: str | None = None

    @property
    def key(self) -> str:
        """How the sample is written in CSV files: ``path`` or ``path#slice_index``."""
        return self.path if self.slice_index is None else f"{self.path}#{self.slice_index}"


def seeded_split(
    samples: Sequence[Sample], fraction: float, seed: int, salt: int
) -> tuple[list[Sample], list[Sample]]:
    """Split samples into (kept, taken) with ``round(fraction * n)`` taken, at least one when
    ``fraction > 0`` and at least one kept when n >= 2. ``salt`` separates the test and holdout draws
    so that they are independent for the same seed."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
    ordered = sorted(samples, key=lambda s: (s.class_name or "", s.key))
    n = len(ordered)
    n_taken = 0
    if fraction > 0 and n >= 2:
        n_taken = min(max(1, math.floor(fraction * n + 0.5)), n - 1)
    order = np.random.default_rng([seed, salt]).permutation(n)
    taken_idx = set(order[:n_taken].tolist())
    kept = [s for i, s in enumerate(ordered) if i not in taken_idx]
    taken = [s for i, s in enumerate(ordered) if i in taken_idx]
    return kept, taken


def check_split(
    train: Sequence[Sample], holdout: Sequence[Sample], test: Sequence[Sample], source: str
) -> None:
    """The protocol's invariant: train/holdout hold normal images only and share no image with test.

    Raised as DataError (not ``assert``) because a hand-edited manifest can break it too.
    """
    for name, part in (("train", train), ("holdout", holdout)):
        for sample in part:
            if sample.label != 0:
                raise DataError(f"{source}: {sample.key} is anomalous but assigned to {name}")
    seen: dict[str, str] = {}
    for name, part in (("train", train), ("holdout", holdout), ("test", test)):
        for sample in part:
            other = seen.get(sample.key)
            if other is not None:
                raise DataError(f"{source}: {sample.key} is listed in both {other} and {name}")
            seen[sample.key] = name


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
                [key, s.label, s.kind, split, s.class_name or "", _relative(s.mask_path, root)]
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


def read_manifest(path: str | Path, root: str | Path) -> dict[str, list[Sample]]:
    """Read a manifest back into ``{"train", "holdout", "test"}`` lists, resolving relative paths
    against ``root``. Every listed file must still exist, so a stale manifest fails loudly."""
    path, root = Path(path), Path(root)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: split manifest not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read split manifest ({exc})") from exc
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(c.strip() for c in rows[0]) != MANIFEST_COLUMNS:
        raise DataError(
            f"{path}: not a split manifest (header must be {','.join(MANIFEST_COLUMNS)})"
        )
    parts: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(MANIFEST_COLUMNS):
            raise DataError(
                f"{path}: line {line_no}: expected {len(MANIFEST_COLUMNS)} columns, got {len(row)}"
            )
        key, label, kind, split, class_name, mask = row
        if split not in parts:
            raise DataError(
                f"{path}: line {line_no}: split must be train, holdout or test, got {split!r}"
            )
        if label not in ("0", "1"):
            raise DataError(f"{path}: line {line_no}: label must be 0 or 1, got {label!r}")
        file_part, slice_index = _split_key(key)
        image = root / file_part
        if not image.is_file():
            raise DataError(f"{path}: line {line_no}: listed file no longer exists: {image}")
        mask_path = str(root / mask) if mask else None
        if mask_path is not None and not Path(mask_path).is_file():
            raise DataError(f"{path}: line {line_no}: listed mask no longer exists: {mask_path}")
        parts[split].append(
            Sample(
                path=str(image),
                label=int(label),
                kind=kind,
                mask_path=mask_path,
                slice_index=slice_index,
                class_name=class_name or None,
            )
        )
    check_split(parts["train"], parts["holdout"], parts["test"], str(path))
    return parts
