"""The test scans of a volume dataset in ``pdd fit`` / ``pdd test``: one row per scan in
``volumes.csv`` and, for the report's scan viewer, the slices and maps of the most anomalous ones.

A volume dataset's samples are slices (NIfTI axial slices, files of a DICOM series) and scores.csv
has one row per slice. The slices are grouped into scans as ``pdd predict`` groups its inputs
(``pdd.data.scans.group_scans``); a scan's score is the scan rule over its slice scores, decided at
the model's scan threshold with a p-value against its held-out normal scan scores when the model
has them (``scan_calibration``), else decided at the slice threshold without a p-value, as predict
does.

Size bound: only the ``MAX_SCANS`` (20) most anomalous test scans keep viewer frames
(``viewer/<rank>.npz``: each slice and its map at the model's input size S as uint8, 2 S^2 bytes a
slice before compression), so the run folder grows by at most 20 x slices x 2 S^2 bytes whatever
the test set's size. The test pass keeps no maps (4 S^2 bytes a slice for a whole test set), so
those scans are scored once more, one scan at a time: one scan's maps in memory at once.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pdd.csv_cells import escape_row
from pdd.data import Sample
from pdd.data.scans import IMAGE, Scan, group_scans
from pdd.evaluation import metrics
from pdd.evaluation.scan_rule import DEFAULT_SCAN_RULE, scan_score
from pdd.evaluation.scoring import Scorer
from pdd.fileio import atomic_write_text
from pdd.report.scan_viewer import FRAMES_DIR, MAX_SCANS, save_scan_frames

__all__ = ["VOLUMES_FILE", "ScanResult", "scan_results", "write_scan_results"]

VOLUMES_FILE = "volumes.csv"
_COLUMNS = (
    "scan", "kind", "class_name", "patient_id", "label", "num_slices", "score", "decision",
    "max_slice", "rule", "p_value",
)  # fmt: skip


@dataclass(frozen=True)
class ScanResult:
    """One test scan: its slices' positions in the test list (scan order) and scores."""

    scan: Scan
    indices: list[int]
    slice_scores: list[float]
    score: float

    @property
    def positions(self) -> list[int]:
        """Slice numbers shown in the viewer: a NIfTI slice's index, a series' order."""
        return [
            k if sample.slice_index is None else sample.slice_index
            for k, sample in enumerate(self.scan.samples)
        ]

    @property
    def max_slice(self) -> int:
        return self.positions[int(np.argmax(self.slice_scores))]


def scan_results(
    samples: Sequence[Sample], scores: np.ndarray, rule: str = DEFAULT_SCAN_RULE
) -> list[ScanResult]:
    """The scans (volumes, series) among the test ``samples``, scored by ``rule``; single images
    are left out."""
    index_of = {sample.key: index for index, sample in enumerate(samples)}
    found = []
    for scan in group_scans(samples):
        if scan.kind == IMAGE:
            continue
        indices = [index_of[sample.key] for sample in scan.samples]
        values = [float(scores[i]) for i in indices]
        found.append(ScanResult(scan, indices, values, scan_score(values, rule)))
    return found


def write_scan_results(
    folder: Path,
    samples: Sequence[Sample],
    scores: np.ndarray,
    scorer: Scorer,
    meta: Mapping[str, Any],
    scale: tuple[float, float],
) -> int:
    """``volumes.csv`` and the viewer frames of the test scans in ``folder``; returns the number of
    scans (0, and nothing written, for an image dataset).

    ``meta`` holds the thresholds and normal scores as a checkpoint keeps them (``threshold``,
    ``scan_threshold``, ``scan_calibration``); ``scale`` is the fixed colour scale (vmin, vmax).
    """
    scans = scan_results(samples, scores)
    if not scans:
        return 0
    threshold, normal_scan_scores = _scan_reference(meta)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_COLUMNS)
    for found in scans:
        first = found.scan.samples[0]
        p_value = (
            "" if normal_scan_scores is None
            else repr(float(metrics.p_values(normal_scan_scores, [found.score])[0]))
        )  # fmt: skip
        decision = "" if threshold is None else ("anomalous" if found.score > threshold else "normal")
        writer.writerow(escape_row((
            found.scan.key, found.scan.kind, first.class_name or "", found.scan.patient_id,
            max(s.label for s in found.scan.samples), len(found.indices), repr(found.score),
            decision, found.max_slice, DEFAULT_SCAN_RULE, p_value,
        )))  # fmt: skip
    atomic_write_text(folder / VOLUMES_FILE, buffer.getvalue())
    _write_frames(folder / FRAMES_DIR, scans, scorer, scale)
    return len(scans)


def _scan_reference(meta: Mapping[str, Any]) -> tuple[float | None, list[float] | None]:
    """(threshold, normal scan scores) for scans under the default rule; without a scan
    calibration the slice threshold and no p-values (as ``pdd predict``)."""
    record = meta.get("scan_calibration")
    if (
        isinstance(record, Mapping)
        and record.get("scan_rule") == DEFAULT_SCAN_RULE
        and record.get("normal_scores")
        and meta.get("scan_threshold") is not None
    ):
        return float(meta["scan_threshold"]), [float(v) for v in record["normal_scores"]]
    threshold = meta.get("threshold")
    return (None if threshold is None else float(threshold)), None


def _write_frames(
    frames: Path, scans: Sequence[ScanResult], scorer: Scorer, scale: tuple[float, float]
) -> None:
    """Frames of the ``MAX_SCANS`` highest-scoring scans (earlier frames, e.g. of an evaluation
    that was interrupted, are replaced)."""
    shutil.rmtree(frames, ignore_errors=True)
    ranked = sorted(scans, key=lambda found: -found.score)[:MAX_SCANS]
    for rank, found in enumerate(ranked):
        slices = found.scan.samples
        # extremes = every slice: the pass keeps each slice's model input and map
        description = f"report viewer: scan {rank + 1} of {len(ranked)}"
        scored = scorer.score(slices, description, extremes=len(slices))
        kept = [scored.extremes[k] for k in range(len(slices))]
        save_scan_frames(
            frames / f"{rank:06d}.npz",
            found.scan.key,
            found.positions,
            [image for image, _ in kept],
            [amap for _, amap in kept],
            scale,
            slice_scores=found.slice_scores,
        )
