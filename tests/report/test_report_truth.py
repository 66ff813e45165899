"""The report tells the truth (issue 10): ``report.html`` of a real ``pdd fit`` run with two seeds
and two classes is parsed with ``html.parser`` (not matched against the report's own formatting
code), and every number it shows - metric tables, per-class table, settings, gallery scores and
labels - is checked against ``metrics.json`` and ``scores.csv``; ``metrics.json`` itself is checked
against the sub-runs' own files (mean and std over seeds, mean over classes).

The run is a real ``fit`` (data, split, training, evaluation, aggregation, report) with the tiny
stand-in model of ``tests/engine/engine_fakes.py``: the report cannot tell models apart, and the
real presets' numbers are guarded in tests/engine/test_engine_protocol.py.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
import engine_fakes

from pdd.data.synthetic import make_phantom_dataset
from pdd.training.runner import FitOptions, fit

CLASSES = ("brain", "liver")
SEEDS = (0, 1)
FRACTIONS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap",
             "pixel_f1_max", "pixel_aupro", "sensitivity", "specificity")  # fmt: skip
# A metric row's label starts with these words (the report's wording, written out here).
LABELS = {
    "Image AUROC": "image_auroc", "Image AP": "image_ap", "Image F1-max": "image_f1_max",
    "Pixel AUROC": "pixel_auroc", "Pixel AP": "pixel_ap", "Pixel F1-max": "pixel_f1_max",
    "Pixel AUPRO": "pixel_aupro", "Sensitivity": "sensitivity", "Specificity": "specificity",
    "Threshold": "threshold",
}  # fmt: skip


class ReportParser(HTMLParser):
    """Tables (with the section and heading above them) and gallery cards of a report."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[str, Any]] = []
        self.cards: list[dict[str, str]] = []
        self.heading = ""
        self.section = ""
        self._text: list[str] | None = None
        self._row: list[str] | None = None
        self._card: dict[str, str] | None = None
        self._field = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag == "section":
            self.section = attributes.get("id") or ""
        elif tag in ("h2", "h3", "td", "th"):
            self._text = []
        elif tag == "table":
            self.tables.append(
                {"section": self.section, "heading": self.heading, "rows": []}
            )
        elif tag == "tr":
            self._row = []
        elif tag == "figure" and "card" in classes:
            self._card = {"score": "", "badge": "", "decision": "", "path": ""}
        elif self._card is not None and "decision" in classes:
            self._field = "decision"
        elif self._card is not None and ("score" in classes or "badge" in classes):
            self._field = "score" if "score" in classes else "badge"
        elif self._card is not None and "path" in classes:
            self._card["path"] = attributes.get("title") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h2", "h3") and self._text is not None:
            self.heading = "".join(self._text).strip()
            self._text = None
        elif tag in ("td", "th") and self._text is not None and self._row is not None:
            self._row.append("".join(self._text).strip())
            self._text = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1]["rows"].append(self._row)
            self._row = None
        elif tag == "figure" and self._card is not None:
            self.cards.append(self._card)
            self._card = None
        elif tag in ("div", "span"):
            self._field = ""

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)
        if self._card is not None and self._field:
            self._card[self._field] += data


def metric_key(label: str) -> str:
    matches = [
        key
        for words, key in LABELS.items()
        if label == words or label.startswith(words + " ")
    ]
    assert len(matches) == 1, f"unknown metric row {label!r}"
    return matches[0]


def shown(cell: str) -> tuple[float, float | None]:
    """(value, std or None) of a table cell such as ``85.3 ± 2.1``."""
    value, _, std = cell.partition("±")
    return float(value), (float(std) if std.strip() else None)


