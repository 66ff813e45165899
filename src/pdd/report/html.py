"""A run folder's ``report.html``: one static, self-contained file.

Everything is inlined (CSS, figures and heatmaps as base64 PNG data URIs), the only JavaScript is
the scan viewer's inline script (volume datasets only), and nothing is fetched, so the report opens
offline, from an e-mail attachment or a PACS share.

Inputs (see docs/architecture.md, "Run folder schema"): ``metrics.json`` and ``scores.csv`` are
required; ``config.yaml`` and the heatmap PNGs named in ``scores.csv`` are optional and their absence
is noted in the report. For a multi-seed run (``metrics.json`` with ``runs``) the ROC/PR curves show
one line per seed, read from each ``seed_<n>/scores.csv``; the score histograms and the gallery use
the FIRST seed's folder, as the report states.

The page is the sections of ``SECTIONS`` in order; each builder takes the run's files
(``ReportRun``) and returns one ``<section id=...>`` or "" when it has nothing to show. A new
section is one function of that shape added to the list.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pdd
from pdd.fileio import atomic_write_text
from pdd.report.figures import curves_section, histogram_section, training_section
from pdd.report.gallery import gallery_section
from pdd.report.markup import esc
from pdd.report.run_files import ReportRun, read_run
from pdd.report.scan_viewer import run_scans_section
from pdd.report.style import CSS
from pdd.report.tables import metrics_section, settings_section, skipped_section
from pdd.report.threshold_section import threshold_section

__all__ = ["REPORT_NAME", "SECTIONS", "write_report"]

REPORT_NAME = "report.html"

SectionBuilder = Callable[[ReportRun], str]

SECTIONS: list[SectionBuilder] = [
    settings_section,
    metrics_section,
    threshold_section,
    curves_section,
    histogram_section,
    gallery_section,
    run_scans_section,
    training_section,
    skipped_section,
]


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Build ``run_dir/report.html`` (atomically) from the run folder's files; returns its path."""
    run = read_run(Path(run_dir))
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"Anomaly detection report — {run.folder.resolve().name}"
    body = "".join(section(run) for section in SECTIONS)
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>PDD toolkit {esc(pdd.__version__)} · generated "
        f"{generated} · preset {esc(run.metrics.get('preset', 'unknown'))}</p></header>"
        f"<main>{body}</main><footer>Static report: all figures are embedded; it needs no "
        "network and no server.</footer></body></html>\n"
    )
    return atomic_write_text(run.folder / REPORT_NAME, page)
