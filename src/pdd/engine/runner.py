"""Fit / test orchestration: trains with Lightning, evaluates, writes run folders.

``fit`` runs one *sub-run* per seed (and per class of a multi-class set). A sub-run trains on the
training normals, picks the decision threshold and heatmap scale on the held-out normals, scores
every test image once, and writes a complete run folder (docs/architecture.md, "Run folder schema").
The last epoch is reported; test images never influence training, selection or thresholds.

Crash safety: every file is written atomically. The Lightning training state (weights, optimiser,
scheduler, loop counters, the position inside the epoch) is saved to ``training_state.ckpt`` every
``checkpoint_every_n_steps`` steps and once training ends; ``resume`` continues from it with the
options saved in ``config.yaml``. A sub-run is complete once its ``metrics.json`` exists and its
training state has been removed.

Multiple processes (DDP): every process runs this code. Training uses all of them; each global batch
is cut into one contiguous part per process, so with the same global batch the optimiser sees the
same images as a 1-process run (with R > 1 processes up to R - 1 images per epoch repeat, as with
``DistributedSampler``; BatchNorm statistics are per process, as Lightning's default). Evaluation and
every file write happen on global rank 0 only, after training, over the full test list: each test
image is scored exactly once.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from pdd import __version__, create_model
from pdd.data import (
    DatasetSplit,
    ImageDataset,
    Sample,
    list_classes,
    load_dataset,
    to_display,
)
from pdd.engine import checkpoint as model_checkpoint
from pdd.engine import metrics
from pdd.engine.module import AnomalyModule
from pdd.errors import CheckpointError, ConfigError, DataError
from pdd.fileio import atomic_torch_save, atomic_write_text

__all__ = ["FitOptions", "fit", "resume", "test"]

TRAINING_STATE = "training_state.ckpt"
HEATMAPS_PER_END = 8
"""Overlays are written for this many highest- and lowest-scoring test images."""
METRIC_KEYS = (
    "image_auroc", "image_ap", "image_f1_max",
    "pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro",
    "sensitivity", "specificity",
)  # fmt: skip
"""Values that are averaged over classes and seeds (thresholds are per model, not averaged)."""
_RUN_FILES = ("config.yaml", "metrics.json", "scores.csv", "model.ckpt", TRAINING_STATE)


@dataclass
class FitOptions:
    """Everything `pdd fit` needs; saved in the run folder so `resume` can continue it."""

    data: Path
    out: Path
    format: str = "auto"
    preset: str = "pdd"
    teachers: str = "pretrained"  # pretrained | random (recorded in metrics.json)
    image_size: int | None = None  # None -> the preset's
    epochs: int | None = None
    batch_size: int | None = None  # per device
    seeds: list[int] = field(default_factory=lambda: [0])
    split_file: Path | None = None
    class_name: str | None = (
        None  # None: every class of a multi-class set, per class + mean
    )
    model_overrides: dict[str, Any] = field(default_factory=dict)
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    checkpoint_every_n_steps: int | None = None
    progress: bool = True


# --------------------------------------------------------------------------- public API


def fit(options: FitOptions) -> Path:
    """Train then test (every seed, every class); returns the run folder."""
    options = _normalised(options)
    if not options.seeds:
        raise ConfigError("no seeds given: need at least one")
    if _is_global_zero_from_env():
        _refuse_existing_run(options.out)
    return _execute(options)


def resume(run_dir: Path, *, progress: bool = True) -> Path:
    """Continue a killed ``fit`` from its latest training-state checkpoint; returns the run folder.

    Completed sub-runs are kept, an interrupted one continues where its training state was saved
    (the result equals an uninterrupted run on CPU), later ones start fresh.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(
            f"{run_dir}: not a pdd run folder (no config.yaml); nothing to resume"
        )
    try:
        saved = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        options = _options_from_dict(saved["options"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{config_path}: cannot read the saved fit options ({exc})"
        ) from exc
    options = dataclasses.replace(options, out=run_dir, progress=progress)
    if _is_global_zero_from_env():
        _remove_partial_files(run_dir)
    return _execute(options)


def test(
    checkpoint: Path,
    data: Path,
    out: Path,
    *,
    format: str = "auto",
    split_file: Path | None = None,
    class_name: str | None = None,
    progress: bool = True,
) -> Path:
    """Evaluate a saved model on a dataset's test split; returns the run folder.

    The threshold and heatmap scale are the checkpoint's (chosen on the training run's held-out
    normals). Without ``split_file`` the split is drawn with the checkpoint's training seed, so a
    small set without an official split is tested on exactly the images its training never saw.
    """
    checkpoint, data, out = Path(checkpoint), Path(data), Path(out)
    model, meta = model_checkpoint.load(checkpoint)
    if "threshold" not in meta or "map_stats" not in meta:
        raise CheckpointError(
            f"{checkpoint}: checkpoint has no threshold and heatmap statistics "
            "(not written by `pdd fit`); it cannot be tested"
        )
    provenance = meta.get("provenance", {})
    seed = int(provenance.get("seed", 0))
    class_name = class_name if class_name is not None else provenance.get("class_name")
    _refuse_existing_run(out)
    split = load_dataset(
        data, format, class_name=class_name, seed=seed, split_file=split_file
    )
    image_size = int(meta["config"]["image_size"])
    batch_size = int(
        provenance.get("batch_size") or meta["config"]["train"]["batch_size"]
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scorer = _Scorer(
        model.to(device), device, image_size, batch_size, 0, nullcontext, progress
    )
    started = time.monotonic()
    result = _evaluate_test(scorer, split, meta["threshold"], meta["map_stats"], out)
    record = {
        **result,
        **_split_record(split, "split.csv"),
        "preset": meta["preset"],
        "teachers": meta["config"]["teachers"],
        "teacher_identity": meta["teachers"],
        "seed": seed,
        "image_size": image_size,
        "epochs": provenance.get("epochs"),
        "checkpoint": str(checkpoint),
        "trained_on": provenance.get("dataset"),
        "pdd_version": __version__,
        "timing": {"eval_seconds": round(time.monotonic() - started, 3)},
    }
    split.write_manifest(out / "split.csv")
    options = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "format": format,
        "split_file": None if split_file is None else str(split_file),
        "class_name": class_name,
    }
    _write_yaml(
        out / "config.yaml",
        {"pdd_version": __version__, "test_options": options, "model": meta["config"]},
    )
    _write_json(out / "metrics.json", record)
    _write_report(out)
    return out


# --------------------------------------------------------------------------- options


def _normalised(options: FitOptions) -> FitOptions:
    return dataclasses.replace(
        options,
        data=Path(options.data),
        out=Path(options.out),
        split_file=None if options.split_file is None else Path(options.split_file),
        seeds=[int(s) for s in options.seeds],
        model_overrides=dict(options.model_overrides),
    )


def _options_to_dict(options: FitOptions) -> dict[str, Any]:
    values = dataclasses.asdict(options)
    for key in ("data", "out", "split_file"):
        if values[key] is not None:
            values[key] = str(values[key])
    del values["progress"]  # how the run is watched, not what it computes
    return values


def _options_from_dict(values: Mapping[str, Any]) -> FitOptions:
    known = {f.name for f in dataclasses.fields(FitOptions)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}")
    return _normalised(FitOptions(**values))


def _model_overrides(options: FitOptions) -> dict[str, Any]:
    """The options that change the model config, merged into the user's model overrides."""
    overrides = json.loads(
        json.dumps(options.model_overrides)
    )  # deep copy of plain data
    overrides["teachers"] = options.teachers
    if options.image_size is not None:
        overrides["image_size"] = options.image_size
    train = overrides.setdefault("train", {})
    if options.epochs is not None:
        train["epochs"] = options.epochs
    if options.batch_size is not None:
        train["batch_size"] = options.batch_size
    if not train:
        del overrides["train"]
    return overrides


# --------------------------------------------------------------------------- run folders


@dataclass(frozen=True)
class _SubRun:
    seed: int
    class_name: str | None
    folder: Path


def _plan(options: FitOptions) -> list[_SubRun]:
    """One sub-run per seed and class, with the folder it writes."""
    if options.class_name is not None:
        classes: list[str | None] = [options.class_name]
    elif options.split_file is not None:
        classes = [None]  # the manifest decides the images
    else:
        classes = list(list_classes(options.data, options.format)) or [None]
    for name in classes:
        if name is not None and (
            not name or Path(name).name != name or name.startswith(".")
        ):
            raise DataError(
                f"{options.data}: class name {name!r} cannot be a folder name"
            )
    runs = []
    for seed in options.seeds:
        seed_dir = (
            options.out / f"seed_{seed}" if len(options.seeds) > 1 else options.out
        )
        for name in classes:
            folder = (
                seed_dir / name if (name is not None and len(classes) > 1) else seed_dir
            )
            runs.append(_SubRun(seed, name, folder))
    return runs


def _refuse_existing_run(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: output folder is a file")
    if out.is_dir() and any(out.iterdir()):
        found = [name for name in _RUN_FILES if (out / name).exists()]
        what = f"holds a run ({', '.join(found)})" if found else "is not empty"
        raise ConfigError(
            f"{out}: output folder {what}; choose a new folder or resume it with `pdd fit --resume`"
        )
    out.mkdir(parents=True, exist_ok=True)


def _remove_partial_files(run_dir: Path) -> None:
    """Temporary files of writes a kill interrupted (the targets themselves are intact)."""
    for partial in run_dir.rglob(".*.tmp"):
        partial.unlink()


def _is_complete(folder: Path) -> bool:
    return (folder / "metrics.json").is_file() and not (
        folder / TRAINING_STATE
    ).exists()


def _is_global_zero_from_env() -> bool:
    """Whether this process is global rank 0, before a Trainer exists (DDP launchers set these)."""
    for name in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if name in os.environ:
            return int(os.environ[name]) == 0
    return (
        int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0"))) == 0
        and int(os.environ.get("LOCAL_RANK", "0")) == 0
    )


def _execute(options: FitOptions) -> Path:
    seeds, runs = options.seeds, _plan(options)
    results: dict[_SubRun, dict[str, Any] | None] = {
        run: _run_one(options, run) for run in runs
    }
    if not _is_global_zero_from_env():
        return options.out
    if len(runs) == 1:
        return options.out
    seed_records: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        mine = [run for run in runs if run.seed == seed]
        if len(mine) == 1:
            seed_records[seed] = _read_metrics(mine[0].folder, results[mine[0]])
        else:
            seed_dir = mine[0].folder.parent
            per_class = {
                run.class_name: _read_metrics(run.folder, results[run]) for run in mine
            }
            seed_records[seed] = _aggregate_classes(seed_dir, per_class, options)
    if len(seeds) > 1:
        _aggregate_seeds(options, seed_records)
    return options.out


def _read_metrics(folder: Path, result: dict[str, Any] | None) -> dict[str, Any]:
    if result is not None:
        return result
    return json.loads((folder / "metrics.json").read_text(encoding="utf-8"))


def _common_provenance(record: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "preset",
        "teachers",
        "image_size",
        "epochs",
        "batch_size",
        "dataset",
        "format",
        "pdd_version",
    )
    return {key: record.get(key) for key in keys}


def _mean_metrics(
    records: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, float], dict[str, float]]:
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    for key in METRIC_KEYS:
        values = [float(r[key]) for r in records if key in r]
        if values and len(values) == len(records):
            mean[key] = float(np.mean(values))
            std[key] = float(np.std(values))
    return mean, std


def _aggregate_classes(
    seed_dir: Path,
    per_class: Mapping[str | None, Mapping[str, Any]],
    options: FitOptions,
) -> dict[str, Any]:
    """One seed over a multi-class set: per-class metrics, their mean, one scores.csv."""
    records = list(per_class.values())
    mean, _ = _mean_metrics(records)
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
        with (seed_dir / str(name) / "scores.csv").open(
            newline="", encoding="utf-8"
        ) as handle:
            for row in csv.DictReader(handle):
                if row["heatmap"]:
                    row["heatmap"] = f"{name}/{row['heatmap']}"
                rows.append(row)
    _write_scores_rows(seed_dir / "scores.csv", rows)
    if seed_dir != options.out:
        # One seed of several: its own config (the top-level one covers all seeds).
        config = _read_yaml(seed_dir / str(next(iter(per_class))) / "config.yaml")
        config["options"].update(class_name=None, out=str(seed_dir))
        _write_yaml(seed_dir / "config.yaml", config)
    _write_json(seed_dir / "metrics.json", record)
    _write_report(seed_dir)
    return record


def _aggregate_seeds(
    options: FitOptions, seed_records: Mapping[int, Mapping[str, Any]]
) -> None:
    records = list(seed_records.values())
    mean, std = _mean_metrics(records)
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
            if "classes" in r
            else f"seed_{seed}/split.csv"
            for seed, r in seed_records.items()
        },
    }
    if "classes" in records[0]:
        record["classes"] = {
            name: _mean_metrics([r["classes"][name] for r in records])[0]
            for name in records[0]["classes"]
        }
    _write_json(options.out / "metrics.json", record)
    _write_report(options.out)


