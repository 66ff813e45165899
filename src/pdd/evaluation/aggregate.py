"""Means and standard deviations of metrics over classes and seeds.

They cover ``METRIC_KEYS`` only: thresholds belong to one model and are never averaged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["METRIC_KEYS", "mean_metrics", "mean_over"]

METRIC_KEYS = (
    "image_auroc", "image_ap", "image_f1_max",
    "pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro",
    "sensitivity", "specificity",
)  # fmt: skip
"""Values that are averaged over classes and seeds (thresholds are per model, not averaged)."""


def mean_metrics(
    records: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and (population) standard deviation of each metric that every record has."""
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    for key in METRIC_KEYS:
        values = [float(r[key]) for r in records if key in r]
        if values and len(values) == len(records):
            mean[key] = float(np.mean(values))
            std[key] = float(np.std(values))
    return mean, std


def mean_over(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The mean of each metric that every record has."""
    return mean_metrics(list(records))[0]
