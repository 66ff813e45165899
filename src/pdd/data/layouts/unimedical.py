"""The ``unimedical`` layout (ADer Uni-Medical: classes brain, liver, retinal) read from meta.json.

meta.json is ``{"train"|"test": {class: [{img_path, mask_path, cls_name, specie_name, anomaly},
...]}}`` with paths relative to the root. The published split is kept as given. A listed file that
is missing is a DataError (a broken download); an anomalous record in a train list is a counted
skip.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pdd.data.files import file_problem, read_text_file
from pdd.data.layouts.base import Found, Layout
from pdd.data.layouts.discovery import expand
from pdd.data.sample import Sample
from pdd.errors import DataError

__all__ = ["LAYOUT", "parse_unimedical", "read_meta"]


def read_meta(root: Path) -> dict[str, Any]:
    """meta.json, checked to hold 'train' and 'test' maps of class -> records."""
    meta_path = root / "meta.json"
    try:
        meta = json.loads(read_text_file(meta_path, "meta.json"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{meta_path}: not valid JSON ({exc})") from exc
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("train"), dict)
        or not isinstance(meta.get("test"), dict)
    ):
        raise DataError(
            f"{meta_path}: expected an object with 'train' and 'test' maps of class -> records"
        )
    return meta


def parse_unimedical(root: Path, class_name: str | None) -> list[Found]:
    """One :class:`Found` per class (the named one, or every class meta.json lists)."""
    meta_path = root / "meta.json"
    meta = read_meta(root)
    classes = [class_name] if class_name else sorted(meta["train"])
    per_class: list[Found] = []
    for cls in classes:
        found = Found(root / cls, test=[])
        per_class.append(found)
        if cls not in meta["train"] or cls not in meta["test"]:
            raise DataError(
                f"{meta_path}: class {cls!r} not found (classes: {', '.join(sorted(meta['train']))})"
            )
        for phase in ("train", "test"):
            records = meta[phase][cls]
            if not isinstance(records, list):
                raise DataError(f"{meta_path}: {phase}/{cls} must be a list of records")
            for number, record in enumerate(records):
                where = f"{meta_path}: {phase}/{cls} record {number}"
                _add_record(root, found, phase, cls, record, where)
    return per_class


def _add_record(root: Path, found: Found, phase: str, cls: str, record: object, where: str) -> None:
    """The samples of one meta.json record, into ``found``'s train or test list."""
    if not isinstance(record, dict) or "img_path" not in record or "anomaly" not in record:
        raise DataError(f"{where}: needs img_path and anomaly")
    image = _meta_file(root, str(record["img_path"]), where, "image")
    label = int(record["anomaly"])
    if label not in (0, 1):
        raise DataError(f"{where}: anomaly must be 0 or 1, got {record['anomaly']!r}")
    mask_rel = record.get("mask_path") or ""
    mask = (
        str(_meta_file(root, str(mask_rel), where, "mask")) if mask_rel and label == 1 else None
    )
    kind = "good" if label == 0 else str(record.get("specie_name") or "ungood")
    if phase == "train" and label == 1:
        found.skipped.append((str(image), "anomalous image in a train list"))
        return
    samples = expand([image], found.skipped, label=label, kind=kind, class_name=cls)
    if mask is not None:
        samples = [
            Sample(s.path, s.label, s.kind, mask, s.slice_index, s.class_name) for s in samples
        ]
    (found.train if phase == "train" else found.test).extend(samples)  # type: ignore[union-attr]


def _meta_file(root: Path, listed: str, where: str, what: str) -> Path:
    """A file meta.json lists: a regular file inside the root, else a DataError naming the record."""
    path = root / listed
    if not Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root)):
        raise DataError(f"{where}: {what} {listed!r} is outside the dataset folder {root}")
    problem = file_problem(path)
    if problem == "file not found":
        raise DataError(f"{where}: {what} file not found: {path}")
    if problem is not None:
        raise DataError(f"{where}: {what} file {path}: {problem}")
    return path


LAYOUT = Layout(
    name="unimedical",
    parse=parse_unimedical,
    classes=lambda root: sorted(read_meta(root)["train"]),
    published=True,
)
