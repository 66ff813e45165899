"""The scan score rule: one score for a scan (volume, series) from its slice scores.

It lives in evaluation because both sides use it: ``pdd fit`` sets the scan threshold on held-out
normal volumes with it and ``pdd calibrate`` on a new site's scans, and ``pdd predict`` scores
scans with it (``pdd.prediction.rules`` re-exports it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from pdd.errors import ConfigError

__all__ = ["DEFAULT_SCAN_RULE", "parse_scan_rule", "scan_score"]

DEFAULT_SCAN_RULE = "mean-top-3"
"""Scan score = mean of the 3 highest slice scores: on phantom volumes it ranked scans at least as
well as ``max`` for lesions over 1, 3 and 6 slices (benchmarks/README.md, "scan score rule")."""
_RULE = re.compile(r"^(max|mean-top-([1-9][0-9]*))$")


def parse_scan_rule(text: str) -> int | None:
    """``max`` -> None; ``mean-top-K`` -> K. Anything else is a ConfigError."""
    match = _RULE.match(text)
    if match is None:
        raise ConfigError(f"--scan-score: expected max or mean-top-K (e.g. mean-top-3), got {text!r}")
    return None if match.group(2) is None else int(match.group(2))


def scan_score(scores: Sequence[float], rule: str) -> float:
    """One score for a scan: its highest slice score (``max``) or the mean of its K highest."""
    top = parse_scan_rule(rule)
    values = sorted((float(s) for s in scores), reverse=True)
    if not values:
        raise ValueError("a scan needs at least one slice score")
    return values[0] if top is None else float(np.mean(values[:top]))
