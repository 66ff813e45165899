"""Every read and write of a run folder (docs/architecture.md, "Run folder schema").

All writes are atomic (``pdd.fileio``): a crash never leaves half a file, and a sub-run is complete
iff its ``metrics.json`` exists and its training state does not.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pdd.csv_cells import escape_cell, unescape_mapping
from pdd.errors import ConfigError
from pdd.fileio import atomic_write_text
from pdd.runs.lock import LOCK_NAME  # held by the run itself while it checks

__all__ = [
    "SCORES_FIELDS",
    "TRAINING_STATE",
    "is_complete",
    "read_json",
    "read_scores",
    "read_yaml",
    "refuse_existing_run",
    "remove_partial_files",
    "write_json",
    "read_step_losses",
    "write_scores",
    "write_yaml",
]

LOG_FOLDER = "logs"
"""Lightning's CSV (and TensorBoard) logs of a run, inside its folder."""

TRAINING_STATE = "training_state.ckpt"
SCORES_FIELDS = ("path", "label", "score", "kind", "class_name", "heatmap", "p_value")
"""Columns of ``scores.csv``, in order (``p_value`` empty when the checkpoint has no stored normal
scores; files written before it existed lack the column)."""
_RUN_FILES = ("config.yaml", "metrics.json", "scores.csv", "model.ckpt", TRAINING_STATE)


def refuse_existing_run(out: Path) -> None:
    """Create ``out``, or refuse it when it is a file or a folder that is not empty."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: output folder is a file")
    if out.is_dir() and any(entry.name != LOCK_NAME for entry in out.iterdir()):
        found = [name for name in _RUN_FILES if (out / name).exists()]
        what = f"holds a run ({', '.join(found)})" if found else "is not empty"
        raise ConfigError(
            f"{out}: output folder {what}; choose a new folder or resume it with `pdd fit --resume`"
        )
    out.mkdir(parents=True, exist_ok=True)


def remove_partial_files(run_dir: Path) -> None:
    """Temporary files of writes a kill interrupted (the targets themselves are intact)."""
    for partial in run_dir.rglob(".*.tmp"):
        partial.unlink()


def is_complete(folder: Path) -> bool:
    """Whether the sub-run in ``folder`` finished (its metrics written, its training state gone)."""
    return (folder / "metrics.json").is_file() and not (folder / TRAINING_STATE).exists()


def write_scores(path: Path, rows: Sequence[Mapping[str, str]]) -> None:
    """``scores.csv``: one row per test image, columns ``SCORES_FIELDS``; text cells escaped
    against spreadsheet formulas (``pdd.csv_cells``)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(SCORES_FIELDS), lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: escape_cell(value) for key, value in row.items()} for row in rows)
    atomic_write_text(path, buffer.getvalue())


def read_scores(path: Path) -> list[dict[str, str]]:
    """The rows of a ``scores.csv`` as written by ``write_scores`` (original values)."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [unescape_mapping(row) for row in csv.DictReader(handle)]  # type: ignore[misc]


def write_json(path: Path, record: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def write_yaml(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, yaml.safe_dump(dict(data), sort_keys=False))


def read_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def read_step_losses(run_folder: Path) -> list[tuple[int, float]]:
    """``(optimiser step, loss)`` pairs from a run folder's CSV logs, in step order.

    A resumed run logs into a new version and repeats the steps after its last saved state; the
    latest version's value of a step wins. Empty when the folder has no CSV log.
    """
    by_step: dict[int, float] = {}
    versions = sorted(
        (run_folder / LOG_FOLDER).glob("version_*/metrics.csv"),
        key=lambda path: int(path.parent.name.removeprefix("version_") or 0),
    )
    for path in versions:
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row.get("loss"):
                    by_step[int(row["step"])] = float(row["loss"])
    return sorted(by_step.items())
