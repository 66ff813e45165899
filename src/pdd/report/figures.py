"""The report's plotted sections (matplotlib, inlined as PNG): ROC and precision-recall curves,
score histograms with the threshold, the training losses, and the heatmaps' colour bar."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import (
    auc,
    average_precision_score,
    precision_recall_curve,
    roc_curve,
)

from pdd.report.heatmap import DEFAULT_COLORMAP
from pdd.report.markup import figure_html, note
from pdd.report.run_files import ReportRun, ScoreRow, ScoreSet, threshold_for

__all__ = ["axis_scale", "colour_scale", "curves_section", "histogram_section", "training_section"]

_PLAIN_AXIS_LIMIT = 1e100  # larger scores are plotted in units of a power of ten
_NORMAL_COLOUR = "#2b6cb0"
_ANOMALOUS_COLOUR = "#c53030"
_LINE_COLOURS = ["#2b6cb0", "#c53030", "#2f855a", "#b7791f", "#6b46c1", "#2c7a7b", "#97266d"]
_LINE_STYLES = ["-", "--", ":", "-."]
_HINGE_NOTE = ("loss_div (the diversity loss) is a hinge: it reads 0 whenever the two students "
               "already meet its margins (first-level features at most tau_low alike, deeper "
               "ones at least tau_high alike), so 0 in most epochs means satisfied, not broken.")


def _curve_groups(sets: list[ScoreSet]) -> dict[tuple[str, str], list[ScoreRow]]:
    """Rows per (seed folder, class): scores of separate per-class models are not pooled."""
    groups: dict[tuple[str, str], list[ScoreRow]] = {}
    for score_set in sets:
        for row in score_set.rows:
            groups.setdefault((score_set.name, row.class_name), []).append(row)
    return groups


def curves_section(run: ReportRun) -> str:
    parts = ['<section id="curves"><h2>ROC and precision–recall curves</h2>']
    figure = Figure(figsize=(10, 4.2))
    roc_axes, pr_axes = figure.subplots(1, 2)
    skipped, plotted = [], []
    groups = _curve_groups(run.sets)
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
        parts.append(figure_html(
            figure, "ROC and precision-recall curves of the image scores: " + ", ".join(plotted)))
    if skipped:
        parts.append(note("No curve for " + ", ".join(skipped) + ": it needs labelled normal and "
                          "anomalous test images."))
    parts.append("</section>")
    return "".join(parts)


def histogram_section(run: ReportRun) -> str:
    """Normal vs anomalous score histograms of the first score set, one panel per class, with
    each class model's threshold."""
    main, metrics = run.main, run.main_metrics
    parts = ['<section id="histograms"><h2>Score distributions</h2>']
    if main.name:
        parts.append(note(f"From {main.name} (the first seed)."))
    labelled = [row for row in main.rows if row.label is not None]
    class_names = sorted({row.class_name for row in labelled})
    if not labelled:
        parts.append(note("No labelled test images: nothing to plot."))
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
        scale = axis_scale(every)
        normal, anomalous, every = normal / scale, anomalous / scale, every / scale
        bins = np.histogram_bin_edges(every, bins=min(30, max(5, every.size // 3)))
        if normal.size:
            axes.hist(normal, bins=bins, color=_NORMAL_COLOUR, alpha=0.6,
                      label=f"normal (n={normal.size})")
        if anomalous.size:
            axes.hist(anomalous, bins=bins, color=_ANOMALOUS_COLOUR, alpha=0.6,
                      label=f"anomalous (n={anomalous.size})")
        threshold = threshold_for(metrics, main.folder, class_name)
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
    parts.append(figure_html(figure, "Histograms of normal and anomalous scores"))
    if missing_threshold:
        parts.append(note("metrics.json has no threshold: no threshold line is drawn."))
    parts.append("</section>")
    return "".join(parts)


def axis_scale(values: np.ndarray) -> float:
    """1, or the power of ten that brings huge scores (such as +-1e308, whose range overflows a
    float and breaks matplotlib's axes) back to a plottable range."""
    largest = float(np.abs(values).max()) if values.size else 0.0
    if largest < _PLAIN_AXIS_LIMIT:
        return 1.0
    return 10.0 ** math.floor(math.log10(largest))


def colour_scale(metrics: dict[str, Any]) -> str:
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
    return figure_html(figure, "Colour scale of the heatmaps")


def training_section(run: ReportRun) -> str:
    """The loss of every optimiser step (the run's CSV log) and per-epoch means of every loss
    term (``train_history`` of metrics.json), when recorded."""
    from pdd.runs.folder import read_step_losses

    steps = read_step_losses(run.main.folder)
    history = run.main_metrics.get("train_history")
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
            f'{figure_html(figure, "Training loss per epoch")}'
            + (note(f"Grey: the total loss of each of the {len(steps)} optimiser steps, from "
                    "the run's CSV log (logs/).") if steps else "")
            + (note(_HINGE_NOTE) if "loss_div" in terms else "")
            + note("The last epoch is evaluated; test images never select an epoch.")
            + "</section>")
