"""The work list of a ``pdd predict`` run, fixed once and kept in the output folder.

Every input slice gets one index, and slices of one scan get consecutive indices in scan order,
so a resumed run (or any process of a multi-process run) sees exactly the same numbering without
reading the inputs again. The plan is two CSV files in ``<out>/.partial/``; file names are written
in UTF-8 with ``surrogateescape``, i.e. a name whose bytes are not valid UTF-8 is written back as
those same bytes (lossless, and what ``os.fsencode`` gives).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pdd.data.scans import DICOM, IMAGE, NIFTI, Scan

__all__ = ["Item", "Plan", "ScanEntry", "open_text", "read_complete_rows"]

ITEMS_FILE = "items.csv"
SCANS_FILE = "scans.csv"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SUFFIXES = (".gz", ".nii", ".dcm", ".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def open_text(path: Path, mode: str):  # -> TextIO
    """Result and work files: UTF-8, undecodable file-name bytes kept as they are."""
    return open(path, mode, encoding="utf-8", errors="surrogateescape", newline="")


@dataclass(frozen=True)
class Item:
    """One slice to score: ``scan`` is the number of the scan it belongs to."""

    index: int
    path: str
    slice_index: int | None
    scan: int

    @property
    def key(self) -> str:
        """The CSV spelling: ``path`` or ``path#slice`` (NIfTI)."""
        return self.path if self.slice_index is None else f"{self.path}#{self.slice_index}"


@dataclass(frozen=True)
class ScanEntry:
    """A scan of the plan: its items are ``first .. first + count - 1`` in scan order.

    ``output`` is where its map goes, relative to the output folder: a PNG overlay for an image,
    ``maps/<name>_anomaly.nii.gz`` for a volume, ``dicom/<source series UID>/`` for a series
    with geometry, empty when none can be written.
    """

    number: int
    key: str
    kind: str
    patient_id: str
    geometry: bool
    first: int
    count: int
    output: str

    @property
    def is_volume(self) -> bool:
        """A NIfTI volume or DICOM series: scored as a whole, one row in volumes.csv."""
        return self.kind != IMAGE


class Plan:
    """Items and scans of one run (all in memory: a few hundred bytes per slice, no pixels)."""

    def __init__(self, items: list[Item], scans: list[ScanEntry]) -> None:
        self.items = items
        self.scans = scans

    @classmethod
    def build(cls, scans: Sequence[Scan], *, overlays: bool) -> Plan:
        """Number the slices of ``scans``; ``overlays``: images get PNG overlay names."""
        items: list[Item] = []
        entries: list[ScanEntry] = []
        used: set[str] = set()
        for number, scan in enumerate(scans):
            first = len(items)
            for sample in scan.samples:
                items.append(Item(len(items), sample.path, sample.slice_index, number))
            entries.append(
                ScanEntry(
                    number, scan.key, scan.kind, scan.patient_id, scan.geometry, first,
                    len(scan.samples), _output_name(scan, first, overlays, used),
                )
            )
        return cls(items, entries)

    def save(self, folder: Path) -> None:
        """Write the plan atomically (items first: the scans file marks a complete plan)."""
        folder.mkdir(parents=True, exist_ok=True)
        _write_rows(
            folder / ITEMS_FILE,
            ("index", "path", "slice_index", "scan"),
            ((i.index, i.path, "" if i.slice_index is None else i.slice_index, i.scan) for i in self.items),
        )
        _write_rows(
            folder / SCANS_FILE,
            ("number", "key", "kind", "patient_id", "geometry", "first", "count", "output"),
            (
                (s.number, s.key, s.kind, s.patient_id, int(s.geometry), s.first, s.count, s.output)
                for s in self.scans
            ),
        )

    @classmethod
    def load(cls, folder: Path) -> Plan:
        """Read a plan written by ``save``."""
        items = [
            Item(int(r[0]), r[1], None if r[2] == "" else int(r[2]), int(r[3]))
            for r in _read_rows(folder / ITEMS_FILE)
        ]
        scans = [
            ScanEntry(int(r[0]), r[1], r[2], r[3], r[4] == "1", int(r[5]), int(r[6]), r[7])
            for r in _read_rows(folder / SCANS_FILE)
        ]
        return cls(items, scans)

    @staticmethod
    def exists(folder: Path) -> bool:
        return (folder / SCANS_FILE).is_file()


def _output_name(scan: Scan, first: int, overlays: bool, used: set[str]) -> str:
    """Unique by construction: image overlays carry their unique first index; a series folder or
    volume map whose cleaned name is taken (UIDs differing only in characters the cleaning drops,
    equal file names in different folders, names equal but for case on a case-insensitive disk)
    gets its first index, then a counter, appended; a name that cleans to nothing gets a word."""
    if scan.kind == DICOM:
        series = _safe(scan.key)[:64] or "series"
        return _unique(f"dicom/{series}", "/", first, used) if scan.geometry else ""
    stem = Path(scan.key).name
    for suffix in _SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    stem = _safe(stem)[:80] or "image"
    if scan.kind == NIFTI:
        return _unique(f"maps/{stem}", "_anomaly.nii.gz", first, used)
    if not overlays:
        return ""
    # The parent folder stays in the name (as in fit's heatmaps/<index>_<kind>_<stem>.png), so
    # test/good/000.png and test/tumor/000.png give 00000_good_000.png and 00001_tumor_000.png.
    folder = _safe(Path(scan.key).parent.name)[:40]
    return f"heatmaps/{first:05d}_{folder + '_' if folder else ''}{stem}.png"


def _unique(base: str, ending: str, first: int, used: set[str]) -> str:
    name, number = f"{base}{ending}", 1
    while name.lower() in used:
        name = f"{base}-{first}{ending}" if number == 1 else f"{base}-{first}-{number}{ending}"
        number += 1
    used.add(name.lower())
    return name


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("._")


def _write_rows(path: Path, header: Sequence[str], rows: Iterator[Sequence[object]] | object) -> None:
    partial = path.with_name(f".{path.name}.tmp")
    with open_text(partial, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)  # type: ignore[arg-type]
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _read_rows(path: Path) -> list[list[str]]:
    with open_text(path, "r") as handle:
        rows = list(csv.reader(handle))
    return rows[1:]


def read_complete_rows(path: Path) -> Iterator[list[str]]:
    """Rows of a part file that was appended to line by line; a cut-off last line is ignored."""
    with open_text(path, "r") as handle:
        for line in handle:
            if line.endswith("\n"):
                yield next(csv.reader([line]))
