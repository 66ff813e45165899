"""Evaluating one trained model: threshold (with its false-alarm promise) and colour scale from
held-out normals, test metrics, ``scores.csv`` (with conformal p-values) and heatmap overlays.

Test images never influence the threshold or the colour scale: both come from the held-out normals.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pdd.data import DatasetSplit, Sample
from pdd.errors import DataError
from pdd.evaluation import metrics
from pdd.evaluation.aggregate import mean_over
from pdd.evaluation.scan_rule import DEFAULT_SCAN_RULE, scan_score
from pdd.evaluation.scoring import Scored, Scorer
from pdd.evaluation.scoring_loop import LightningScorer
from pdd.report.heatmap import save_overlay
from pdd.runs.folder import write_scores

__all__ = [
    "HEATMAPS_PER_END",
    "NO_THRESHOLD",
    "Calibration",
    "ScanCalibration",
    "calibrate",
    "colour_scale",
    "evaluate_test",
    "p_value_cells",
    "scan_calibration",
    "score_test",
    "split_record",
    "stored_class_normal_scores",
    "stored_records",
    "uncalibrated",
    "volume_scores",
    "write_heatmaps",
]

HEATMAPS_PER_END = 8
"""Overlays are written for this many highest- and lowest-scoring test images."""


@dataclass(frozen=True)
class Calibration:
    """What a trained model is deployed with: threshold(s) with their promise, the normal scores
    p-values are computed against, and the heatmap colour scale.

    ``scan``: the same for whole volumes when the normals are NIfTI slices (the scan score rule
    over each held-out normal volume's slices; scans, not slices, are the exchangeable units).
    ``class_conformal`` and ``class_normal_scores``: each class's own threshold and held-out normal
    scores for a joint model (empty for one class).
    """

    conformal: metrics.ConformalThreshold | None
    normal_scores: list[float]
    class_conformal: dict[str, metrics.ConformalThreshold]
    class_normal_scores: dict[str, list[float]]
    scan: ScanCalibration | None
    map_stats: dict[str, float]
    map_stats_from: str  # which normal images set the colour scale

    @property
    def threshold(self) -> float | None:
        return None if self.conformal is None else self.conformal.threshold

    @property
    def class_thresholds(self) -> dict[str, float] | None:
        """Per-class thresholds of a joint model (None for one class)."""
        if len(self.class_conformal) < 2:
            return None
        return {name: chosen.threshold for name, chosen in self.class_conformal.items()}

    def record(self) -> dict[str, Any]:
        """What metrics.json says about the threshold(s): alpha asked and used, n, the promise."""
        result: dict[str, Any] = {
            "threshold_calibration": None if self.conformal is None else self.conformal.record()
        }
        if self.class_thresholds is not None:
            result["class_calibration"] = {
                name: chosen.record() for name, chosen in self.class_conformal.items()
            }
        if self.scan is not None:
            result["scan_calibration"] = self.scan.record()
        return result

    def checkpoint_meta(self) -> dict[str, Any]:
        """Checkpoint metadata; a checkpoint without ``threshold`` makes no decisions."""
        meta: dict[str, Any] = {"map_stats": self.map_stats}
        if self.conformal is not None:
            meta["threshold"] = self.conformal.threshold
            meta["normal_scores"] = list(self.normal_scores)
        meta.update({k: v for k, v in self.record().items() if v is not None})
        if self.class_thresholds is not None:
            meta["class_thresholds"] = self.class_thresholds
            meta["class_calibration"] = {
                name: {**chosen.record(), "normal_scores": list(self.class_normal_scores[name])}
                for name, chosen in self.class_conformal.items()
            }
        if self.scan is not None:
            meta["scan_threshold"] = self.scan.conformal.threshold
            meta["scan_calibration"] = self.scan.record(with_scores=True)
        return meta


@dataclass(frozen=True)
class ScanCalibration:
    """Threshold and normal scan scores for whole scans under ``rule``."""

    rule: str
    conformal: metrics.ConformalThreshold
    normal_scores: list[float]

    def record(self, *, with_scores: bool = False) -> dict[str, Any]:
        record = {"scan_rule": self.rule, **self.conformal.record()}
        if with_scores:
            record["normal_scores"] = list(self.normal_scores)
        return record


def calibrate(holdout: Scored, samples: Sequence[Sample], alpha: float) -> Calibration:
    """Threshold(s) at false-alarm rate ``alpha`` (``metrics.conformal_threshold``) and the colour
    scale, from the scored held-out normals ``samples`` only."""
    scores = holdout.scores
    per_class, class_scores = {}, {}
    names = sorted({s.class_name for s in samples if s.class_name is not None})
    for name in names if len(names) > 1 else []:  # a joint model: one threshold per class too
        mine = [i for i, s in enumerate(samples) if s.class_name == name]
        per_class[name] = metrics.conformal_threshold(scores[mine], alpha)
        class_scores[name] = [float(v) for v in scores[mine]]
    return Calibration(
        metrics.conformal_threshold(scores, alpha),
        [float(v) for v in scores],
        per_class,
        class_scores,
        scan_calibration(samples, scores, alpha),
        colour_scale(holdout),
        "held-out normals",
    )


def uncalibrated(normals: Scored, source: str) -> Calibration:
    """No held-out normals: no threshold, a display-only colour scale from ``source``."""
    return Calibration(None, [], {}, {}, None, colour_scale(normals), source)


def volume_scores(
    samples: Sequence[Sample], scores: np.ndarray, rule: str = DEFAULT_SCAN_RULE
) -> dict[tuple[str | None, str], float]:
    """Scan score (``rule`` over its slices) of every NIfTI volume among ``samples``."""
    slices: dict[tuple[str | None, str], list[float]] = {}
    for sample, score in zip(samples, scores):
        if sample.slice_index is not None:
            slices.setdefault((sample.class_name, sample.path), []).append(float(score))
    return {key: scan_score(values, rule) for key, values in slices.items()}


def scan_calibration(
    samples: Sequence[Sample], scores: np.ndarray, alpha: float
) -> ScanCalibration | None:
    """Scan-level threshold over the held-out normal volumes; None without volumes."""
    per_volume = volume_scores(samples, scores)
    if not per_volume:
        return None
    values = [per_volume[key] for key in sorted(per_volume, key=lambda k: (k[0] or "", k[1]))]
    return ScanCalibration(
        DEFAULT_SCAN_RULE, metrics.conformal_threshold(values, alpha), values
    )


def stored_class_normal_scores(meta: Mapping[str, Any]) -> dict[str, list[float]] | None:
    """Each class's held-out normal scores as a joint checkpoint keeps them; None for a
    one-class checkpoint or one written before they were kept (p-values are then pooled)."""
    record = meta.get("class_calibration")
    if not isinstance(record, Mapping):
        return None
    found = {
        str(name): [float(v) for v in entry["normal_scores"]]
        for name, entry in record.items()
        if isinstance(entry, Mapping) and entry.get("normal_scores")
    }
    return found or None


def stored_records(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What metrics.json of ``pdd test`` says about the checkpoint's thresholds (as the fit's
    metrics.json does): image, per-class and scan records, without the stored normal scores."""
    result: dict[str, Any] = {"threshold_calibration": meta.get("threshold_calibration")}
    classes = meta.get("class_calibration")
    if isinstance(classes, Mapping):
        result["class_calibration"] = {
            name: {k: v for k, v in entry.items() if k != "normal_scores"}
            for name, entry in classes.items()
            if isinstance(entry, Mapping)
        }
    scan = meta.get("scan_calibration")
    if isinstance(scan, Mapping):
        result["scan_calibration"] = {k: v for k, v in scan.items() if k != "normal_scores"}
    return result


def colour_scale(normals: Scored) -> dict[str, float]:
    """Heatmap colour scale from normal images: ``vmin`` is their median pixel and ``vmax`` their
    highest score, so a normal scan never saturates the colour scale."""
    assert normals.maps is not None
    map_stats = {"vmin": float(np.median(normals.maps)), "vmax": float(normals.scores.max())}
    if map_stats["vmax"] <= map_stats["vmin"]:
        map_stats["vmax"] = map_stats["vmin"] + 1e-6
    return map_stats


def score_test(scorer: Scorer | LightningScorer, split: DatasetSplit) -> Scored | None:
    """Every test image scored once, with what ``evaluate_test`` needs (maps and masks when there
    are masks, the overlay inputs of the extremes); None on processes other than global rank 0."""
    if not split.test:
        raise DataError(f"{split.root}: no test images")
    return scorer.score(
        split.test,
        "scoring test images",
        keep_maps=_any_masks(split.test),
        keep_masks=_any_masks(split.test),
        extremes=HEATMAPS_PER_END,
    )


def evaluate_test(
    scored: Scored,
    split: DatasetSplit,
    threshold: float | None,
    map_stats: Mapping[str, float],
    folder: Path,
    *,
    class_thresholds: Mapping[str, float] | None = None,
    normal_scores: Sequence[float] | None = None,
    class_normal_scores: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Metrics of the scored test images; scores.csv and heatmap overlays in ``folder``.

    ``normal_scores`` (the held-out normal scores kept in the checkpoint) give each image its
    p-value in scores.csv; without them (an older checkpoint) the column is empty. A joint
    model's image of a class in ``class_normal_scores`` gets its p-value against that class's
    held-out normals instead (the test set knows each image's class; predict does not).

    The metrics are over every test image. When the test set holds several classes (a joint
    model), ``classes`` adds each class's metrics from the same scores (and its own threshold from
    ``class_thresholds``) and ``class_mean`` their mean. ``threshold`` None (no held-out normals):
    no sensitivity/specificity, and the record says why.
    """
    result = _metrics(split.test, scored, range(len(split.test)), threshold)
    names = sorted({s.class_name for s in split.test if s.class_name is not None})
    if len(names) > 1:
        per_class = {}
        for name in names:
            mine = [i for i, s in enumerate(split.test) if s.class_name == name]
            limit = None if class_thresholds is None else class_thresholds.get(name)
            per_class[name] = _metrics(split.test, scored, mine, limit)
        result["classes"] = per_class
        result["class_mean"] = mean_over(per_class.values())
        result["pooled_over"] = "images of every class (one model)"
    result["map_stats"] = dict(map_stats)
    heatmaps = write_heatmaps(split.test, scored.extremes, map_stats, folder)
    p_values = p_value_cells(normal_scores, scored.scores)
    for name, scores in (class_normal_scores or {}).items():
        mine = [i for i, s in enumerate(split.test) if s.class_name == name]
        for index, cell in zip(mine, p_value_cells(scores, scored.scores[mine])):
            p_values[index] = cell
    rows = [
        {
            "path": sample.key,
            "label": str(sample.label),
            "score": repr(float(score)),
            "kind": sample.kind,
            "class_name": sample.class_name or "",
            "heatmap": heatmaps.get(index, ""),
            "p_value": p_values[index],
        }
        for index, (sample, score) in enumerate(zip(split.test, scored.scores))
    ]
    write_scores(folder / "scores.csv", rows)
    return result


def p_value_cells(normal_scores: Sequence[float] | None, scores: Sequence[float]) -> list[str]:
    """scores.csv cells: each score's conformal p-value, or empty without stored normal scores."""
    if not normal_scores:
        return [""] * len(scores)
    return [repr(float(p)) for p in metrics.p_values(normal_scores, np.asarray(scores))]


NO_THRESHOLD = "no held-out normal images (--holdout-fraction 0): no threshold, no decisions"


def _metrics(
    samples: Sequence[Sample], scored: Scored, indices: Sequence[int], threshold: float | None
) -> dict[str, Any]:
    """Image metrics of ``indices``; pixel metrics when every anomalous one has a mask; the
    decision threshold and what it gives."""
    indices = list(indices)
    chosen = [samples[i] for i in indices]
    labels = np.array([s.label for s in chosen])
    scores = scored.scores[indices]
    result: dict[str, Any] = dict(metrics.image_metrics(labels, scores))
    if _all_masked(chosen):
        assert scored.maps is not None and scored.masks is not None
        result.update(metrics.pixel_metrics(scored.masks[indices], scored.maps[indices]))
    if threshold is None:
        result["threshold"] = None
        result["threshold_note"] = NO_THRESHOLD
    else:
        result["threshold"] = float(threshold)
        result.update(metrics.sensitivity_specificity(labels, scores, threshold))
    result["num_test"] = len(chosen)
    return result


def _all_masked(samples: Sequence[Sample]) -> bool:
    anomalous = [s for s in samples if s.label == 1]
    return bool(anomalous) and all(s.mask_path is not None for s in anomalous)


def _any_masks(samples: Sequence[Sample]) -> bool:
    return any(s.mask_path is not None for s in samples if s.label == 1)


def write_heatmaps(
    samples: Sequence[Sample],
    extremes: Mapping[int, tuple[np.ndarray, np.ndarray]],
    map_stats: Mapping[str, float],
    folder: Path,
) -> dict[int, str]:
    """Overlays of the highest and lowest scoring test images, scaled by the checkpoint's statistics."""
    (folder / "heatmaps").mkdir(parents=True, exist_ok=True)
    written = {}
    for index in sorted(extremes):
        image, amap = extremes[index]
        sample = samples[index]
        stem = re.sub(
            r"[^A-Za-z0-9_.-]+", "_", f"{sample.kind}_{Path(sample.path).stem}"
        )[:100]  # a long folder plus a long file name must not exceed the 255-byte name limit
        if sample.slice_index is not None:
            stem += f"_slice{sample.slice_index}"
        relative = f"heatmaps/{index:05d}_{stem}.png"
        save_overlay(
            folder / relative, image, amap, map_stats["vmin"], map_stats["vmax"]
        )
        written[index] = relative
    return written


def split_record(split: DatasetSplit, manifest: str) -> dict[str, Any]:
    """What metrics.json says about the data: where it came from and how many images each set has."""
    return {
        "dataset": str(split.root),
        "format": split.format,
        "split": manifest,
        "num_train": len(split.train),
        "num_holdout": len(split.holdout),
        "num_test": len(split.test),
        "num_test_anomalous": sum(1 for s in split.test if s.label == 1),
        "groups": split.group_counts(),
        "skipped": [{"path": path, "reason": reason} for path, reason in split.skipped],
        "skipped_count": len(split.skipped),
    }
