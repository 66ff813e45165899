"""The report's table sections: run settings (provenance), metrics (per seed and per class) and
skipped input files."""

from __future__ import annotations

import math
from typing import Any

from pdd.report.markup import esc, note, table
from pdd.report.run_files import ReportRun

__all__ = ["metrics_section", "settings_section", "skipped_section"]

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


def settings_section(run: ReportRun) -> str:
    metrics = run.metrics
    rows = [(esc(label), esc(_provenance_value(metrics[key])))
            for key, label in _PROVENANCE_LABELS.items()
            if key in metrics and metrics[key] is not None]
    rows.append(("Run folder", esc(run.folder.resolve())))
    parts = ['<section id="settings"><h2>Run settings</h2>']
    if str(metrics.get("teachers", "")).lower().startswith("random"):
        parts.append('<p class="warning">These results were made with RANDOM teacher weights '
                     "(a test or demo setting): they say nothing about the method.</p>")
    parts.append(table(["Setting", "Value"], rows, "settings"))
    config = run.folder / "config.yaml"
    if config.is_file():
        try:
            text = config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            parts.append(note(f"config.yaml could not be read: {exc}"))
        else:
            parts.append("<details><summary>Resolved configuration (config.yaml)</summary>"
                         f"<pre>{esc(text)}</pre></details>")
    else:
        parts.append(note("config.yaml was not found in the run folder."))
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


def _format_metric(key: str, value: Any, std: Any = None) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return esc(value if value is not None else "–")
    if key in _NOT_PERCENT:
        text = f"{value:.4g}"
        return text + (f" ± {std:.2g}" if isinstance(std, (int, float)) else "")
    text = f"{100 * value:.1f}"
    return text + (f" ± {100 * std:.1f}" if isinstance(std, (int, float)) else "")


def _metric_keys(*dicts: dict[str, Any]) -> list[str]:
    return [key for key in _METRIC_LABELS if any(key in d for d in dicts)]


def _dict_or_empty(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def metrics_section(run: ReportRun) -> str:
    metrics = run.metrics
    parts = ['<section id="metrics"><h2>Metrics</h2>']
    runs = _dict_or_empty(metrics.get("runs"))
    runs = {name: _dict_or_empty(record) for name, record in runs.items()}
    std = _dict_or_empty(metrics.get("std"))
    keys = _metric_keys(metrics)
    if not keys:
        parts.append(note("metrics.json holds no known metric keys."))
    elif runs:
        header = ["Metric", f"Mean ± std over {len(runs)} seeds", *map(esc, runs)]
        rows = [[esc(_METRIC_LABELS[key]), _format_metric(key, metrics[key], std.get(key)),
                 *(_format_metric(key, record.get(key)) for record in runs.values())]
                for key in keys]
        parts.append(table(header, rows, "metrics"))
    else:
        rows = [[esc(_METRIC_LABELS[key]), _format_metric(key, metrics[key])] for key in keys]
        parts.append(table(["Metric", "Value"], rows, "metrics"))
    if metrics.get("mean_over") in ("classes", "seeds"):
        parts.append(note(f"Top-level values are the mean over {metrics['mean_over']}."))
    joint = isinstance(metrics.get("class_mean"), dict)
    if joint:
        parts.append(note("One model for every class (joint): top-level values are pooled over "
                          "every test image of every class; per-class values and their mean are "
                          "below."))
    if "threshold_note" in metrics or any(
        isinstance(record, dict) and "threshold_note" in record for record in runs.values()
    ):
        parts.append(note("No threshold: every training normal was used for training "
                          "(holdout fraction 0), so there are no decisions, sensitivity or "
                          "specificity."))
    parts.append(note("AUROC, AP, F1-max, AUPRO, sensitivity and specificity in percent. Higher "
                      "scores mean more anomalous; a scan is flagged when score > threshold, and "
                      "the threshold is chosen on held-out normal images only."))
    classes = metrics.get("classes")
    if isinstance(classes, dict) and classes:
        class_keys = _metric_keys(*[v for v in classes.values() if isinstance(v, dict)])
        rows = [[esc(name), *(_format_metric(key, values.get(key)) for key in class_keys)]
                for name, values in classes.items() if isinstance(values, dict)]
        class_mean = _dict_or_empty(metrics.get("class_mean")) if joint else metrics
        rows.append(["<strong>Mean over classes</strong>",
                     *(_format_metric(key, class_mean.get(key)) for key in class_keys)])
        if joint:
            rows.append(["<strong>Pooled (all test images)</strong>",
                         *(_format_metric(key, metrics.get(key)) for key in class_keys)])
        parts.append("<h3>Per class</h3>")
        parts.append(table(["Class", *(esc(_METRIC_LABELS[k]) for k in class_keys)], rows,
                           "metrics"))
    parts.append("</section>")
    return "".join(parts)


def skipped_section(run: ReportRun) -> str:
    metrics = run.metrics if "skipped_count" in run.metrics else run.main_metrics
    skipped = metrics.get("skipped") or []
    count = metrics.get("skipped_count", len(skipped))
    if not skipped and not count:
        return ""
    rows = [(esc(item.get("path", "")), esc(item.get("reason", "")))
            for item in skipped if isinstance(item, dict)]
    parts = ['<section id="skipped"><h2>Skipped files</h2>',
             note(f"{count} input file(s) could not be used and were left out."),
             table(["File", "Reason"], rows, "skipped")]
    if isinstance(count, int) and count > len(rows):
        parts.append(note(f"…and {count - len(rows)} more not listed in metrics.json."))
    parts.append("</section>")
    return "".join(parts)