# --------------------------------------------------------------------------- one sub-run


def _run_one(options: FitOptions, run: _SubRun) -> dict[str, Any] | None:
    """Train and evaluate one (seed, class); returns its metrics on rank 0, None elsewhere/when done."""
    state_path = run.folder / TRAINING_STATE
    if _is_complete(run.folder):
        return None
    leader = _is_global_zero_from_env()
    L.seed_everything(run.seed, workers=True, verbose=False)
    split = load_dataset(
        options.data,
        options.format,
        class_name=run.class_name,
        seed=run.seed,
        split_file=options.split_file,
    )
    model = create_model(options.preset, **_model_overrides(options))
    train_config = model.config["train"]
    image_size, epochs, batch_size = (
        int(model.config["image_size"]),
        int(train_config["epochs"]),
        int(train_config["batch_size"]),
    )
    if not split.holdout:
        raise DataError(
            f"{options.data}: no held-out normal images to choose the threshold on "
            f"({len(split.train)} training normals); add normal images or pass a split file with a holdout"
        )
    if leader:
        run.folder.mkdir(parents=True, exist_ok=True)
        resolved = dataclasses.replace(
            options,
            image_size=image_size,
            epochs=epochs,
            batch_size=batch_size,
        )
        config = {
            "pdd_version": __version__,
            "options": _options_to_dict(resolved),
            "model": model.config,
        }
        if not (options.out / "config.yaml").exists():
            _write_yaml(options.out / "config.yaml", config)
        if run.folder != options.out:
            sub_config = dict(
                config,
                options=_options_to_dict(
                    dataclasses.replace(
                        resolved,
                        seeds=[run.seed],
                        class_name=run.class_name,
                        out=run.folder,
                    )
                ),
            )
            _write_yaml(run.folder / "config.yaml", sub_config)
        split.write_manifest(run.folder / "split.csv")

    module = AnomalyModule(model)
    trainer = _trainer(options, state_path, epochs)
    data = _TrainData(
        split.train, image_size, batch_size, run.seed, options.num_workers
    )
    started = time.monotonic()
    with warnings.catch_warnings():
        # The teachers are frozen in eval mode on purpose.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        # Lightning's own internals trip a torch deprecation warning: noise for our users.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        trainer.fit(
            module,
            datamodule=data,
            ckpt_path=state_path if state_path.is_file() else None,
            weights_only=True,
        )
    trainer.save_checkpoint(
        state_path, weights_only=False
    )  # a kill during evaluation keeps the training
    train_seconds = time.monotonic() - started
    if not trainer.is_global_zero:
        return None

    started = time.monotonic()
    device = trainer.strategy.root_device
    scorer = _Scorer(
        model.to(device),
        device,
        image_size,
        batch_size,
        options.num_workers,
        trainer.precision_plugin.forward_context,
        options.progress,
    )
    holdout = scorer.score(split.holdout, "scoring held-out normals", keep_maps=True)
    assert holdout.maps is not None
    threshold = metrics.threshold_from_normals(holdout.scores)
    map_stats = {
        "vmin": float(np.median(holdout.maps)),
        "vmax": float(holdout.scores.max()),
    }
    if map_stats["vmax"] <= map_stats["vmin"]:
        map_stats["vmax"] = map_stats["vmin"] + 1e-6
    history = [dict(entry) for entry in module.history]
    provenance = {
        "preset": options.preset,
        "teachers": options.teachers,
        "seed": run.seed,
        "class_name": run.class_name,
        "dataset": str(options.data),
        "format": split.format,
        "image_size": image_size,
        "epochs": epochs,
        "batch_size": batch_size,
        "world_size": trainer.world_size,
        "global_batch_size": batch_size * trainer.world_size,
        "precision": str(options.precision),
        "num_train": len(split.train),
        "num_holdout": len(split.holdout),
        "train_history": history,
        "pdd_version": __version__,
    }
    model_checkpoint.save(
        run.folder / "model.ckpt",
        model,
        threshold=threshold,
        map_stats=map_stats,
        provenance=provenance,
    )
    result = _evaluate_test(scorer, split, threshold, map_stats, run.folder)
    record = {
        **result,
        **_split_record(split, "split.csv"),
        "preset": options.preset,
        "teachers": options.teachers,
        "teacher_identity": model.teacher_identity(),
        "seed": run.seed,
        "class_name": run.class_name,
        "image_size": image_size,
        "epochs": epochs,
        "batch_size": batch_size,
        "global_batch_size": batch_size * trainer.world_size,
        "world_size": trainer.world_size,
        "precision": str(options.precision),
        "train_history": history,
        "final_train_loss": history[-1]["loss"] if history else None,
        "pdd_version": __version__,
        "timing": {
            "train_seconds": round(train_seconds, 3),
            "eval_seconds": round(time.monotonic() - started, 3),
        },
    }
    _write_json(run.folder / "metrics.json", record)
    _write_report(run.folder)
    state_path.unlink()
    return record


