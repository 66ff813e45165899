"""How a predict run turns scores into answers: the scan score rule (defined in
``pdd.evaluation.scan_rule``), the checkpoint's stored threshold, colour scale and normal scores
(p-values), and the per-score decision.

Kept apart from the run machinery so that in-process scoring (``pdd.api``) and benchmarks use the
very same rules without Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pdd.errors import CheckpointError
from pdd.evaluation.scan_rule import DEFAULT_SCAN_RULE, parse_scan_rule, scan_score

__all__ = [
    "ANOMALOUS",
    "DEFAULT_SCAN_RULE",
    "NORMAL",
    "decision",
    "p_value",
    "parse_scan_rule",
    "scan_reference",
    "scan_score",
    "stored_normal_scores",
    "stored_statistics",
]

ANOMALOUS = "anomalous"
NORMAL = "normal"


def stored_statistics(meta: Mapping[str, Any]) -> tuple[float | None, tuple[float, float] | None]:
    """``(threshold, (vmin, vmax))`` saved at fit time; either is None when the checkpoint lacks it
    (no held-out normals, an imported release): scores are then written without decisions, and
    no PNG overlay is drawn (a per-image colour scale would mislead)."""
    threshold = meta.get("threshold")
    stats = meta.get("map_stats") or {}
    try:
        value = None if threshold is None else float(threshold)
        scale = (float(stats["vmin"]), float(stats["vmax"])) if stats else None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint threshold/heatmap statistics are unreadable ({exc})") from None
    if value is not None and not np.isfinite(value):
        raise CheckpointError(f"checkpoint threshold is not a finite number ({value})")
    if scale is not None and not scale[1] > scale[0]:
        raise CheckpointError(f"checkpoint heatmap range is empty ({scale[0]} .. {scale[1]})")
    return value, scale


def decision(score: float, threshold: float | None) -> str:
    """``anomalous``/``normal`` at the stored threshold; empty without one."""
    if threshold is None:
        return ""
    return ANOMALOUS if score > threshold else NORMAL


def stored_normal_scores(meta: Mapping[str, Any]) -> list[float] | None:
    """The held-out normal scores saved at fit or calibration time (p-values are computed against
    them); None for a checkpoint written before they were kept."""
    values = meta.get("normal_scores")
    if not values:
        return None
    try:
        scores = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint normal scores are unreadable ({exc})") from None
    if not np.all(np.isfinite(scores)):
        raise CheckpointError("checkpoint normal scores hold a NaN or infinite value")
    return scores


def scan_reference(meta: Mapping[str, Any], rule: str) -> tuple[float, list[float]] | None:
    """``(threshold, normal scan scores)`` for whole scans scored with ``rule``, when the checkpoint
    was calibrated on normal volumes with that rule; None otherwise (scan decisions then use the
    slice threshold, and scans get no p-value)."""
    record = meta.get("scan_calibration")
    if not isinstance(record, Mapping) or record.get("scan_rule") != rule:
        return None
    scores = stored_normal_scores(record)
    threshold = meta.get("scan_threshold")
    if scores is None or threshold is None:
        return None
    return float(threshold), scores


def p_value(score: float, normal_scores: Sequence[float] | None) -> float | None:
    """Conformal p-value of ``score`` against ``normal_scores`` (None without them)."""
    if normal_scores is None:
        return None
    from pdd.evaluation.metrics import p_values

    return float(p_values(normal_scores, [score])[0])
