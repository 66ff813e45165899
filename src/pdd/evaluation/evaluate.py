"""Evaluating one trained model: threshold and colour scale from held-out normals, test metrics,
``scores.csv`` and heatmap overlays.

Test images never influence the threshold or the colour scale: both come from the held-out normals.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pdd.data import DatasetSplit, Sample
from pdd.errors import DataError
from pdd.evaluation import metrics
from pdd.evaluation.aggregate import mean_over
from pdd.evaluation.scoring import Scored, Scorer
from pdd.evaluation.scoring_loop import LightningScorer
from pdd.report.heatmap import save_overlay
from pdd.runs.folder import write_scores

__all__ = [
    "HEATMAPS_PER_END",
    "NO_THRESHOLD",
    "calibrate",
    "class_thresholds",
    "colour_scale",
    "evaluate_test",
    "score_test",
    "split_record",
    "write_heatmaps",
]

HEATMAPS_PER_END = 8
"""Overlays are written for this many highest- and lowest-scoring test images."""


def calibrate(holdout: Scored) -> tuple[float, dict[str, float]]:
    """Decision threshold (0.95 quantile of held-out normal scores) and the heatmap colour scale."""
    return metrics.threshold_from_normals(holdout.scores), colour_scale(holdout)


def colour_scale(normals: Scored) -> dict[str, float]:
    """Heatmap colour scale from normal images: ``vmin`` is their median pixel and ``vmax`` their
    highest score, so a normal scan never saturates the colour scale."""
    assert normals.maps is not None
    map_stats = {"vmin": float(np.median(normals.maps)), "vmax": float(normals.scores.max())}
    if map_stats["vmax"] <= map_stats["vmin"]:
        map_stats["vmax"] = map_stats["vmin"] + 1e-6
    return map_stats


def class_thresholds(samples: Sequence[Sample], scores: np.ndarray) -> dict[str, float]:
    """Per-class thresholds of a joint model: the same quantile over each class's held-out normals."""
    thresholds = {}
    for name in sorted({s.class_name for s in samples if s.class_name is not None}):
        mine = [i for i, s in enumerate(samples) if s.class_name == name]
        thresholds[name] = metrics.threshold_from_normals(scores[mine])
    return thresholds


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
) -> dict[str, Any]:
    """Metrics of the scored test images; scores.csv and heatmap overlays in ``folder``.

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
    rows = [
        {
            "path": sample.key,
            "label": str(sample.label),
            "score": repr(float(score)),
            "kind": sample.kind,
            "class_name": sample.class_name or "",
            "heatmap": heatmaps.get(index, ""),
        }
        for index, (sample, score) in enumerate(zip(split.test, scored.scores))
    ]
    write_scores(folder / "scores.csv", rows)
    return result


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
        )
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
