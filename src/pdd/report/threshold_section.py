"""The report's statement of what the decision threshold promises: the false-alarm rate asked for
and used, how many held-out normals set it, and the promise in words (``metrics.conformal_threshold``
records it in metrics.json, per class for a joint model and per scan for volumes)."""

from __future__ import annotations

from typing import Any

from pdd.report.markup import esc, table
from pdd.report.run_files import ReportRun

__all__ = ["threshold_section"]


def _row(name: str, record: Any) -> list[str] | None:
    if not isinstance(record, dict) or "guarantee" not in record:
        return None
    asked, used = record.get("alpha_requested"), record.get("alpha")
    rate = f"{100 * float(used):.3g} %" if isinstance(used, (int, float)) else "?"
    if isinstance(asked, (int, float)) and isinstance(used, (int, float)) and used > asked:
        rate += f" (asked {100 * float(asked):.3g} %: too few normals)"
    threshold = record.get("threshold")
    shown = f"{float(threshold):.6g}" if isinstance(threshold, (int, float)) else "?"
    return [esc(name), esc(shown), esc(rate), esc(record.get("n", "?")), esc(record["guarantee"])]


def threshold_section(run: ReportRun) -> str:
    """One row per threshold (images; each class of a joint model; scans), or "" without any."""
    metrics = run.main_metrics
    rows = [_row("images", metrics.get("threshold_calibration"))]
    classes = metrics.get("class_calibration")
    if isinstance(classes, dict):
        rows += [_row(f"class {name}", record) for name, record in classes.items()]
    scans = metrics.get("scan_calibration")
    if isinstance(scans, dict):
        rows.append(_row(f"scans ({scans.get('scan_rule', '?')})", scans))
    kept = [row for row in rows if row is not None]
    if not kept:
        return ""
    header = ["Units", "Threshold", "False-alarm rate", "Held-out normals n", "Promise"]
    return (
        '<section id="threshold"><h2>Decision threshold</h2>'
        + table(header, kept, "metrics")
        + '<p class="note">The threshold is the k-th smallest held-out normal score, '
        "k = ceil((n + 1)(1 - rate)): a new normal scan like the held-out ones is flagged with "
        "probability at most the rate (split conformal). p-values in scores.csv are "
        "(1 + #{held-out normal scores &ge; score}) / (n + 1).</p></section>"
    )