def check_cell(cell: str, key: str, value: float, std: float | None = None) -> None:
    """The cell shows ``value`` (and ``std``): fractions in percent to 0.1, thresholds to 4 digits."""
    number, spread = shown(cell)
    if key in FRACTIONS:
        assert abs(number - 100 * value) <= 0.05 + 1e-9, (key, cell, value)
    else:
        assert math.isclose(number, value, rel_tol=5e-4), (key, cell, value)
    if std is None:
        assert spread is None, (key, cell)
    elif key in FRACTIONS:
        assert spread is not None and abs(spread - 100 * std) <= 0.05 + 1e-9, (
            key,
            cell,
            std,
        )
    else:
        assert spread is not None and math.isclose(spread, std, rel_tol=5e-2), (
            key,
            cell,
            std,
        )


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``fit`` over a two-class Uni-Medical phantom set (lesion masks) with seeds 0 and 1."""
    from pdd import models
    from pdd.training import runner

    folder = tmp_path_factory.mktemp("report_truth")
    data = make_phantom_dataset(folder / "data", "unimedical", classes=list(CLASSES), n_train=12,
                                n_test_normal=4, n_test_abnormal=4, size=64)  # fmt: skip
    patch = pytest.MonkeyPatch()
    create_model = engine_fakes.fake_router(models.create_model)
    patch.setattr(models, "create_model", create_model)
    patch.setattr(runner, "create_model", create_model)
    try:
        return fit(FitOptions(data=data, out=folder / "run", preset="fake", teachers="random",
                              seeds=list(SEEDS), epochs=1, accelerator="cpu", progress=False))  # fmt: skip
    finally:
        patch.undo()


def test_metrics_json_is_the_mean_of_its_sub_runs(run: Path) -> None:
    """The aggregate the report shows is true to the sub-runs: each seed's record is its own
    metrics.json, the top level is their mean and (population) std, and each class's values are
    the mean over seeds of that class's sub-run."""
    metrics = read_json(run / "metrics.json")
    assert metrics["seeds"] == list(SEEDS) and metrics["mean_over"] == "seeds"
    seeds = {seed: read_json(run / f"seed_{seed}" / "metrics.json") for seed in SEEDS}
    classes = {
        (seed, name): read_json(run / f"seed_{seed}" / name / "metrics.json")
        for seed in SEEDS
        for name in CLASSES
    }
    for key in FRACTIONS:
        for seed in SEEDS:
            assert metrics["runs"][f"seed_{seed}"][key] == seeds[seed][key], key
            assert seeds[seed][key] == pytest.approx(
                np.mean([classes[seed, n][key] for n in CLASSES]), abs=1e-12
            )
        values = [seeds[seed][key] for seed in SEEDS]
        assert metrics[key] == pytest.approx(np.mean(values), abs=1e-12), key
        assert metrics["std"][key] == pytest.approx(np.std(values), abs=1e-12), key
        for name in CLASSES:
            assert metrics["classes"][name][key] == pytest.approx(
                np.mean([classes[s, name][key] for s in SEEDS]), abs=1e-12
            )


def test_every_number_in_the_report_is_in_metrics_json(run: Path) -> None:
    """Metric table (mean ± std and one column per seed), per-class table (each class and the
    mean over classes) and the numeric settings shown equal metrics.json; every metric of
    metrics.json is shown."""
    metrics = read_json(run / "metrics.json")
    parser = ReportParser()
    parser.feed((run / "report.html").read_text(encoding="utf-8"))
    tables = [t for t in parser.tables if t["section"] == "metrics"]
    assert len(tables) == 2, [t["heading"] for t in parser.tables]

    header, *rows = tables[0]["rows"]
    assert header[2:] == [f"seed_{seed}" for seed in SEEDS]
    assert [int(word) for word in header[1].split() if word.isdigit()] == [len(SEEDS)]
    keys = [metric_key(row[0]) for row in rows]
    assert set(keys) == {key for key in LABELS.values() if key in metrics}
    assert set(FRACTIONS) <= set(keys)
    for key, row in zip(keys, rows):
        check_cell(row[1], key, metrics[key], metrics["std"][key])
        for cell, seed in zip(row[2:], SEEDS, strict=True):
            check_cell(cell, key, metrics["runs"][f"seed_{seed}"][key])

    header, *rows = tables[1]["rows"]
    assert tables[1]["heading"] == "Per class"
    keys = [metric_key(label) for label in header[1:]]
    assert set(FRACTIONS) <= set(keys)
    assert [row[0] for row in rows] == [*CLASSES, "Mean over classes"]
    for row in rows:
        source = (
            metrics if row[0] == "Mean over classes" else metrics["classes"][row[0]]
        )
        for cell, key in zip(row[1:], keys, strict=True):
            check_cell(cell, key, source[key])

    (settings,) = [t for t in parser.tables if t["section"] == "settings"]
    values = {row[0]: row[1] for row in settings["rows"][1:]}
    assert [int(v) for v in values["Seeds"].split(",")] == metrics["seeds"]
    assert int(values["Image size"]) == metrics["image_size"]
    assert int(values["Epochs"]) == metrics["epochs"]
    assert values["Preset"] == metrics["preset"]


def test_gallery_scores_and_labels_are_the_first_seeds(run: Path) -> None:
    """Every gallery card shows the score, true label and decision of its image in seed 0's
    scores.csv (the decision at its class model's threshold in seed_0/<class>/metrics.json), and
    the cards are that run's highest and lowest scores."""
    with (run / "seed_0" / "scores.csv").open(newline="", encoding="utf-8") as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    parser = ReportParser()
    parser.feed((run / "report.html").read_text(encoding="utf-8"))
    assert parser.cards
    ranked = sorted(rows, key=lambda path: float(rows[path]["score"]), reverse=True)
    count = len(parser.cards) // 2
    assert {card["path"] for card in parser.cards} == set(ranked[:count]) | set(
        ranked[-count:]
    )
    for card in parser.cards:
        row = rows[card["path"]]
        number = float(card["score"].split()[-1])
        assert math.isclose(number, float(row["score"]), rel_tol=5e-4), (
            card,
            row["score"],
        )
        assert card["badge"].startswith(
            "truth: anomalous" if row["label"] == "1" else "truth: normal"
        ), card
        threshold = read_json(run / "seed_0" / row["class_name"] / "metrics.json")["threshold"]
        expected = "anomalous" if float(row["score"]) > threshold else "normal"
        assert card["decision"] == f"decision: {expected}", (card, threshold)
