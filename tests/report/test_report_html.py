"""report.html: content, error handling, and rendering in headless Chromium."""

from __future__ import annotations

import json
import re

import pytest

from pdd.errors import PDDError
from pdd.report.html import write_report

EXPECTED_SECTIONS = ["settings", "metrics", "curves", "histograms", "gallery", "training", "skipped"]
# curves, histograms, colour scale, training losses, and 14 gallery heatmaps (8 highest, 6 lowest)
FIGURES, HEATMAPS = 4, 14


def data_uri_images(page: str) -> list[str]:
    return re.findall(r'<img[^>]*src="(data:image/png;base64,[^"]+)"', page)


# --------------------------------------------------------------------------- in the browser


def test_report_renders_with_every_image_loaded(run_folder_factory, chromium, tmp_path) -> None:
    run = run_folder_factory()
    report = write_report(run)
    assert report == run / "report.html"
    facts = chromium(report, screenshot=tmp_path / "report.png")
    assert facts["broken"] == []
    assert len(facts["images"]) == FIGURES + HEATMAPS
    assert all(image["naturalWidth"] > 0 for image in facts["images"])
    assert facts["sections"] == EXPECTED_SECTIONS
    assert facts["scripts"] == 0 and facts["external"] == []
    assert "RANDOM teacher weights" in facts["text"]
    assert "Pixel AUPRO" in facts["text"] and "not an image file" in facts["text"]
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_broken_image_is_detected(run_folder_factory, chromium) -> None:
    report = write_report(run_folder_factory())
    page = report.read_text(encoding="utf-8")
    first = data_uri_images(page)[0]
    report.write_text(page.replace(first, "data:image/png;base64,bm90IGEgUE5H", 1), encoding="utf-8")
    facts = chromium(report)
    assert len(facts["broken"]) == 1
    assert facts["broken"][0]["alt"].startswith("ROC and precision-recall curves")


def test_multi_seed_multi_class_report_renders(run_folder_factory, chromium) -> None:
    run = run_folder_factory(seeds=(0, 1, 2), classes=("brain", "liver"))
    facts = chromium(write_report(run))
    # per-model pieces (training curve, colour scale) live in the class sub-runs' own reports
    assert facts["broken"] == []
    assert facts["sections"] == [s for s in EXPECTED_SECTIONS if s != "training"]
    text = facts["text"]
    assert "Mean ± std over 3 seeds" in text and "seed_2" in text
    assert "Per class" in text and "Mean over classes" in text
    assert "From seed_0 (the first seed)." in text
    curves = facts["images"][0]["alt"]  # one ROC line per seed and class
    assert curves.endswith("seed_0 / brain, seed_0 / liver, seed_1 / brain, seed_1 / liver, "
                           "seed_2 / brain, seed_2 / liver")


# --------------------------------------------------------------------------- content


def test_report_is_self_contained_and_atomic(run_folder_factory) -> None:
    run = run_folder_factory()
    page = write_report(run).read_text(encoding="utf-8")
    assert "<script" not in page
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert len(data_uri_images(page)) == FIGURES + HEATMAPS
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []


def test_metrics_shown_in_percent_with_std(run_folder_factory) -> None:
    run = run_folder_factory(seeds=(0, 1))
    metrics = json.loads((run / "metrics.json").read_text())
    page = write_report(run).read_text(encoding="utf-8")
    mean, std = metrics["image_auroc"], metrics["std"]["image_auroc"]
    assert f"{100 * mean:.1f} ± {100 * std:.1f}" in page


def test_missing_heatmaps_render_with_a_note(run_folder_factory) -> None:
    run = run_folder_factory(heatmaps=False)
    page = write_report(run).read_text(encoding="utf-8")
    assert "No heatmaps were written for this run" in page
    assert len(data_uri_images(page)) == FIGURES
    assert page.count('class="placeholder">no heatmap<') == HEATMAPS


