"""What every part of a predict run shares: its options, the names of its files, the context its
processes work in, and its totals.

``predict`` (entry points and setup), ``predict_loop`` (inside Lightning's predict loop) and
``predict_merge`` (the result files) all import from here and never from each other's internals.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdd.csv_cells import escape_row
from pdd.errors import PDDError
from pdd.prediction.plan import Plan, open_text
from pdd.prediction.rules import DEFAULT_SCAN_RULE

__all__ = [
    "COLLECTED_SKIPS_FILE",
    "NOTES_FILE",
    "PATH_ENCODING",
    "RUN_FILE",
    "SCORES_FILE",
    "SKIPPED_FILE",
    "VOLUMES_FILE",
    "WORK_DIR",
    "PredictOptions",
    "PredictResult",
    "RunContext",
    "read_record",
    "write_csv",
]

SCORES_FILE = "scores.csv"
VOLUMES_FILE = "volumes.csv"
SKIPPED_FILE = "skipped.csv"
NOTES_FILE = "notes.csv"
RUN_FILE = "predict.json"
WORK_DIR = ".partial"
COLLECTED_SKIPS_FILE = "collect_skipped.csv"
"""Inputs skipped while collecting (in ``WORK_DIR``), merged into skipped.csv at the end."""
PATH_ENCODING = (
    "utf-8, surrogateescape: file-name bytes that are not valid UTF-8 are written as those bytes"
)


@dataclass(frozen=True)
class PredictOptions:
    """Everything a predict run depends on; the Lightning fields are as in ``pdd fit``."""

    checkpoint: Path
    inputs: tuple[Path, ...]
    out: Path
    window: tuple[float, float] | None = None
    batch_size: int = 8
    scan_rule: str = DEFAULT_SCAN_RULE
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0


@dataclass
class PredictResult:
    """Totals of a finished run (all processes); rows are in the files, not in memory."""

    out: Path
    threshold: float | None
    scored: int
    anomalous: int
    volumes: int
    skipped: int
    notes: int
    newly_scored: int
    seconds: float
    first_skip: tuple[str, str] | None = None

    @property
    def scores_csv(self) -> Path:
        return self.out / SCORES_FILE

    @property
    def images_per_second(self) -> float:
        """Throughput of this invocation (slices scored now / wall time of the scoring loop)."""
        return self.newly_scored / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RunContext:
    """What every process of a run shares: the plan, the model's statistics, the options.

    ``pending`` (this process's scans with their unscored slices) and ``previously_scored`` are
    filled in by the loop's data module once the processes exist; ``precision_used`` after it ran.
    """

    options: PredictOptions
    plan: Plan
    threshold: float | None
    scale: tuple[float, float] | None
    image_size: int
    checkpoint_name: str
    on_progress: Callable[[int, int], None] | None = None
    normal_scores: list[float] | None = None  # p-values of slices/images (None: empty column)
    scan_reference: tuple[float, list[float]] | None = None  # scans: (threshold, normal scores)
    pending: list[tuple[int, list[int]]] = field(default_factory=list)  # this rank's scans
    previously_scored: int = 0
    precision_used: str = ""


def read_record(out: Path) -> dict[str, Any]:
    """The run record (``predict.json``) of the run in ``out``; one-line ``PDDError`` if unusable."""
    path = out / RUN_FILE
    if not path.is_file():
        raise PDDError(f"{out}: no {RUN_FILE} here; this is not a predict run folder")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PDDError(f"{path}: unreadable run record ({exc})") from None
    if not isinstance(record, dict):
        raise PDDError(f"{path}: unreadable run record (not an object)")
    return record


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A small result or work CSV, replaced whole (temporary file + rename); text cells escaped
    against spreadsheet formulas (``pdd.csv_cells``: read back with ``unescape_row``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    with open_text(partial, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(escape_row(row) for row in rows)
    os.replace(partial, path)
