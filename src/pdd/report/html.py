"""A run folder's ``report.html``: one static, self-contained file.

Everything is inlined (CSS, figures and heatmaps as base64 PNG data URIs), there is no JavaScript,
and nothing is fetched, so the report opens offline, from an e-mail attachment or a PACS share.

Inputs (see docs/architecture.md, "Run folder schema"): ``metrics.json`` and ``scores.csv`` are
required; ``config.yaml`` and the heatmap PNGs named in ``scores.csv`` are optional and their absence
is noted in the report. For a multi-seed run (``metrics.json`` with ``runs``) the ROC/PR curves show
one line per seed, read from each ``seed_<n>/scores.csv``; the score histograms and the gallery use
the FIRST seed's folder, as the report states.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, UnidentifiedImageError
from sklearn.metrics import (
    auc,
    average_precision_score,
    precision_recall_curve,
    roc_curve,
)

import pdd
from pdd.errors import PDDError
from pdd.fileio import TEXT_ERRORS, atomic_write_text
from pdd.report.heatmap import DEFAULT_COLORMAP

__all__ = ["REPORT_NAME", "ScoreRow", "read_scores", "write_report"]

REPORT_NAME = "report.html"
GALLERY_SIZE = 8  # highest and as many lowest; the runner writes overlays for 8 of each
_PLAIN_AXIS_LIMIT = 1e100  # larger scores are plotted in units of a power of ten
_THUMBNAIL_BOX = (520, 260)  # fits a 256 x 256 overlay and an image | overlay panel

# Display order and names of metrics.json keys. Fractions are shown in percent.
_METRIC_LABELS: dict[str, str] = {
    "image_auroc": "Image AUROC",
    "image_ap": "Image AP",
    "image_f1_max": "Image F1-max",
    "pixel_auroc": "Pixel AUROC",
    "pixel_ap": "Pixel AP",
    "pixel_f1_max": "Pixel F1-max",
    "pixel_aupro": "Pixel AUPRO (FPR ≤ 0.3)",
    "sensitivity": "Sensitivity at threshold",
    "specificity": "Specificity at threshold",
    "threshold": "Threshold (score)",
}
_NOT_PERCENT = {"threshold"}
_PROVENANCE_LABELS: dict[str, str] = {
    "preset": "Preset",
    "teachers": "Teacher weights",
    "seed": "Seed",
    "seeds": "Seeds",
    "class_name": "Class",
    "dataset": "Dataset",
    "format": "Dataset format",
    "split": "Split manifest",
    "image_size": "Image size",
    "epochs": "Epochs",
    "joint": "One model for every class (joint)",
    "batch_size": "Batch size (per device)",
    "accumulate_grad_batches": "Batches accumulated per optimiser step",
    "world_size": "Devices",
    "global_batch_size": "Global batch (per optimiser step)",
    "precision": "Precision",
    "num_train": "Training images",
    "num_holdout": "Held-out normal images (threshold)",
    "holdout_fraction": "Holdout fraction",
    "num_test": "Test images",
    "group_by": "Groups from file names (regex)",
    "groups": "Groups (patients, volumes, series) per set",
    "map_stats_from": "Heatmap colour scale from",
    "skipped_count": "Skipped files",
    "final_train_loss": "Final training loss",
    "timing": "Timing (s)",
    "pdd_version": "PDD version",
}
_NORMAL_COLOUR = "#2b6cb0"
_ANOMALOUS_COLOUR = "#c53030"
_LINE_COLOURS = ["#2b6cb0", "#c53030", "#2f855a", "#b7791f", "#6b46c1", "#2c7a7b", "#97266d"]
_LINE_STYLES = ["-", "--", ":", "-."]


@dataclass(frozen=True)
class ScoreRow:
    """One line of ``scores.csv``; ``label`` is None when the row has no ground truth."""

    path: str
    label: int | None
    score: float
    kind: str
    class_name: str
    heatmap: str


@dataclass(frozen=True)
class _ScoreSet:
    """The scores of one run folder (a seed's sub-folder for multi-seed runs)."""

    name: str  # "" for a single run, "seed_<n>" otherwise
    folder: Path
    rows: list[ScoreRow]


# --------------------------------------------------------------------------- reading


def _read_metrics(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PDDError(f"{path}: not found; a run folder needs metrics.json to build a report")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PDDError(f"{path}: unreadable metrics file: {exc}") from exc
    if not isinstance(data, dict):
        raise PDDError(f"{path}: expected a JSON object of metrics")
    return data


def read_scores(path: str | os.PathLike[str]) -> list[ScoreRow]:
    """Parse ``scores.csv`` (columns path,label,score[,kind,class_name,heatmap])."""
    path = Path(path)
    if not path.is_file():
        raise PDDError(f"{path}: not found; a run folder needs scores.csv to build a report")
    try:
        # surrogateescape: file names that are not valid UTF-8 were written that way (pdd.fileio)
        text = path.read_text(encoding="utf-8", errors=TEXT_ERRORS)
        if text and not text.endswith("\n"):
            # Every writer ends each row with a line break: a last row without one was cut off
            # (a full disk, a killed copy) and may hold a shortened number such as "2." for "2.75".
            raise PDDError(
                f"{path}: line {text.count(chr(10)) + 1}: the last row has no line break; "
                "the file looks truncated"
            )
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = {"path", "label", "score"} - set(reader.fieldnames or [])
        if missing:
            raise PDDError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        return [_parse_row(path, reader.line_num, row) for row in reader]
    except (OSError, csv.Error) as exc:
        raise PDDError(f"{path}: unreadable scores file: {exc}") from exc


def _parse_row(path: Path, line: int, row: dict[str | None, Any]) -> ScoreRow:
    if None in row or None in row.values():
        raise PDDError(f"{path}: line {line}: expected {len(row) - (None in row)} fields")
    label_text = (row.get("label") or "").strip()
    if label_text not in ("", "0", "1"):
        raise PDDError(f"{path}: line {line}: label must be 0, 1 or empty, got {label_text!r}")
    try:
        score = float(row.get("score") or "")
    except ValueError:
        raise PDDError(f"{path}: line {line}: score {row.get('score')!r} is not a number") from None
    if not math.isfinite(score):
        raise PDDError(f"{path}: line {line}: score is {score}")
    return ScoreRow(
        path=row.get("path") or "",
        label=int(label_text) if label_text else None,
        score=score,
        kind=row.get("kind") or "",
        class_name=row.get("class_name") or "",
        heatmap=row.get("heatmap") or "",
    )


def _score_sets(run_dir: Path, metrics: dict[str, Any]) -> list[_ScoreSet]:
    runs = metrics.get("runs")
    if runs is not None:
        _check_runs(run_dir / "metrics.json", runs)
    if isinstance(runs, dict) and runs:
        return [_ScoreSet(name, run_dir / name, read_scores(run_dir / name / "scores.csv"))
                for name in runs]
    return [_ScoreSet("", run_dir, read_scores(run_dir / "scores.csv"))]


# --------------------------------------------------------------------------- formatting


def _check_runs(path: Path, runs: Any) -> None:
    """``runs`` maps sub-run folder names (``seed_<n>``) to their metrics; a hand-edited value such
    as ``{".": 5}`` must not send us reading outside the sub-runs."""
    if not isinstance(runs, dict):
        raise PDDError(f"{path}: 'runs' must map sub-run folders to their metrics, got {runs!r}")
    for name, record in runs.items():
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
            raise PDDError(f"{path}: 'runs' names sub-run folder {name!r}; expected names like seed_0")
        if not isinstance(record, dict):
            raise PDDError(f"{path}: 'runs'.{name} must be an object of metrics, got {record!r}")


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _format_metric(key: str, value: Any, std: Any = None) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return _esc(value if value is not None else "–")
    if key in _NOT_PERCENT:
        text = f"{value:.4g}"
        return text + (f" ± {std:.2g}" if isinstance(std, (int, float)) else "")
    text = f"{100 * value:.1f}"
    return text + (f" ± {100 * std:.1f}" if isinstance(std, (int, float)) else "")


def _metric_keys(*dicts: dict[str, Any]) -> list[str]:
    return [key for key in _METRIC_LABELS if any(key in d for d in dicts)]


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], css: str = "") -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure_html(figure: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    return f'<img class="figure" src="{_png_data_uri(buffer.getvalue())}" alt="{_esc(alt)}">'


# --------------------------------------------------------------------------- sections


def _settings_section(run_dir: Path, metrics: dict[str, Any]) -> str:
    rows = [(_esc(label), _esc(_provenance_value(metrics[key])))
            for key, label in _PROVENANCE_LABELS.items()
            if key in metrics and metrics[key] is not None]
    rows.append(("Run folder", _esc(run_dir.resolve())))
    parts = ['<section id="settings"><h2>Run settings</h2>']
    if str(metrics.get("teachers", "")).lower().startswith("random"):
        parts.append('<p class="warning">These results were made with RANDOM teacher weights '
                     "(a test or demo setting): they say nothing about the method.</p>")
    parts.append(_table(["Setting", "Value"], rows, "settings"))
    config = run_dir / "config.yaml"
    if config.is_file():
        try:
            text = config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            parts.append(_note(f"config.yaml could not be read: {exc}"))
        else:
            parts.append("<details><summary>Resolved configuration (config.yaml)</summary>"
                         f"<pre>{_esc(text)}</pre></details>")
    else:
        parts.append(_note("config.yaml was not found in the run folder."))
    parts.append("</section>")
    return "".join(parts)


def _provenance_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_provenance_value(item) for item in value)
    if isinstance(value, dict):
        return "; ".join(f"{key}: {_provenance_value(item)}" for key, item in value.items())
    return "–" if value is None else str(value)