def _split_record(split: DatasetSplit, manifest: str) -> dict[str, Any]:
    return {
        "dataset": str(split.root),
        "format": split.format,
        "split": manifest,
        "num_train": len(split.train),
        "num_holdout": len(split.holdout),
        "num_test": len(split.test),
        "num_test_anomalous": sum(1 for s in split.test if s.label == 1),
        "skipped": [{"path": path, "reason": reason} for path, reason in split.skipped],
        "skipped_count": len(split.skipped),
    }


# --------------------------------------------------------------------------- training


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file and renamed: never half a file."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(checkpoint, path)


class _TrainingStateSaver(Callback):
    """Saves the full training state every ``every_n_steps`` optimiser steps (for ``resume``)."""

    def __init__(self, path: Path, every_n_steps: int) -> None:
        self.path = path
        self.every_n_steps = every_n_steps

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            trainer.save_checkpoint(self.path, weights_only=False)


def _trainer(options: FitOptions, state_path: Path, epochs: int) -> L.Trainer:
    # Lightning's start-up chatter (device summary, logger advertisement) is INFO; ours is printed.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    callbacks: list[Callback] = []
    if options.checkpoint_every_n_steps:
        callbacks.append(
            _TrainingStateSaver(state_path, options.checkpoint_every_n_steps)
        )
    on_cpu = options.accelerator == "cpu" or (
        options.accelerator == "auto" and not torch.cuda.is_available()
    )
    return L.Trainer(
        accelerator=options.accelerator,
        devices=options.devices,
        num_nodes=options.num_nodes,
        strategy=options.strategy,
        precision=options.precision,  # type: ignore[arg-type]
        max_epochs=epochs,
        # CPU kernels are deterministic; some CUDA backward kernels (bilinear upsampling) have no
        # deterministic version, so there torch only warns.
        deterministic=True if on_cpu else "warn",
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # _GlobalBatches shards the data itself
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=options.progress,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(state_path.parent),
    )


