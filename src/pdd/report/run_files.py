"""What a report reads from a run folder: ``metrics.json``, ``scores.csv`` (one per seed) and the
per-class thresholds, each checked so that a damaged or hand-edited file is one ``PDDError`` naming
it (see docs/architecture.md, "Run folder schema")."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdd.csv_cells import unescape_mapping
from pdd.errors import PDDError
from pdd.fileio import TEXT_ERRORS

__all__ = ["ReportRun", "ScoreRow", "ScoreSet", "read_run", "read_scores", "threshold_for"]


@dataclass(frozen=True)
class ScoreRow:
    """One line of ``scores.csv``; ``label`` is None when the row has no ground truth."""

    path: str
    label: int | None
    score: float
    kind: str
    class_name: str
    heatmap: str


@dataclass(frozen=True)
class ScoreSet:
    """The scores of one run folder (a seed's sub-folder for multi-seed runs)."""

    name: str  # "" for a single run, "seed_<n>" otherwise
    folder: Path
    rows: list[ScoreRow]


@dataclass(frozen=True)
class ReportRun:
    """Everything a report section may show, read once from the run folder.

    ``main`` is the first score set (the first seed for multi-seed runs): histograms and gallery
    show it; ``main_metrics`` is what belongs to its model (thresholds, colour scale, training).
    """

    folder: Path
    metrics: dict[str, Any]
    sets: list[ScoreSet]
    main: ScoreSet
    main_metrics: dict[str, Any]


def read_run(run_dir: Path) -> ReportRun:
    """Read and check a run folder's report inputs."""
    if not run_dir.is_dir():
        raise PDDError(f"{run_dir}: not a run folder (directory not found)")
    metrics = _read_metrics(run_dir / "metrics.json")
    sets = _score_sets(run_dir, metrics)
    main = sets[0]
    main_metrics = metrics
    if main.name:
        main_metrics = metrics["runs"].get(main.name) or metrics
    return ReportRun(run_dir, metrics, sets, main, main_metrics)


def _read_metrics(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PDDError(f"{path}: not found; a run folder needs metrics.json to build a report")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PDDError(f"{path}: unreadable metrics file: {exc}") from exc
    if not isinstance(data, dict):
        raise PDDError(f"{path}: expected a JSON object of metrics")
    return data


def read_scores(path: str | os.PathLike[str]) -> list[ScoreRow]:
    """Parse ``scores.csv`` (columns path,label,score[,kind,class_name,heatmap])."""
    path = Path(path)
    if not path.is_file():
        raise PDDError(f"{path}: not found; a run folder needs scores.csv to build a report")
    try:
        # surrogateescape: file names that are not valid UTF-8 were written that way (pdd.fileio)
        text = path.read_text(encoding="utf-8", errors=TEXT_ERRORS)
        if text and not text.endswith("\n"):
            # Every writer ends each row with a line break: a last row without one was cut off
            # (a full disk, a killed copy) and may hold a shortened number such as "2." for "2.75".
            raise PDDError(
                f"{path}: line {text.count(chr(10)) + 1}: the last row has no line break; "
                "the file looks truncated"
            )
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = {"path", "label", "score"} - set(reader.fieldnames or [])
        if missing:
            raise PDDError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        # Text cells were escaped against spreadsheet formulas when written (pdd.csv_cells).
        return [_parse_row(path, reader.line_num, unescape_mapping(row)) for row in reader]
    except (OSError, csv.Error) as exc:
        raise PDDError(f"{path}: unreadable scores file: {exc}") from exc


def _parse_row(path: Path, line: int, row: dict[str | None, Any]) -> ScoreRow:
    if None in row or None in row.values():
        raise PDDError(f"{path}: line {line}: expected {len(row) - (None in row)} fields")
    label_text = (row.get("label") or "").strip()
    if label_text not in ("", "0", "1"):
        raise PDDError(f"{path}: line {line}: label must be 0, 1 or empty, got {label_text!r}")
    try:
        score = float(row.get("score") or "")
    except ValueError:
        raise PDDError(f"{path}: line {line}: score {row.get('score')!r} is not a number") from None
    if not math.isfinite(score):
        raise PDDError(f"{path}: line {line}: score is {score}")
    return ScoreRow(
        path=row.get("path") or "",
        label=int(label_text) if label_text else None,
        score=score,
        kind=row.get("kind") or "",
        class_name=row.get("class_name") or "",
        heatmap=row.get("heatmap") or "",
    )


def _score_sets(run_dir: Path, metrics: dict[str, Any]) -> list[ScoreSet]:
    runs = metrics.get("runs")
    if runs is not None:
        _check_runs(run_dir / "metrics.json", runs)
    if isinstance(runs, dict) and runs:
        return [ScoreSet(name, run_dir / name, read_scores(run_dir / name / "scores.csv"))
                for name in runs]
    return [ScoreSet("", run_dir, read_scores(run_dir / "scores.csv"))]


def _check_runs(path: Path, runs: Any) -> None:
    """``runs`` maps sub-run folder names (``seed_<n>``) to their metrics; a hand-edited value such
    as ``{".": 5}`` must not send us reading outside the sub-runs."""
    if not isinstance(runs, dict):
        raise PDDError(f"{path}: 'runs' must map sub-run folders to their metrics, got {runs!r}")
    for name, record in runs.items():
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
            raise PDDError(f"{path}: 'runs' names sub-run folder {name!r}; expected names like seed_0")
        if not isinstance(record, dict):
            raise PDDError(f"{path}: 'runs'.{name} must be an object of metrics, got {record!r}")


def threshold_for(metrics: dict[str, Any], folder: Path, class_name: str) -> float | None:
    """The decision threshold of the model that scored ``class_name`` (each class has its own)."""
    source: Any = metrics
    if class_name:
        classes = metrics.get("classes")
        source = classes.get(class_name) if isinstance(classes, dict) else None
        if not (isinstance(source, dict) and "threshold" in source):
            class_metrics = folder / class_name / "metrics.json"  # the per-class sub-run
            try:
                source = json.loads(class_metrics.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                return None
    value = source.get("threshold") if isinstance(source, dict) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
