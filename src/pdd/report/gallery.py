"""The report's gallery: the highest and lowest scoring test images, each a card with its heatmap
overlay (when one was written, at its own resolution), score, true label, the model's decision at
its threshold, and file name."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pdd.report.figures import colour_scale
from pdd.report.markup import esc, note, png_data_uri
from pdd.report.run_files import ReportRun, ScoreRow, threshold_for

__all__ = ["GALLERY_SIZE", "gallery_section"]

GALLERY_SIZE = 8  # highest and as many lowest; the runner writes overlays for 8 of each
# The card's image area in CSS pixels. Larger overlays are shrunk to fit (antialiased); smaller
# ones are shown at the largest whole multiple of their own size that fits, drawn with
# `image-rendering: pixelated`, so each map pixel is an exact k x k block: a 64 px map is shown
# big enough to read without the blur (invented smoothness) of stretching it to a fixed box.
_DISPLAY_BOX = (264, 220)
_NOT_DRAWN = (f"no heatmap: only the {GALLERY_SIZE} highest and {GALLERY_SIZE} lowest scores "
              "are drawn")


@dataclass(frozen=True)
class _Thumbnail:
    uri: str
    width: int  # the PNG's own size
    height: int
    scale: int  # shown at scale x its own size


def _thumbnail(folder: Path, relative: str) -> tuple[_Thumbnail | None, str]:
    """(thumbnail, "") for a heatmap PNG, or (None, reason) when it cannot be shown."""
    path = (folder / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(folder.resolve()):
        return None, "heatmap path is outside the run folder"
    if not path.is_file():
        return None, "heatmap file missing"
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        image.thumbnail(_DISPLAY_BOX)  # only ever shrinks
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
    except (OSError, UnidentifiedImageError):
        return None, "heatmap file unreadable"
    width, height = image.size
    scale = max(1, min(_DISPLAY_BOX[0] // width, _DISPLAY_BOX[1] // height))
    return _Thumbnail(png_data_uri(buffer.getvalue()), width, height, scale), ""


def _visual(folder: Path, row: ScoreRow, name: str, run_has_heatmaps: bool) -> str:
    if not row.heatmap:
        reason = _NOT_DRAWN if run_has_heatmaps else "no heatmap"
        return f'<div class="placeholder">{esc(reason)}</div>'
    thumbnail, reason = _thumbnail(folder, row.heatmap)
    if thumbnail is None:
        return f'<div class="placeholder">{esc(reason)}</div>'
    size = f"{thumbnail.width} × {thumbnail.height} px"
    shown = f"{size}, shown at {thumbnail.scale}×" if thumbnail.scale > 1 else size
    return (f'<div class="visual"><img class="heatmap" src="{thumbnail.uri}" '
            f'width="{thumbnail.width * thumbnail.scale}" '
            f'height="{thumbnail.height * thumbnail.scale}" '
            f'alt="heatmap of {esc(name)}" title="{esc(shown)}"></div>')


def _truth_badge(row: ScoreRow) -> str:
    if row.label is None:
        return '<span class="badge unknown">truth: unlabelled</span>'
    if row.label == 1:
        kind = f" ({row.kind})" if row.kind else ""
        return f'<span class="badge anomalous">truth: anomalous{esc(kind)}</span>'
    return '<span class="badge normal">truth: normal</span>'


def _decision_badge(score: float, threshold: float | None) -> str:
    """The model's decision at its threshold: anomalous iff score > threshold (the rule of
    ``pdd.prediction.rules.decision`` and of sensitivity/specificity in metrics.json)."""
    if threshold is None:
        return ('<span class="badge unknown decision" title="metrics.json has no threshold">'
                "decision: no threshold</span>")
    flagged = score > threshold
    word, sign = ("anomalous", ">") if flagged else ("normal", "≤")
    return (f'<span class="badge {word} decision" title="score {score:.4g} {sign} threshold '
            f'{threshold:.4g}">decision: {word}</span>')


def _card(run: ReportRun, row: ScoreRow, run_has_heatmaps: bool) -> str:
    file_path, _, slice_index = row.path.partition("#")  # NIfTI slices are "path#index"
    name = "/".join(Path(file_path).parts[-2:]) + (f" #{slice_index}" if slice_index else "")
    threshold = threshold_for(run.main_metrics, run.main.folder, row.class_name)
    class_text = f'<span class="class">{esc(row.class_name)}</span>' if row.class_name else ""
    return (f'<figure class="card">{_visual(run.main.folder, row, name, run_has_heatmaps)}'
            f'<figcaption><div class="score">score {row.score:.4g}</div>'
            f'<div class="badges">{_truth_badge(row)}{_decision_badge(row.score, threshold)}'
            f"{class_text}</div>"
            f'<div class="path" title="{esc(row.path)}">{esc(name)}</div></figcaption></figure>')


def gallery_section(run: ReportRun) -> str:
    main, metrics = run.main, run.main_metrics
    parts = ['<section id="gallery"><h2>Gallery</h2>']
    if main.name:
        parts.append(note(f"From {main.name} (the first seed)."))
    parts.append(colour_scale(metrics))
    ranked = sorted(main.rows, key=lambda row: row.score, reverse=True)
    highest = ranked[:GALLERY_SIZE]
    lowest = [row for row in reversed(ranked[GALLERY_SIZE:])][:GALLERY_SIZE]
    run_has_heatmaps = any(row.heatmap for row in main.rows)
    if run_has_heatmaps:
        parts.append(note(f"Heatmaps are drawn for the {GALLERY_SIZE} highest and {GALLERY_SIZE} "
                          "lowest scoring test images of each model only; the heatmap column of "
                          "scores.csv is empty for the others."))
    else:
        parts.append(note("No heatmaps were written for this run; the gallery lists scores only."))
    parts.append(note("Each card shows the true label (truth) and the model's decision at its "
                      "threshold (anomalous when score > threshold); they differ where the model "
                      "is wrong."))
    for title, rows in (("Highest scores", highest), ("Lowest scores", lowest)):
        if rows:
            cards = "".join(_card(run, row, run_has_heatmaps) for row in rows)
            parts.append(f'<h3>{title}</h3><div class="gallery">{cards}</div>')
    if not ranked:
        parts.append(note("scores.csv has no rows."))
    parts.append(note("Heatmaps share one colour scale fixed from held-out normal images: blue is "
                      "low, red is high, so a normal scan should look calm."))
    parts.append("</section>")
    return "".join(parts)
