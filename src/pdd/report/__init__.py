"""Reports of a run: heatmap overlays with a fixed colour scale and the static report.html."""

from __future__ import annotations

from pdd.report.heatmap import overlay, panel, save_overlay
from pdd.report.html import write_report

__all__ = ["overlay", "panel", "save_overlay", "write_report"]
