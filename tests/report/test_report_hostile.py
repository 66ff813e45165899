"""`pdd report` on hand-edited or damaged run folders (issue 11 cases 7 and 21): a one-line error
naming the file (and line), or a correct report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pdd.cli import main
from pdd.errors import PDDError
from pdd.fileio import atomic_write_text
from pdd.report.html import write_report
from pdd.report.run_files import read_scores


def _report(run: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = main(["report", str(run)])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "runs",
    [{".": 5}, {"..": {}}, {"seed_0": 5}, {"../elsewhere": {}}, 5, ["seed_0"]],
    ids=["dot-to-number", "dotdot", "seed-to-number", "outside", "number", "list"],
)
def test_hand_edited_runs_is_one_line_naming_metrics(
    run_folder_factory: Any, capsys: pytest.CaptureFixture[str], runs: Any
) -> None:
    """Case 7: ``runs: {".": 5}`` used to end in an internal TypeError.
    Kills: removing the ``_check_runs`` call in ``_score_sets``."""
    run = run_folder_factory(seeds=(0, 1), heatmaps=False)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["runs"] = runs
    (run / "metrics.json").write_text(json.dumps(metrics))
    status, err = _report(run, capsys)
    assert status == 1
    assert err.startswith(f"error: {run / 'metrics.json'}: 'runs'") and err.count("\n") == 1
    assert "internal error" not in err


@pytest.mark.parametrize("extreme", [1e308, -1e308])
def test_huge_scores_give_a_report(run_folder_factory: Any, extreme: float) -> None:
    """Case 7: scores of +-1e308 (their range overflows a float) broke matplotlib ("Too many
    bins", then a singular axis transform). Now they are plotted in units of a power of ten.
    Kills: dropping the scaling in ``_histogram_section`` (LinAlgError / ValueError)."""
    run = run_folder_factory(heatmaps=False)
    lines = (run / "scores.csv").read_text().splitlines()
    for index in (1, 9):  # one normal and one anomalous row
        fields = lines[index].split(",")
        fields[2] = repr(extreme if index == 1 else -extreme)
        lines[index] = ",".join(fields)
    (run / "scores.csv").write_text("\n".join(lines) + "\n")
    page = write_report(run).read_text(encoding="utf-8")
    histograms = page.split('id="histograms"')[1].split("</section>")[0]
    assert "data:image/png;base64," in histograms
    assert read_scores(run / "scores.csv")[0].score == extreme


def test_ordinary_scores_keep_a_plain_axis() -> None:
    """The scale is 1 for ordinary scores, a power of ten that brings the largest to [1, 10) for
    huge ones (hand-computed)."""
    import numpy as np

    from pdd.report.figures import axis_scale

    assert axis_scale(np.array([0.1, 2.5])) == 1.0
    assert axis_scale(np.array([-1e308, 1e308])) == 1e308
    assert axis_scale(np.array([3.5e200, 1.0])) == 1e200


def test_truncated_last_row_is_named_with_its_line(
    run_folder_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case 21: ``path,1,2.`` without a line break at the end of scores.csv was read as 2.0.
    Kills: removing the trailing-line-break check in ``read_scores``."""
    run = run_folder_factory(heatmaps=False)
    scores = run / "scores.csv"
    scores.write_text(scores.read_text() + "/data/x.png,1,2.")
    status, err = _report(run, capsys)
    assert status == 1
    assert err == f"error: {scores}: line 16: the last row has no line break; the file looks truncated\n"


def test_a_row_with_missing_fields_is_named(run_folder_factory: Any) -> None:
    """A row cut short inside the file (fewer fields than the header).
    Kills: removing the field-count check in ``_parse_row``."""
    run = run_folder_factory(heatmaps=False)
    scores = run / "scores.csv"
    scores.write_text(scores.read_text() + "/data/x.png,1\n")
    with pytest.raises(PDDError, match=r"scores\.csv: line 16: expected 6 fields"):
        write_report(run)


def test_a_path_that_is_not_utf8_is_read_back_unchanged(run_folder_factory: Any) -> None:
    """Case 4 (scores.csv side): the writer keeps non-UTF-8 name bytes (surrogateescape); the
    report reads them back as the same path instead of failing.
    Kills: reading scores.csv with errors="strict"."""
    run = run_folder_factory(heatmaps=False)
    scores = run / "scores.csv"
    name = os.fsdecode(b"/data/caf\xe9.png")
    atomic_write_text(scores, scores.read_text() + f"{name},1,2.5,tumor,,\n")
    rows = read_scores(scores)
    assert os.fsencode(rows[-1].path) == b"/data/caf\xe9.png"
    assert write_report(run).is_file()
