"""The gallery says what it shows (issue 23, point 4): each card's true label and the model's
decision at the threshold, both labelled; heatmaps at their own resolution (never stretched);
and a reason on every card without a heatmap. ``report.html`` is parsed with ``html.parser`` and
checked against ``metrics.json`` and ``scores.csv``."""

from __future__ import annotations

import base64
import csv
import io
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pdd.prediction.rules import decision
from pdd.report.html import write_report


class GalleryParser(HTMLParser):
    """Gallery cards: path, score, truth and decision badges, heatmap <img> or placeholder."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[dict[str, Any]] = []
        self.styles = ""
        self._card: dict[str, Any] | None = None
        self._field = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag == "style":
            self._in_style = True
        elif tag == "figure" and "card" in classes:
            self._card = {"score": "", "truth": "", "decision": "", "placeholder": "", "img": None}
        elif self._card is None:
            return
        elif tag == "img":
            self._card["img"] = attributes
        elif "path" in classes:
            self._card["path"] = attributes.get("title") or ""
        elif "decision" in classes:
            self._field = "decision"
        elif "badge" in classes:
            self._field = "truth"
        elif "score" in classes or "placeholder" in classes:
            self._field = classes[0]

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False
        elif tag == "figure" and self._card is not None:
            self.cards.append(self._card)
            self._card = None
        elif tag in ("div", "span"):
            self._field = ""

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles += data
        elif self._card is not None and self._field:
            self._card[self._field] += data


def cards_of(run: Path) -> GalleryParser:
    parser = GalleryParser()
    parser.feed(write_report(run).read_text(encoding="utf-8"))
    assert parser.cards
    return parser


def read_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "scores.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_rows(folder: Path, rows: list[dict[str, str]]) -> None:
    with (folder / "scores.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def threshold_of(folder: Path) -> float | None:
    return json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["threshold"]


def expected_truth(row: dict[str, str]) -> str:
    return f"truth: anomalous ({row['kind']})" if row["label"] == "1" else "truth: normal"


# --------------------------------------------------------------------------- decisions


def test_badges_show_the_true_label_and_the_decision_at_the_threshold(run_folder_factory) -> None:
    """A normal image above the threshold (a false alarm), an anomalous one below it (a miss) and
    one exactly at it (not flagged: the rule is score > threshold) each show both badges.
    Kills: badging the decision from the label; flagging at score >= threshold; a threshold read
    from anywhere but metrics.json."""
    run = run_folder_factory(heatmaps=False)
    threshold = threshold_of(run)
    rows = read_rows(run)
    normal = [row for row in rows if row["label"] == "0"]
    anomalous = [row for row in rows if row["label"] == "1"]
    normal[0]["score"] = repr(threshold + 1.0)  # false alarm, among the highest scores
    anomalous[0]["score"] = repr(threshold - 5.0)  # missed, the lowest score
    normal[1]["score"] = repr(threshold)  # exactly at the threshold
    write_rows(run, rows)
    by_path = {row["path"]: row for row in rows}

    cards = cards_of(run).cards
    for card in cards:
        row = by_path[card["path"]]
        assert card["truth"] == expected_truth(row), card
        flagged = float(row["score"]) > threshold
        assert card["decision"] == "decision: " + ("anomalous" if flagged else "normal"), card
        assert card["decision"] == "decision: " + decision(float(row["score"]), threshold)
    shown = {card["path"]: card for card in cards}
    assert shown[normal[0]["path"]]["decision"] == "decision: anomalous"
    assert shown[normal[0]["path"]]["truth"] == "truth: normal"
    assert shown[anomalous[0]["path"]]["decision"] == "decision: normal"
    assert shown[anomalous[0]["path"]]["truth"].startswith("truth: anomalous")
    assert shown[normal[1]["path"]]["decision"] == "decision: normal"


def test_each_class_is_decided_at_its_own_models_threshold(run_folder_factory) -> None:
    """Separate models per class: each card's decision uses ``<class>/metrics.json``'s threshold.
    Kills: one threshold for every class."""
    run = run_folder_factory(classes=("brain", "liver"), heatmaps=False)
    thresholds = {name: threshold_of(run / name) for name in ("brain", "liver")}
    assert thresholds["brain"] != thresholds["liver"]
    rows = read_rows(run)
    between = sum(thresholds.values()) / 2  # flagged by one class's model, not by the other's
    for row in rows:  # the two lowest scores, one per class, are `between`; the rest far above
        row["score"] = repr(float(row["score"]) + 100.0)
    rows[0]["score"] = rows[-1]["score"] = repr(between)
    assert {rows[0]["class_name"], rows[-1]["class_name"]} == {"brain", "liver"}
    write_rows(run, rows)
    by_path = {row["path"]: row for row in rows}
    decided = set()
    for card in cards_of(run).cards:
        row = by_path[card["path"]]
        verdict = decision(float(row["score"]), thresholds[row["class_name"]])
        assert card["decision"] == f"decision: {verdict}", (card, row)
        if float(row["score"]) == between:
            decided.add((row["class_name"], verdict))
    assert {"anomalous", "normal"} <= {verdict for _, verdict in decided}


def test_without_a_threshold_the_decision_says_so(run_folder_factory) -> None:
    run = run_folder_factory(heatmaps=False)
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    metrics["threshold"] = None
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    cards = cards_of(run).cards
    assert {card["decision"] for card in cards} == {"decision: no threshold"}
    by_path = {row["path"]: row for row in read_rows(run)}
    assert all(card["truth"] == expected_truth(by_path[card["path"]]) for card in cards)


# --------------------------------------------------------------------------- heatmaps


def _decoded(uri: str) -> np.ndarray:
    data = base64.b64decode(uri.removeprefix("data:image/png;base64,"))
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_small_heatmaps_are_shown_at_a_whole_multiple_of_their_own_size(run_folder_factory) -> None:
    """The inlined PNG holds the overlay's own pixels, and the page draws it k times its size
    (k a whole number) with pixelated rendering: no blurry stretch to a fixed box.
    Kills: a fixed 220 px box (the old CSS), resampling the PNG, a fractional scale."""
    run = run_folder_factory()
    by_path = {row["path"]: row for row in read_rows(run)}
    parser = cards_of(run)
    assert "image-rendering:pixelated" in parser.styles.replace(" ", "")
    scales = set()
    for card in parser.cards:
        image = card["img"]
        assert image is not None, card
        pixels = _decoded(image["src"])
        source = np.asarray(Image.open(run / by_path[card["path"]]["heatmap"]).convert("RGB"))
        np.testing.assert_array_equal(pixels, source)
        height, width = pixels.shape[:2]
        scale = int(image["width"]) // width
        assert scale >= 1 and int(image["width"]) == scale * width
        assert int(image["height"]) == scale * height, image
        assert int(image["width"]) <= 264 and int(image["height"]) <= 220
        scales.add((width, height, scale))
    # the fake folder's overlays: 64 x 64 maps (shown 3x) and 132 x 64 image | map panels (2x)
    assert scales == {(64, 64, 3), (132, 64, 2)}


def test_large_heatmaps_are_shrunk_to_fit_never_stretched(run_folder_factory) -> None:
    run = run_folder_factory()
    rows = read_rows(run)
    top = max(rows, key=lambda row: float(row["score"]))
    Image.new("RGB", (600, 300), (200, 30, 30)).save(run / top["heatmap"])
    card = next(c for c in cards_of(run).cards if c["path"] == top["path"])
    pixels = _decoded(card["img"]["src"])
    assert pixels.shape[:2] == (132, 264)
    assert (int(card["img"]["width"]), int(card["img"]["height"])) == (264, 132)


def test_cards_without_a_heatmap_say_why(run_folder_factory) -> None:
    """Kills: an empty box (the old "no heatmap" without the reason)."""
    run = run_folder_factory()
    rows = read_rows(run)
    top = max(rows, key=lambda row: float(row["score"]))
    top["heatmap"] = ""
    write_rows(run, rows)
    parser = GalleryParser()
    page = write_report(run).read_text(encoding="utf-8")
    parser.feed(page)
    card = next(c for c in parser.cards if c["path"] == top["path"])
    assert card["img"] is None
    assert card["placeholder"] == ("no heatmap: only the 8 highest and 8 lowest scores are drawn")
    assert "Heatmaps are drawn for the 8 highest and 8 lowest scoring test images" in page


@pytest.mark.parametrize("seeds", [(0,), (0, 1)])
def test_multi_seed_gallery_decides_at_the_first_seeds_threshold(run_folder_factory, seeds) -> None:
    run = run_folder_factory(seeds=seeds, heatmaps=False)
    folder = run if len(seeds) == 1 else run / "seed_0"
    threshold = threshold_of(folder)
    by_path = {row["path"]: row for row in read_rows(folder)}
    for card in cards_of(run).cards:
        verdict = decision(float(by_path[card["path"]]["score"]), threshold)
        assert card["decision"] == f"decision: {verdict}"
