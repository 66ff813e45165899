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
from pdd.engine import metrics
from pdd.engine.run_folder import write_scores
from pdd.engine.scoring import Scored, Scorer
from pdd.errors import DataError
from pdd.report.heatmap import save_overlay

__all__ = ["HEATMAPS_PER_END", "calibrate", "evaluate_test", "split_record", "write_heatmaps"]

HEATMAPS_PER_END = 8
"""Overlays are written for this many highest- and lowest-scoring test images."""


def calibrate(holdout: Scored) -> tuple[float, dict[str, float]]:
    """Decision threshold (0.95 quantile of held-out normal scores) and the heatmap colour scale.

    ``vmin`` is the median held-out normal pixel and ``vmax`` the highest held-out normal score, so a
    normal scan never saturates the colour scale.
    """
    assert holdout.maps is not None
    threshold = metrics.threshold_from_normals(holdout.scores)
    map_stats = {"vmin": float(np.median(holdout.maps)), "vmax": float(holdout.scores.max())}
    if map_stats["vmax"] <= map_stats["vmin"]:
        map_stats["vmax"] = map_stats["vmin"] + 1e-6
    return threshold, map_stats


def evaluate_test(
    scorer: Scorer,
    split: DatasetSplit,
    threshold: float,
    map_stats: Mapping[str, float],
    folder: Path,
) -> dict[str, Any]:
    """Score every test image; metrics, scores.csv and heatmap overlays in ``folder``."""
    if not split.test:
        raise DataError(f"{split.root}: no test images")
    scored = scorer.score(
        split.test,
        "scoring test images",
        keep_maps=split.has_masks,
        keep_masks=split.has_masks,
        extremes=HEATMAPS_PER_END,
    )
    labels = np.array([s.label for s in split.test])
    result: dict[str, Any] = dict(metrics.image_metrics(labels, scored.scores))
    if split.has_masks:
        assert scored.maps is not None and scored.masks is not None
        result.update(metrics.pixel_metrics(scored.masks, scored.maps))
    result["threshold"] = float(threshold)
    result.update(metrics.sensitivity_specificity(labels, scored.scores, threshold))
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
        "skipped": [{"path": path, "reason": reason} for path, reason in split.skipped],
        "skipped_count": len(split.skipped),
    }
