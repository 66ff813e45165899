"""``report.html`` of a ``pdd predict`` run: what was scored with which checkpoint, and the scan
viewer (``pdd.report.scan_viewer``). Self-contained, like the fit/test report."""

from __future__ import annotations

import json
from pathlib import Path

from pdd.fileio import atomic_write_text
from pdd.report.markup import esc, table
from pdd.report.scan_viewer import scan_viewer_section

__all__ = ["write_predict_report"]

_SUMMARY = (
    ("checkpoint", "checkpoint"),
    ("inputs", "inputs"),
    ("images and slices scored", "scored"),
    ("flagged anomalous", "anomalous"),
    ("scans (volumes, series)", "volumes"),
    ("skipped", "skipped"),
    ("decision threshold", "threshold"),
    ("scan score rule", "scan_rule"),
)


def write_predict_report(folder: Path) -> Path:
    """Write ``folder/report.html`` from the run's predict.json, volumes.csv and viewer frames."""
    record = json.loads((folder / "predict.json").read_text(encoding="utf-8"))
    stats = record.get("map_stats")
    scale = None if not stats else (float(stats["vmin"]), float(stats["vmax"]))
    rows = []
    for label, key in _SUMMARY:
        value = record.get(key)
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        rows.append((esc(label), esc("none" if value is None else value)))
    viewer = scan_viewer_section(folder, scale)
    if not viewer:
        viewer = '<p class="note">No scans with heatmaps to show (single images only, or a checkpoint without a colour scale).</p>'
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pdd predict: {esc(folder.name)}</title>
<style>body {{ font-family: sans-serif; margin: 1.5em; }} td, th {{ padding: 0.2em 0.8em; text-align: left; }}</style>
</head><body>
<h1>pdd predict: {esc(folder.name)}</h1>
<section id="summary"><h2>Run</h2>{table(("", ""), rows)}
<p>Per image and slice: scores.csv; per scan: volumes.csv (with p-values when the checkpoint keeps
normal scores).</p></section>
{viewer}
</body></html>
"""
    return atomic_write_text(folder / "report.html", page)