def test_a_missing_heatmap_file_and_config_are_noted(run_folder_factory) -> None:
    run = run_folder_factory()
    (run / "config.yaml").unlink()
    highest = max(
        (line.split(",") for line in (run / "scores.csv").read_text().splitlines()[1:]),
        key=lambda fields: float(fields[2]),
    )
    (run / highest[5]).unlink()
    page = write_report(run).read_text(encoding="utf-8")
    assert "config.yaml was not found" in page
    assert 'class="placeholder">heatmap file missing<' in page


def test_text_from_the_run_is_escaped(run_folder_factory) -> None:
    run = run_folder_factory(heatmaps=False)
    scores = run / "scores.csv"
    lines = scores.read_text().splitlines()
    fields = lines[1].split(",")
    fields[0], fields[2] = "/data/<b>evil</b>.png", "99"
    lines[1] = ",".join(fields)
    scores.write_text("\n".join(lines) + "\n")
    page = write_report(run).read_text(encoding="utf-8")
    assert "&lt;b&gt;evil&lt;/b&gt;.png" in page and "<b>evil" not in page


@pytest.mark.parametrize("missing", ["metrics.json", "scores.csv"])
def test_missing_required_file_names_it(run_folder_factory, missing) -> None:
    run = run_folder_factory(heatmaps=False)
    (run / missing).unlink()
    with pytest.raises(PDDError, match=re.escape(str(run / missing))):
        write_report(run)


def test_missing_seed_scores_names_the_file(run_folder_factory) -> None:
    run = run_folder_factory(seeds=(0, 1), heatmaps=False)
    (run / "seed_1" / "scores.csv").unlink()
    with pytest.raises(PDDError, match=re.escape(str(run / "seed_1" / "scores.csv"))):
        write_report(run)


def test_bad_scores_line_is_reported(run_folder_factory) -> None:
    run = run_folder_factory(heatmaps=False)
    scores = run / "scores.csv"
    scores.write_text(scores.read_text() + "/x.png,1,not-a-number,tumor,,\n")
    with pytest.raises(PDDError, match=r"scores\.csv: line 16: score 'not-a-number'"):
        write_report(run)


def test_not_a_folder(tmp_path) -> None:
    with pytest.raises(PDDError, match="not a run folder"):
        write_report(tmp_path / "nowhere")


def test_report_without_anomalous_images_explains_missing_curves(run_folder_factory) -> None:
    run = run_folder_factory(heatmaps=False)
    scores = run / "scores.csv"
    lines = [line for line in scores.read_text().splitlines() if ",0," in line or "path," in line]
    scores.write_text("\n".join(lines) + "\n")
    page = write_report(run).read_text(encoding="utf-8")
    assert "No curve for test set: it needs labelled normal and anomalous test images." in page


def test_per_class_thresholds_come_from_the_class_sub_runs(run_folder_factory) -> None:
    run = run_folder_factory(classes=("brain", "liver"), heatmaps=False)
    assert "threshold" not in json.loads((run / "metrics.json").read_text())["classes"]["brain"]
    page = write_report(run).read_text(encoding="utf-8")
    assert "no threshold line is drawn" not in page
    (run / "liver" / "metrics.json").unlink()
    page = write_report(run).read_text(encoding="utf-8")
    assert "metrics.json has no threshold: no threshold line is drawn." in page


def test_training_section_explains_a_zero_diversity_hinge(run_folder_factory) -> None:
    """loss_div reads 0 when its margins are met: the report says so, and only when it is shown."""
    run = run_folder_factory(heatmaps=False)
    hinge = "loss_div (the diversity loss) is a hinge: it reads 0"
    assert hinge not in write_report(run).read_text(encoding="utf-8")
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["train_history"] = [{"epoch": e, "loss": 1.0 / e, "loss_s2": 0.9 / e, "loss_div": 0.0}
                                for e in (1, 2, 3)]
    (run / "metrics.json").write_text(json.dumps(metrics))
    page = write_report(run).read_text(encoding="utf-8")
    training = page[page.index('<section id="training">'):]
    assert hinge in training[: training.index("</section>")]
