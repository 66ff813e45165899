"""The report states what the threshold promises (alpha asked and used, n, the promise in words),
read from metrics.json; a run without that record (older runs) gets no section and still renders."""

from __future__ import annotations

import json
import warnings

import numpy as np

from pdd.evaluation.metrics import conformal_threshold
from pdd.report.html import write_report


def test_report_states_the_threshold_promise(run_folder_factory) -> None:
    run = run_folder_factory()
    metrics = json.loads((run / "metrics.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 8 normals are too few for 5 %: the point of the row
        few = conformal_threshold(np.linspace(0.1, 0.8, 8), 0.05).record()
    metrics["threshold_calibration"] = few
    metrics["scan_calibration"] = {"scan_rule": "mean-top-3", **conformal_threshold(np.arange(40.0), 0.05).record()}
    (run / "metrics.json").write_text(json.dumps(metrics))
    page = write_report(run).read_text(encoding="utf-8")
    section = page[page.index('<section id="threshold">'):]
    section = section[: section.index("</section>")]
    assert "11.1 % (asked 5 %: too few normals)" in section
    assert "needs at least 19 normals" in section
    # 40 scan scores 0..39: k = ceil(41 * 0.95) = 39, the 39th smallest is 38
    assert "scans (mean-top-3)" in section and "<td>38</td><td>5 %</td><td>40</td>" in section


def test_report_without_the_record_has_no_threshold_section(run_folder_factory) -> None:
    page = write_report(run_folder_factory()).read_text(encoding="utf-8")
    assert 'id="threshold"' not in page and 'id="metrics"' in page