class _EpochOrder(Sampler[int]):
    """A permutation of the training set drawn from (seed, epoch): the same order on every process
    and after a restart. Lightning calls ``set_epoch`` before each epoch."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


class _GlobalBatches(Sampler[list[int]]):
    """Batch sampler: global batches of ``batch_size * world_size`` images in ``_EpochOrder``, each
    cut into ``world_size`` contiguous parts (this process gets part ``rank``), from batch
    ``first_batch`` of the epoch on (set by ``_ResumableLoader`` after a restart).
    """

    def __init__(
        self, order: _EpochOrder, batch_size: int, rank: int, world_size: int
    ) -> None:
        self.sampler = order  # Lightning looks for `batch_sampler.sampler.set_epoch`
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.first_batch = 0

    def __len__(self) -> int:
        return math.ceil(self.sampler.size / (self.batch_size * self.world_size))

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.sampler)
        if self.world_size > 1 and len(order) % self.world_size:
            extra = self.world_size - len(order) % self.world_size
            order += (order * extra)[:extra]  # pad, as DistributedSampler does
        global_batch = self.batch_size * self.world_size
        for step in range(self.first_batch, len(self)):
            chunk = order[step * global_batch : (step + 1) * global_batch]
            part = len(chunk) // self.world_size
            yield chunk[self.rank * part : (self.rank + 1) * part]


class _ResumableLoader(DataLoader):
    """A DataLoader Lightning can checkpoint mid-epoch (``state_dict``): it records how many batches
    of which epoch were handed out, so a restart continues with the next batch, not the first."""

    def __init__(
        self, dataset: ImageDataset, batches: _GlobalBatches, num_workers: int
    ) -> None:
        super().__init__(
            dataset,
            batch_sampler=batches,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )
        self.batches = batches
        self._handed_out = 0
        self._restart: tuple[int, int] | None = (
            None  # (epoch, batches done) from a checkpoint
        )

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # A generator: this body runs at the first `next`, after Lightning has set the epoch.
        epoch = self.batches.sampler.epoch
        first = (
            self._restart[1]
            if self._restart is not None and self._restart[0] == epoch
            else 0
        )
        self._restart = None
        self.batches.first_batch = first
        self._handed_out = first
        for batch in super().__iter__():
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        epoch, done = self.batches.sampler.epoch, self._handed_out
        if done >= len(self.batches):
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches": done}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self._restart = (int(state["epoch"]), int(state["batches"]))


class _TrainData(L.LightningDataModule):
    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        batch_size: int,
        seed: int,
        num_workers: int,
    ) -> None:
        super().__init__()
        self.samples = list(samples)
        self.image_size = image_size
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        assert trainer is not None
        batches = _GlobalBatches(
            _EpochOrder(len(self.samples), self.seed),
            self.batch_size,
            trainer.global_rank,
            trainer.world_size,
        )
        return _ResumableLoader(
            ImageDataset(self.samples, self.image_size), batches, self.num_workers
        )


# --------------------------------------------------------------------------- evaluation


@dataclass
class _Scored:
    scores: np.ndarray  # [N] float64
    maps: np.ndarray | None  # [N,S,S] float32 when kept
    masks: np.ndarray | None  # [N,S,S] bool when kept
    # The `extremes` highest and lowest scoring images: index -> (display image, map).
    extremes: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def _extreme_indices(
    scores: np.ndarray, indices: Sequence[int], count: int
) -> set[int]:
    """The ``count`` highest and ``count`` lowest scoring of ``indices`` (ties: lower index first)."""
    ranked = sorted(indices, key=lambda i: (-scores[i], i))
    return set(ranked[:count]) | set(ranked[-count:])


class _Scorer:
    """Runs the model over a list of samples, one process, in dataset order: each image once."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        image_size: int,
        batch_size: int,
        num_workers: int,
        precision_context: Any,
        progress: bool,
    ) -> None:
        self.model = model.eval()
        self.device = device
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.precision_context: Any = precision_context
        self.progress = progress

    def score(
        self,
        samples: Sequence[Sample],
        description: str,
        *,
        keep_maps: bool = False,
        keep_masks: bool = False,
        extremes: int = 0,
    ) -> _Scored:
        """Scores of ``samples`` in order; optionally all maps and masks, and the overlay inputs
        of the ``extremes`` highest and lowest scoring images (kept on the way, no second pass)."""
        dataset = ImageDataset(samples, self.image_size)
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )
        scores = np.empty(len(dataset), dtype=np.float64)
        maps = (
            np.empty((len(dataset), self.image_size, self.image_size), np.float32)
            if keep_maps
            else None
        )
        masks = (
            np.empty((len(dataset), self.image_size, self.image_size), bool)
            if keep_masks
            else None
        )
        seen = np.zeros(len(dataset), dtype=bool)
        kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        with tqdm(
            total=len(dataset),
            desc=description,
            disable=not self.progress,
            file=sys.stderr,
            leave=False,
        ) as bar:
            for batch in loader:
                batch_maps, batch_scores = self._forward(batch["image"])
                index = batch["index"].numpy()
                scores[index] = batch_scores
                seen[index] = True
                if maps is not None:
                    maps[index] = batch_maps
                if masks is not None:
                    masks[index] = batch["mask"][:, 0].numpy() > 0.5
                if extremes:
                    for row, i in enumerate(index.tolist()):
                        kept[i] = (to_display(batch["image"][row]), batch_maps[row])
                    wanted = _extreme_indices(scores, list(kept), extremes)
                    kept = {i: kept[i] for i in wanted}
                bar.update(len(index))
        if not seen.all():
            raise RuntimeError(
                f"{int((~seen).sum())} of {len(seen)} images were not scored"
            )
        return _Scored(scores, maps, masks, kept)

    def _forward(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode(), self.precision_context():
            maps, scores = self.model(images.to(self.device))
        return maps.float().cpu().numpy(), scores.double().cpu().numpy()


def _evaluate_test(
    scorer: _Scorer,
    split: DatasetSplit,
    threshold: float,
    map_stats: Mapping[str, float],
    folder: Path,
) -> dict[str, Any]:
    """Score every test image; metrics, scores.csv and heatmap overlays in ``folder``."""
    if not split.test:
        raise DataError(f"{split.root}: no test images")
    scored = scorer.score(
        split.test,
        "scoring test images",
        keep_maps=split.has_masks,
        keep_masks=split.has_masks,
        extremes=HEATMAPS_PER_END,
    )
    labels = np.array([s.label for s in split.test])
    result: dict[str, Any] = dict(metrics.image_metrics(labels, scored.scores))
    if split.has_masks:
        assert scored.maps is not None and scored.masks is not None
        result.update(metrics.pixel_metrics(scored.masks, scored.maps))
    result["threshold"] = float(threshold)
    result.update(metrics.sensitivity_specificity(labels, scored.scores, threshold))
    result["map_stats"] = dict(map_stats)
    heatmaps = _write_heatmaps(split.test, scored.extremes, map_stats, folder)
    rows = [
        {
            "path": sample.key,
            "label": str(sample.label),
            "score": repr(float(score)),
            "kind": sample.kind,
            "class_name": sample.class_name or "",
            "heatmap": heatmaps.get(index, ""),
        }
        for index, (sample, score) in enumerate(zip(split.test, scored.scores))
    ]
    _write_scores_rows(folder / "scores.csv", rows)
    return result


def _write_heatmaps(
    samples: Sequence[Sample],
    extremes: Mapping[int, tuple[np.ndarray, np.ndarray]],
    map_stats: Mapping[str, float],
    folder: Path,
) -> dict[int, str]:
    """Overlays of the highest and lowest scoring test images, scaled by the checkpoint's statistics."""
    from pdd.report.heatmap import save_overlay

    (folder / "heatmaps").mkdir(parents=True, exist_ok=True)
    written = {}
    for index in sorted(extremes):
        image, amap = extremes[index]
        sample = samples[index]
        stem = re.sub(
            r"[^A-Za-z0-9_.-]+", "_", f"{sample.kind}_{Path(sample.path).stem}"
        )
        if sample.slice_index is not None:
            stem += f"_slice{sample.slice_index}"
        relative = f"heatmaps/{index:05d}_{stem}.png"
        save_overlay(
            folder / relative, image, amap, map_stats["vmin"], map_stats["vmax"]
        )
        written[index] = relative
    return written


# --------------------------------------------------------------------------- files


def _write_scores_rows(path: Path, rows: Sequence[Mapping[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer,
        fieldnames=["path", "label", "score", "kind", "class_name", "heatmap"],
        lineterminator="\n",
    )
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    atomic_write_text(
        path, json.dumps(record, indent=2, sort_keys=False, allow_nan=False) + "\n"
    )


def _write_yaml(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, yaml.safe_dump(dict(data), sort_keys=False))


def _read_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _write_report(folder: Path) -> None:
    from pdd.report.html import write_report

    write_report(folder)
