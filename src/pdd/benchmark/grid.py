"""``pdd benchmark``: a suite's grid of datasets x presets, each one ``fit`` over every seed.

The output folder::

    DIR/suite.yaml                         the resolved suite (a rerun must match it)
    DIR/runs/<dataset>/<preset>/           one ordinary run folder per grid cell (seeds inside;
                                           anomalib:Padim -> anomalib_Padim)
    DIR/results.csv, results.md, report.html

A cell whose run folder is complete (``run_folder.is_complete``) is skipped; one with a
``config.yaml`` but no final metrics was interrupted and is resumed (``runner.resume``); anything
else is fitted. An anomalib model's cell (``pdd.integrations.anomalib_runs``) is trained and scored
by anomalib on the same split and evaluated by the same code; its finished seeds are kept and an
unfinished one is run again. Results are read only from the run folders' ``metrics.json``, so the tables always
show what the runs wrote: a rerun that trains nothing rewrites the same numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdd.benchmark.suite import DatasetEntry, Suite, preset_folder, suite_to_dict
from pdd.benchmark.tables import ResultRow, write_tables
from pdd.data import list_classes
from pdd.errors import ConfigError
from pdd.evaluation.aggregate import METRIC_KEYS, mean_metrics
from pdd.runs.folder import is_complete, read_json, read_yaml, write_yaml
from pdd.training import runner
from pdd.training.options import FitOptions

__all__ = [
    "Cell",
    "ResultRow",
    "RunSettings",
    "collect_results",
    "fit_options",
    "plan",
    "run_benchmark",
]

SUITE_FILE = "suite.yaml"
_NOT_IDENTITY = frozenset({"name", "source"})
"""``suite.yaml`` keys that do not change what is computed: a renamed or moved suite file with the
same content continues the same benchmark."""


@dataclass(frozen=True)
class Cell:
    """One dataset x preset of the grid and the run folder its ``fit`` writes."""

    dataset: DatasetEntry
    preset: str
    folder: Path


@dataclass(frozen=True)
class RunSettings:
    """How the cells run (not what they compute, so not part of the suite's identity)."""

    accelerator: str = "auto"
    num_workers: int = 0
    progress: bool = True


def plan(suite: Suite, out: Path) -> list[Cell]:
    """Every dataset x preset, datasets outermost (a dataset's presets run back to back)."""
    return [
        Cell(entry, preset, out / "runs" / entry.name / preset_folder(preset))
        for entry in suite.datasets
        for preset in suite.presets
    ]


def fit_options(suite: Suite, cell: Cell, settings: RunSettings) -> FitOptions:
    """The ``FitOptions`` of one cell: the suite's settings, every seed of the suite."""
    extra: dict[str, Any] = {}
    if cell.dataset.joint:
        extra["joint"] = True
    if suite.holdout_fraction is not None:
        extra["holdout_fraction"] = suite.holdout_fraction
    return FitOptions(
        data=cell.dataset.data,
        out=cell.folder,
        format=cell.dataset.format,
        preset=cell.preset,
        teachers=suite.teachers,
        image_size=suite.image_size,
        epochs=suite.epochs,
        batch_size=suite.batch_size,
        seeds=list(suite.seeds),
        split_file=cell.dataset.split_file,
        class_name=cell.dataset.class_name,
        accelerator=settings.accelerator,
        num_workers=settings.num_workers,
        progress=settings.progress,
        **extra,
    )


def run_benchmark(
    suite: Suite,
    out: Path,
    *,
    settings: RunSettings | None = None,
    log: Callable[[str], None] | None = None,
) -> list[ResultRow]:
    """Run (or finish) every cell, then write the three results files; returns their rows.

    Example:
        >>> from pathlib import Path
        >>> from pdd.benchmark.grid import run_benchmark
        >>> from pdd.benchmark.suite import load_suite
        >>> suite = load_suite("paper", data_root=Path("/data"))  # doctest: +SKIP
        >>> rows = run_benchmark(suite, Path("runs/paper"))  # doctest: +SKIP
    """
    settings = settings or RunSettings()
    out = Path(out)
    cells = plan(suite, out)
    _check_anomalib_datasets(suite)
    _check_anomalib_weights(suite, cells)
    _claim(out, suite)
    for number, cell in enumerate(cells, 1):
        label = f"[{number}/{len(cells)}] {cell.dataset.name} / {cell.preset}"
        if is_complete(cell.folder):
            _say(log, f"{label}: complete, skipped")
        elif cell.preset in suite.anomalib:
            _say(log, label)
            _run_anomalib(suite, cell, settings)
        elif (cell.folder / "config.yaml").is_file():
            _say(log, f"{label}: resuming the interrupted run")
            runner.resume(cell.folder, progress=settings.progress)
        else:
            _say(log, label)
            runner.fit(fit_options(suite, cell, settings))
    rows = collect_results(suite, out, cells)
    write_tables(suite, out, rows)
    return rows


def _run_anomalib(suite: Suite, cell: Cell, settings: RunSettings) -> None:
    """anomalib is imported only here: suites without anomalib models never need it."""
    from pdd.integrations.anomalib_runs import AnomalibCell, run_cell

    options = fit_options(suite, cell, settings)
    run_cell(AnomalibCell(suite.anomalib[cell.preset], options, cell.dataset.name))


def _check_anomalib_weights(suite: Suite, cells: Sequence[Cell]) -> None:
    """Pretrained weights of every anomalib model that still has a cell to run, before any runs."""
    to_run = {c.preset for c in cells if c.preset in suite.anomalib and not is_complete(c.folder)}
    if not to_run:
        return
    from pdd.integrations.anomalib_models import DEFAULT_IMAGE_SIZE, check_weights

    for label in sorted(to_run):
        check_weights(suite.anomalib[label], suite.image_size or DEFAULT_IMAGE_SIZE, suite.teachers)


def _check_anomalib_datasets(suite: Suite) -> None:
    """An anomalib model trains one model per run: a multi-class dataset needs ``class`` or
    ``joint`` (ours train one model per class there). Checked before anything runs."""
    if not suite.anomalib:
        return
    for entry in suite.datasets:
        if entry.joint or entry.class_name is not None or entry.split_file is not None:
            continue
        classes = list_classes(entry.data, entry.format)
        if len(classes) > 1:
            raise ConfigError(
                f"{suite.source}: datasets: {entry.name}: has {len(classes)} classes; the suite's "
                f"anomalib models ({', '.join(suite.anomalib)}) need `class: <name>` or "
                "`joint: true` for it"
            )


def _say(log: Callable[[str], None] | None, line: str) -> None:
    if log is not None:
        log(line)


def _claim(out: Path, suite: Suite) -> None:
    """Make ``out`` this suite's folder, or refuse one that holds anything else."""
    wanted = suite_to_dict(suite)
    saved_path = out / SUITE_FILE
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: output folder is a file")
    if saved_path.is_file():
        saved = read_yaml(saved_path)
        saved = saved if isinstance(saved, dict) else {}
        differs = sorted(
            key for key in (set(saved) | set(wanted)) - _NOT_IDENTITY
            if saved.get(key) != wanted.get(key)
        )  # fmt: skip
        if differs:
            raise ConfigError(
                f"{out}: holds the results of a different suite ({saved_path} differs in "
                f"{', '.join(differs)}); choose another --out"
            )
        return
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(
            f"{out}: output folder is not empty and holds no {SUITE_FILE}; choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_yaml(saved_path, wanted)


def collect_results(suite: Suite, out: Path, cells: Sequence[Cell]) -> list[ResultRow]:
    """The table rows, read from each cell's ``metrics.json``, with the published numbers."""
    rows: list[ResultRow] = []
    for cell in cells:
        record = read_json(cell.folder / "metrics.json")
        mine = _rows_of(cell, record, out)
        published = suite.published.get(cell.dataset.name, {}).get(cell.preset)
        if published:
            over = suite.published_over.get(cell.dataset.name, "images")
            index = next(
                (i for i, row in enumerate(mine) if over == "images" or row.over == "classes"),
                None,
            )
            if index is None:  # not measured here (e.g. no class mean): the paper's number alone
                mine.append(dataclasses.replace(mine[0], over="classes", mean={}, std={}))
                index = len(mine) - 1
            mine[index] = dataclasses.replace(mine[index], published=dict(published))
        rows.extend(mine)
    return rows


def _rows_of(cell: Cell, record: Mapping[str, Any], out: Path) -> list[ResultRow]:
    """The top-level metrics of a run folder, and for a joint model also its mean over classes
    (a joint record is one with a ``class_mean``, per seed when there are several)."""
    multi_seed = "runs" in record
    seeds = tuple(int(s) for s in record["seeds"]) if multi_seed else (int(record["seed"]),)
    per_seed = [record["runs"][f"seed_{s}"] for s in seeds] if multi_seed else [record]
    folder = cell.folder.relative_to(out).as_posix()
    top_std = record.get("std", {}) if multi_seed else {}
    mean = {k: float(record[k]) for k in METRIC_KEYS if k in record}
    class_means = [r.get("class_mean") for r in per_seed]
    joint = all(isinstance(c, Mapping) for c in class_means)  # what ran, not what was asked
    base = ResultRow(
        dataset=cell.dataset.name,
        preset=cell.preset,
        over="pooled" if joint else ("classes" if "classes" in record else "images"),
        teachers=str(record.get("teachers")),
        seeds=seeds,
        mean=mean,
        std={k: float(top_std[k]) for k in mean if k in top_std},
        run_folder=folder,
        seed_folders=tuple(f"{folder}/seed_{s}" for s in seeds) if multi_seed else (folder,),
        model=_model_label(per_seed[0]),
        train_seconds=_mean_cost([_train_seconds(r) for r in per_seed]),
        images_per_second=_mean_cost([_images_per_second(r) for r in per_seed]),
    )
    rows = [base]
    if joint:
        # The same mean and (population) std over seeds as the runner's aggregate.
        class_mean, class_std = mean_metrics(class_means)  # type: ignore[arg-type]
        rows.append(
            dataclasses.replace(
                base, over="classes", mean=class_mean, std=class_std if multi_seed else {}
            )
        )
    return rows


def _model_label(record: Mapping[str, Any]) -> str:
    """Which code made the row: anomalib's version, class and arguments, or pdd's version."""
    if record.get("framework") == "anomalib":
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(record.get("anomalib_args", {}).items()))
        return f"anomalib {record.get('anomalib_version')} {record.get('anomalib_model')}({args})"
    return f"pdd {record.get('pdd_version')}"


def _train_seconds(record: Mapping[str, Any]) -> float | None:
    value = record.get("timing", {}).get("train_seconds")
    return None if value is None else float(value)


def _images_per_second(record: Mapping[str, Any]) -> float | None:
    """Inference throughput of one sub-run: as recorded, or the images its evaluation scored
    (held-out normals, or the training normals without a holdout, and the test images) over its
    ``eval_seconds``."""
    timing = record.get("timing", {})
    if "images_per_second" in timing:
        return float(timing["images_per_second"])
    seconds = timing.get("eval_seconds")
    if not seconds or "num_test" not in record:
        return None
    normals = int(record.get("num_holdout") or 0) or int(record.get("num_train") or 0)
    return (int(record["num_test"]) + normals) / float(seconds)


def _mean_cost(values: Sequence[float | None]) -> float | None:
    """The mean over seeds; None when any seed lacks it (e.g. a multi-class seed record)."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]