def _dict_or_empty(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _metrics_section(metrics: dict[str, Any]) -> str:
    parts = ['<section id="metrics"><h2>Metrics</h2>']
    runs = _dict_or_empty(metrics.get("runs"))
    runs = {name: _dict_or_empty(run) for name, run in runs.items()}
    std = _dict_or_empty(metrics.get("std"))
    keys = _metric_keys(metrics)
    if not keys:
        parts.append(_note("metrics.json holds no known metric keys."))
    elif runs:
        header = ["Metric", f"Mean ± std over {len(runs)} seeds", *map(_esc, runs)]
        rows = [[_esc(_METRIC_LABELS[key]), _format_metric(key, metrics[key], std.get(key)),
                 *(_format_metric(key, run.get(key)) for run in runs.values())] for key in keys]
        parts.append(_table(header, rows, "metrics"))
    else:
        rows = [[_esc(_METRIC_LABELS[key]), _format_metric(key, metrics[key])] for key in keys]
        parts.append(_table(["Metric", "Value"], rows, "metrics"))
    if metrics.get("mean_over") in ("classes", "seeds"):
        parts.append(_note(f"Top-level values are the mean over {metrics['mean_over']}."))
    joint = isinstance(metrics.get("class_mean"), dict)
    if joint:
        parts.append(_note("One model for every class (joint): top-level values are pooled over "
                           "every test image of every class; per-class values and their mean are "
                           "below."))
    if "threshold_note" in metrics or any(
        isinstance(run, dict) and "threshold_note" in run for run in runs.values()
    ):
        parts.append(_note("No threshold: every training normal was used for training "
                           "(holdout fraction 0), so there are no decisions, sensitivity or "
                           "specificity."))
    parts.append(_note("AUROC, AP, F1-max, AUPRO, sensitivity and specificity in percent. Higher "
                       "scores mean more anomalous; a scan is flagged when score > threshold, and "
                       "the threshold is chosen on held-out normal images only."))
    classes = metrics.get("classes")
    if isinstance(classes, dict) and classes:
        class_keys = _metric_keys(*[v for v in classes.values() if isinstance(v, dict)])
        rows = [[_esc(name), *(_format_metric(key, values.get(key)) for key in class_keys)]
                for name, values in classes.items() if isinstance(values, dict)]
        class_mean = _dict_or_empty(metrics.get("class_mean")) if joint else metrics
        rows.append(["<strong>Mean over classes</strong>",
                     *(_format_metric(key, class_mean.get(key)) for key in class_keys)])
        if joint:
            rows.append(["<strong>Pooled (all test images)</strong>",
                         *(_format_metric(key, metrics.get(key)) for key in class_keys)])
        parts.append("<h3>Per class</h3>")
        parts.append(_table(["Class", *(_esc(_METRIC_LABELS[k]) for k in class_keys)], rows,
                            "metrics"))
    parts.append("</section>")
    return "".join(parts)


def _curve_groups(sets: list[_ScoreSet]) -> dict[tuple[str, str], list[ScoreRow]]:
    """Rows per (seed folder, class): scores of separate per-class models are not pooled."""
    groups: dict[tuple[str, str], list[ScoreRow]] = {}
    for score_set in sets:
        for row in score_set.rows:
            groups.setdefault((score_set.name, row.class_name), []).append(row)
    return groups


def _curves_section(sets: list[_ScoreSet]) -> str:
    parts = ['<section id="curves"><h2>ROC and precision–recall curves</h2>']
    figure = Figure(figsize=(10, 4.2))
    roc_axes, pr_axes = figure.subplots(1, 2)
    skipped, plotted = [], []
    groups = _curve_groups(sets)
    seed_names = list(dict.fromkeys(seed for seed, _ in groups))
    class_names = list(dict.fromkeys(name for _, name in groups))
    for (seed, class_name), rows in groups.items():
        name = " / ".join(part for part in (seed, class_name) if part) or "test set"
        labels = np.array([row.label for row in rows if row.label is not None])
        scores = np.array([row.score for row in rows if row.label is not None])
        if labels.size == 0 or labels.min() == labels.max():
            skipped.append(name)
            continue
        # Colour tells the classes apart (or the seeds, with one class); line style the seeds.
        by_class = len(class_names) > 1
        colour_index = class_names.index(class_name) if by_class else seed_names.index(seed)
        style = _LINE_STYLES[seed_names.index(seed) % len(_LINE_STYLES)] if by_class else "-"
        line = {"color": _LINE_COLOURS[colour_index % len(_LINE_COLOURS)], "ls": style, "lw": 1.8}
        fpr, tpr, _ = roc_curve(labels, scores)
        precision, recall, _ = precision_recall_curve(labels, scores)
        roc_axes.plot(fpr, tpr, **line, label=f"{name} (AUROC {auc(fpr, tpr):.3f})")
        pr_axes.step(recall, precision, where="post", **line,
                     label=f"{name} (AP {average_precision_score(labels, scores):.3f})")
        plotted.append(name)
    if plotted:
        roc_axes.plot([0, 1], [0, 1], color="#a0aec0", lw=1, ls="--", label="chance")
        for axes, (xlabel, ylabel, title) in zip(
            (roc_axes, pr_axes),
            (("False positive rate", "True positive rate", "ROC"),
             ("Recall", "Precision", "Precision–recall")),
            strict=True,
        ):
            axes.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.03), xlabel=xlabel, ylabel=ylabel,
                     title=title)
            axes.grid(alpha=0.3)
            axes.legend(loc="lower right" if axes is roc_axes else "lower left", fontsize=8)
        parts.append(_figure_html(
            figure, "ROC and precision-recall curves of the image scores: " + ", ".join(plotted)))
    if skipped:
        parts.append(_note("No curve for " + ", ".join(skipped) + ": it needs labelled normal and "
                           "anomalous test images."))
    parts.append("</section>")
    return "".join(parts)


