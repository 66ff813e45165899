"""The report's gallery: the highest and lowest scoring test images, each a card with its heatmap
overlay (when one was written), score, label and file name."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pdd.report.figures import colour_scale
from pdd.report.markup import esc, note, png_data_uri
from pdd.report.run_files import ReportRun, ScoreRow

__all__ = ["GALLERY_SIZE", "gallery_section"]

GALLERY_SIZE = 8  # highest and as many lowest; the runner writes overlays for 8 of each
_THUMBNAIL_BOX = (520, 260)  # fits a 256 x 256 overlay and an image | overlay panel


def _thumbnail(folder: Path, relative: str) -> tuple[str | None, str]:
    """(data URI, "") for a heatmap PNG, or (None, reason) when it cannot be shown."""
    path = (folder / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(folder.resolve()):
        return None, "heatmap path is outside the run folder"
    if not path.is_file():
        return None, "heatmap file missing"
    try:
        with Image.open(path) as opened:
            thumbnail = opened.convert("RGB")
        thumbnail.thumbnail(_THUMBNAIL_BOX)
        buffer = io.BytesIO()
        thumbnail.save(buffer, format="PNG", optimize=True)
    except (OSError, UnidentifiedImageError):
        return None, "heatmap file unreadable"
    return png_data_uri(buffer.getvalue()), ""


def _card(folder: Path, row: ScoreRow) -> str:
    if row.heatmap:
        uri, reason = _thumbnail(folder, row.heatmap)
    else:
        uri, reason = None, "no heatmap"
    file_path, _, slice_index = row.path.partition("#")  # NIfTI slices are "path#index"
    name = "/".join(Path(file_path).parts[-2:]) + (f" #{slice_index}" if slice_index else "")
    visual = (f'<img src="{uri}" alt="heatmap of {esc(name)}">' if uri
              else f'<div class="placeholder">{esc(reason)}</div>')
    if row.label is None:
        badge = '<span class="badge unknown">unlabelled</span>'
    elif row.label == 1:
        badge = f'<span class="badge anomalous">anomalous{esc(": " + row.kind) if row.kind else ""}</span>'
    else:
        badge = '<span class="badge normal">normal</span>'
    class_text = f" · {esc(row.class_name)}" if row.class_name else ""
    return (f'<figure class="card">{visual}<figcaption><div class="score">score '
            f"{row.score:.4g}</div>{badge}{class_text}"
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
    if not any(row.heatmap for row in main.rows):
        parts.append(note("No heatmaps were written for this run; the gallery lists scores only."))
    for title, rows in (("Highest scores", highest), ("Lowest scores", lowest)):
        if rows:
            cards = "".join(_card(main.folder, row) for row in rows)
            parts.append(f'<h3>{title}</h3><div class="gallery">{cards}</div>')
    if not ranked:
        parts.append(note("scores.csv has no rows."))
    parts.append(note("Heatmaps share one colour scale fixed from held-out normal images: blue is "
                      "low, red is high, so a normal scan should look calm."))
    parts.append("</section>")
    return "".join(parts)
