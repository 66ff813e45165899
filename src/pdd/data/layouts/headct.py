"""The ``headct`` layout (Kaggle Head CT - hemorrhage): labels.csv + head_ct/NNN.png.

labels.csv has the header ``id, hemorrhage`` (the space is in the published file) and optionally a
``group`` column (e.g. a patient id: images of one group never cross sets); image id N is
head_ct/NNN.png. Every id needs its image and every image its id: a mismatch means a broken copy.
There is no official split.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pdd.data.files import read_text_file
from pdd.data.layouts.base import Found, Layout, single_class
from pdd.data.layouts.discovery import images_in, require_dir
from pdd.data.sample import Sample
from pdd.errors import DataError

__all__ = ["LAYOUT", "parse_headct"]


def _image_root(root: Path) -> Path:
    """The Kaggle archive nests head_ct/head_ct; accept both."""
    nested = root / "head_ct" / "head_ct"
    return nested if nested.is_dir() else root / "head_ct"


def parse_headct(root: Path, class_name: str | None) -> Found:
    """Normal images (hemorrhage 0) train, hemorrhages (1) are anomalies; ids checked both ways."""
    labels_path = root / "labels.csv"
    image_dir = require_dir(_image_root(root), "head_ct image")
    rows = list(csv.reader(read_text_file(labels_path, "labels file").splitlines()))
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if header not in (["id", "hemorrhage"], ["id", "hemorrhage", "group"]):
        raise DataError(
            f"{labels_path}: header must be 'id, hemorrhage' or 'id, hemorrhage, group'"
        )
    expected = "'<id>, <0|1>'" if len(header) == 2 else "'<id>, <0|1>, <group>'"
    found = Found(root)
    images = {p.name: p for p in images_in(image_dir, found.skipped)}
    seen: set[str] = set()
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        cells = [c.strip() for c in row]
        if len(cells) != len(header) or not cells[0].isdigit() or cells[1] not in ("0", "1"):
            raise DataError(
                f"{labels_path}: line {line_no}: expected {expected}, got {','.join(row)!r}"
            )
        group = cells[2] if len(cells) > 2 and cells[2] else None
        name = f"{int(cells[0]):03d}.png"
        if name in seen:
            raise DataError(f"{labels_path}: line {line_no}: id {cells[0]} is listed twice")
        seen.add(name)
        image = images.get(name)
        if image is None:
            raise DataError(f"{labels_path}: id {cells[0]} has no image file {image_dir / name}")
        if cells[1] == "1":
            found.abnormal.append(
                Sample(str(image), 1, "hemorrhage", None, None, class_name, group)
            )
        else:
            found.train.append(Sample(str(image), 0, "good", None, None, class_name, group))
    for name, image in sorted(images.items()):
        if name not in seen:
            raise DataError(f"{image}: image has no id in {labels_path}")
    return found


LAYOUT = Layout(name="headct", parse=single_class(parse_headct, "headct"))