def _threshold_for(metrics: dict[str, Any], folder: Path, class_name: str) -> float | None:
    """The decision threshold of the model that scored ``class_name`` (each class has its own)."""
    source: Any = metrics
    if class_name:
        classes = metrics.get("classes")
        source = classes.get(class_name) if isinstance(classes, dict) else None
        if not (isinstance(source, dict) and "threshold" in source):
            class_metrics = folder / class_name / "metrics.json"  # the per-class sub-run
            try:
                source = json.loads(class_metrics.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                return None
    value = source.get("threshold") if isinstance(source, dict) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _histogram_section(main: _ScoreSet, metrics: dict[str, Any]) -> str:
    """Normal vs anomalous score histograms, one panel per class; ``metrics`` give thresholds."""
    parts = ['<section id="histograms"><h2>Score distributions</h2>']
    if main.name:
        parts.append(_note(f"From {main.name} (the first seed)."))
    labelled = [row for row in main.rows if row.label is not None]
    class_names = sorted({row.class_name for row in labelled})
    if not labelled:
        parts.append(_note("No labelled test images: nothing to plot."))
        parts.append("</section>")
        return "".join(parts)
    columns = min(3, len(class_names))
    rows_needed = math.ceil(len(class_names) / columns)
    figure = Figure(figsize=(4.2 * columns if columns > 1 else 8, 3.4 * rows_needed))
    axes_grid = np.atleast_1d(figure.subplots(rows_needed, columns, squeeze=False)).ravel()
    missing_threshold = False
    for axes, class_name in zip(axes_grid, class_names, strict=False):
        rows = [row for row in labelled if row.class_name == class_name]
        normal = np.array([row.score for row in rows if row.label == 0])
        anomalous = np.array([row.score for row in rows if row.label == 1])
        every = np.concatenate([normal, anomalous])
        scale = _axis_scale(every)
        normal, anomalous, every = normal / scale, anomalous / scale, every / scale
        bins = np.histogram_bin_edges(every, bins=min(30, max(5, every.size // 3)))
        if normal.size:
            axes.hist(normal, bins=bins, color=_NORMAL_COLOUR, alpha=0.6,
                      label=f"normal (n={normal.size})")
        if anomalous.size:
            axes.hist(anomalous, bins=bins, color=_ANOMALOUS_COLOUR, alpha=0.6,
                      label=f"anomalous (n={anomalous.size})")
        threshold = _threshold_for(metrics, main.folder, class_name)
        if threshold is None:
            missing_threshold = True
        else:
            axes.axvline(threshold / scale, color="#1a202c", ls="--", lw=1.5,
                         label=f"threshold {threshold:.4g}")
        xlabel = "Image score" if scale == 1.0 else f"Image score / {scale:.0e}"
        axes.set(xlabel=xlabel, ylabel="Images", title=class_name or "Test images")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    for axes in axes_grid[len(class_names):]:
        axes.set_visible(False)
    parts.append(_figure_html(figure, "Histograms of normal and anomalous scores"))
    if missing_threshold:
        parts.append(_note("metrics.json has no threshold: no threshold line is drawn."))
    parts.append("</section>")
    return "".join(parts)


def _axis_scale(values: np.ndarray) -> float:
    """1, or the power of ten that brings huge scores (such as +-1e308, whose range overflows a
    float and breaks matplotlib's axes) back to a plottable range."""
    largest = float(np.abs(values).max()) if values.size else 0.0
    if largest < _PLAIN_AXIS_LIMIT:
        return 1.0
    return 10.0 ** math.floor(math.log10(largest))


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
    return _png_data_uri(buffer.getvalue()), ""


def _card(folder: Path, row: ScoreRow) -> str:
    if row.heatmap:
        uri, reason = _thumbnail(folder, row.heatmap)
    else:
        uri, reason = None, "no heatmap"
    file_path, _, slice_index = row.path.partition("#")  # NIfTI slices are "path#index"
    name = "/".join(Path(file_path).parts[-2:]) + (f" #{slice_index}" if slice_index else "")
    visual = (f'<img src="{uri}" alt="heatmap of {_esc(name)}">' if uri
              else f'<div class="placeholder">{_esc(reason)}</div>')
    if row.label is None:
        badge = '<span class="badge unknown">unlabelled</span>'
    elif row.label == 1:
        badge = f'<span class="badge anomalous">anomalous{_esc(": " + row.kind) if row.kind else ""}</span>'
    else:
        badge = '<span class="badge normal">normal</span>'
    class_text = f" · {_esc(row.class_name)}" if row.class_name else ""
    return (f'<figure class="card">{visual}<figcaption><div class="score">score '
            f"{row.score:.4g}</div>{badge}{class_text}"
            f'<div class="path" title="{_esc(row.path)}">{_esc(name)}</div></figcaption></figure>')


def _colour_scale(metrics: dict[str, Any]) -> str:
    """A colour bar of the overlays' fixed scale (``map_stats`` of metrics.json), if recorded."""
    stats = metrics.get("map_stats")
    if not isinstance(stats, dict):
        return ""
    vmin, vmax = stats.get("vmin"), stats.get("vmax")
    if not (isinstance(vmin, (int, float)) and isinstance(vmax, (int, float)) and vmin < vmax):
        return ""
    figure = Figure(figsize=(6.5, 0.9))
    axes = figure.add_axes((0.05, 0.55, 0.9, 0.3))
    mappable = ScalarMappable(norm=Normalize(vmin, vmax), cmap=colormaps[DEFAULT_COLORMAP])
    figure.colorbar(mappable, cax=axes, orientation="horizontal")
    axes.set_xlabel("anomaly map value (clipped to this range; fixed from held-out normals)",
                    fontsize=9)
    return _figure_html(figure, "Colour scale of the heatmaps")


def _gallery_section(main: _ScoreSet, metrics: dict[str, Any]) -> str:
    parts = ['<section id="gallery"><h2>Gallery</h2>']
    if main.name:
        parts.append(_note(f"From {main.name} (the first seed)."))
    parts.append(_colour_scale(metrics))
    ranked = sorted(main.rows, key=lambda row: row.score, reverse=True)
    highest = ranked[:GALLERY_SIZE]
    lowest = [row for row in reversed(ranked[GALLERY_SIZE:])][:GALLERY_SIZE]
    if not any(row.heatmap for row in main.rows):
        parts.append(_note("No heatmaps were written for this run; the gallery lists scores only."))
    for title, rows in (("Highest scores", highest), ("Lowest scores", lowest)):
        if rows:
            cards = "".join(_card(main.folder, row) for row in rows)
            parts.append(f'<h3>{title}</h3><div class="gallery">{cards}</div>')
    if not ranked:
        parts.append(_note("scores.csv has no rows."))
    parts.append(_note("Heatmaps share one colour scale fixed from held-out normal images: blue is "
                       "low, red is high, so a normal scan should look calm."))
    parts.append("</section>")
    return "".join(parts)


def _training_section(metrics: dict[str, Any], folder: Path) -> str:
    """The loss of every optimiser step (the run's CSV log) and per-epoch means of every loss
    term (``train_history`` of metrics.json), when recorded."""
    from pdd.training.loggers import read_step_losses

    steps = read_step_losses(folder)
    history = metrics.get("train_history")
    if not isinstance(history, list) or not history or not all(isinstance(e, dict) for e in history):
        return ""
    terms = [key for key in history[0] if key != "epoch"
             and all(isinstance(entry.get(key), (int, float)) for entry in history)]
    if not terms:
        return ""
    epochs = [entry.get("epoch", index + 1) for index, entry in enumerate(history)]
    figure = Figure(figsize=(8, 3.4))
    axes = figure.subplots()
    if steps:
        # Steps on the epoch axis: step s of an epoch of n steps sits at epoch - 1 + s / n.
        per_epoch = len(steps) / len(history)
        axes.plot([(index + 1) / per_epoch for index in range(len(steps))],
                  [loss for _, loss in steps], lw=0.8, alpha=0.45, color="#718096",
                  label="total loss per optimiser step (logs/)")
    for index, term in enumerate(sorted(terms, key=lambda key: key != "loss")):
        axes.plot(epochs, [entry[term] for entry in history], marker="o", markersize=3,
                  lw=2.2 if term == "loss" else 1.2, color=_LINE_COLOURS[index % len(_LINE_COLOURS)],
                  label="total loss" if term == "loss" else term)
    if all(entry[term] > 0 for entry in history for term in terms):
        axes.set_yscale("log")
    axes.set(xlabel="Epoch", ylabel="Mean training loss", title="Training")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return ('<section id="training"><h2>Training</h2>'
            f'{_figure_html(figure, "Training loss per epoch")}'
            + (_note(f"Grey: the total loss of each of the {len(steps)} optimiser steps, from "
                     "the run's CSV log (logs/).") if steps else "")
            + _note("The last epoch is evaluated; test images never select an epoch.")
            + "</section>")


def _skipped_section(metrics: dict[str, Any]) -> str:
    skipped = metrics.get("skipped") or []
    count = metrics.get("skipped_count", len(skipped))
    if not skipped and not count:
        return ""
    rows = [(_esc(item.get("path", "")), _esc(item.get("reason", "")))
            for item in skipped if isinstance(item, dict)]
    parts = ['<section id="skipped"><h2>Skipped files</h2>',
             _note(f"{count} input file(s) could not be used and were left out."),
             _table(["File", "Reason"], rows, "skipped")]
    if isinstance(count, int) and count > len(rows):
        parts.append(_note(f"…and {count - len(rows)} more not listed in metrics.json."))
    parts.append("</section>")
    return "".join(parts)


# --------------------------------------------------------------------------- page

_CSS = """
:root { --ink:#1a202c; --muted:#4a5568; --line:#e2e8f0; --panel:#f7fafc; --accent:#2b6cb0; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; color:var(--ink); background:#edf2f7; }
header { background:#1a365d; color:white; padding:22px 40px; }
header h1 { margin:0; font-size:24px; font-weight:600; }
header p { margin:4px 0 0; color:#bee3f8; font-size:13px; }
main { max-width:1180px; margin:24px auto; padding:0 24px; }
section { background:white; border:1px solid var(--line); border-radius:8px; padding:18px 24px;
          margin-bottom:20px; }
h2 { margin:0 0 12px; font-size:19px; color:#1a365d; border-bottom:2px solid var(--line);
     padding-bottom:6px; }
h3 { font-size:15px; color:var(--muted); margin:18px 0 8px; }
table { border-collapse:collapse; margin:8px 0; font-size:14px; }
th, td { text-align:left; padding:6px 14px; border-bottom:1px solid var(--line); }
th { background:var(--panel); font-weight:600; }
tbody tr:nth-child(even) { background:#fbfdff; }
table.metrics td:not(:first-child) { font-variant-numeric:tabular-nums; text-align:right; }
table.metrics th:not(:first-child) { text-align:right; }
.note { color:var(--muted); font-size:13px; margin:6px 0; }
.warning { background:#fff5f5; border:1px solid #feb2b2; color:#9b2c2c; padding:10px 14px;
           border-radius:6px; font-weight:600; }
details { margin-top:10px; }
summary { cursor:pointer; color:var(--accent); }
pre { background:var(--panel); border:1px solid var(--line); padding:12px; overflow:auto;
      font-size:12.5px; max-height:420px; }
img.figure { max-width:100%; height:auto; display:block; margin:8px 0; }
.gallery { display:grid; grid-template-columns:repeat(auto-fill, minmax(250px, 1fr)); gap:14px;
           align-items:start; }
.card { margin:0; border:1px solid var(--line); border-radius:6px; overflow:hidden;
        background:var(--panel); }
.card img { width:100%; height:220px; object-fit:contain; display:block; background:#111; }
.placeholder { height:220px; display:flex; align-items:center; justify-content:center;
               color:var(--muted); font-size:13px; background:#edf2f7; }
figcaption { padding:8px 10px; font-size:13px; }
.score { font-weight:600; font-variant-numeric:tabular-nums; }
.path { color:var(--muted); overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px;
         font-weight:600; }
.badge.normal { background:#ebf8ff; color:#2c5282; }
.badge.anomalous { background:#fff5f5; color:#c53030; }
.badge.unknown { background:#edf2f7; color:var(--muted); }
footer { text-align:center; color:var(--muted); font-size:12px; padding:8px 0 24px; }
"""


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Build ``run_dir/report.html`` (atomically) from the run folder's files; returns its path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise PDDError(f"{run}: not a run folder (directory not found)")
    metrics = _read_metrics(run / "metrics.json")
    sets = _score_sets(run, metrics)
    main = sets[0]
    main_metrics = metrics  # what belongs to one model: thresholds, colour scale, training
    if main.name:
        main_metrics = metrics["runs"].get(main.name) or metrics
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"Anomaly detection report — {run.resolve().name}"
    body = "".join([
        _settings_section(run, metrics),
        _metrics_section(metrics),
        _curves_section(sets),
        _histogram_section(main, main_metrics),
        _gallery_section(main, main_metrics),
        _training_section(main_metrics, main.folder),
        _skipped_section(metrics if "skipped_count" in metrics else main_metrics),
    ])
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{_esc(title)}</h1><p>PDD toolkit {_esc(pdd.__version__)} · generated "
        f"{generated} · preset {_esc(metrics.get('preset', 'unknown'))}</p></header>"
        f"<main>{body}</main><footer>Static report: all figures are embedded; it needs no "
        "network and no server.</footer></body></html>\n"
    )
    return atomic_write_text(run / REPORT_NAME, page)
