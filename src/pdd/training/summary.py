"""A fit's top-level record from its sub-runs: per-class results into one seed's folder, seeds
into mean and std (metrics.json, scores.csv, config.yaml and report.html of the parent folder)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pdd.evaluation.aggregate import METRIC_KEYS, mean_metrics
from pdd.report.html import write_report
from pdd.runs.folder import (
    read_scores,
    read_yaml,
    write_json,
    write_scores,
    write_yaml,
)
from pdd.training.options import FitOptions

__all__ = ["aggregate_classes", "aggregate_seeds"]


def _common_provenance(record: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "preset",
        "teachers",
        "image_size",
        "epochs",
        "batch_size",
        "dataset",
        "format",
        "joint",
        "holdout_fraction",
        "global_batch_size",
        "pdd_version",
    )
    return {key: record.get(key) for key in keys}


def aggregate_classes(
    seed_dir: Path,
    per_class: Mapping[str | None, Mapping[str, Any]],
    options: FitOptions,
) -> dict[str, Any]:
    """One seed over a multi-class set: per-class metrics, their mean, one scores.csv."""
    records = list(per_class.values())
    mean, _ = mean_metrics(records)
    first = records[0]
    record = {
        **mean,
        "mean_over": "classes",
        "classes": {
            str(name): {k: r[k] for k in METRIC_KEYS if k in r}
            for name, r in per_class.items()
        },
        **_common_provenance(first),
        "seed": first["seed"],
        "split": {str(name): f"{name}/split.csv" for name in per_class},
        "num_train": sum(int(r["num_train"]) for r in records),
        "num_test": sum(int(r["num_test"]) for r in records),
        "skipped": [item for r in records for item in r["skipped"]],
        "skipped_count": sum(int(r["skipped_count"]) for r in records),
    }
    rows: list[dict[str, str]] = []
    for name in per_class:
        for row in read_scores(seed_dir / str(name) / "scores.csv"):
            if row["heatmap"]:
                row["heatmap"] = f"{name}/{row['heatmap']}"
            rows.append(row)
    write_scores(seed_dir / "scores.csv", rows)
    if seed_dir != options.out:
        # One seed of several: its own config (the top-level one covers all seeds).
        config = read_yaml(seed_dir / str(next(iter(per_class))) / "config.yaml")
        config["options"].update(class_name=None, out=str(seed_dir))
        write_yaml(seed_dir / "config.yaml", config)
    write_json(seed_dir / "metrics.json", record)
    write_report(seed_dir)
    return record


def aggregate_seeds(
    options: FitOptions, seed_records: Mapping[int, Mapping[str, Any]]
) -> None:
    """Mean and std over seeds of every metric (pooled, per class and the class mean alike)."""
    records = list(seed_records.values())
    mean, std = mean_metrics(records)
    record: dict[str, Any] = {
        **mean,
        "std": std,
        "mean_over": "seeds",
        "seeds": list(seed_records),
        "runs": {f"seed_{seed}": dict(r) for seed, r in seed_records.items()},
        **_common_provenance(records[0]),
        "split": {
            f"seed_{seed}": {
                name: f"seed_{seed}/{path}" for name, path in r["split"].items()
            }
            if isinstance(r["split"], dict)
            else f"seed_{seed}/split.csv"
            for seed, r in seed_records.items()
        },
    }
    if "classes" in records[0]:
        record["classes"] = {
            name: mean_metrics([r["classes"][name] for r in records])[0]
            for name in records[0]["classes"]
        }
    if "class_mean" in records[0]:
        mean_of_means, std_of_means = mean_metrics([r["class_mean"] for r in records])
        record["class_mean"] = {**mean_of_means, "std": std_of_means}
    write_json(options.out / "metrics.json", record)
    write_report(options.out)
