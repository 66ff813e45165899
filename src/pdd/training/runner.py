"""``pdd fit`` / ``pdd test`` / ``pdd fit --resume``: the order in which a run happens.

``fit`` runs one *sub-run* per seed (and per class of a multi-class set). A sub-run trains on the
training normals (``training``), picks the decision threshold and heatmap scale on the held-out
normals and scores every test image once (``evaluation``), and writes a complete run folder
(``run_folder``); several sub-runs are then aggregated (``aggregate``). The last epoch is reported;
test images never influence training, selection or thresholds.

Crash safety: every file is written atomically, the training state is saved while training, and
``resume`` continues from it with the options saved in ``config.yaml``.

Multiple processes (DDP): every process runs this code and trains; evaluation and every file write
happen on global rank 0 only, after training, over the full test list: each test image is scored
exactly once.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from pdd import __version__, create_model
from pdd.data import DatasetSplit, list_classes, load_dataset
from pdd.errors import ConfigError, DataError
from pdd.evaluation.evaluate import (
    Calibration,
    calibrate,
    colour_scale,
    evaluate_test,
    score_test,
    split_record,
    stored_class_normal_scores,
    stored_records,
    uncalibrated,
)
from pdd.evaluation.scan_results import write_scan_results
from pdd.evaluation.scoring import Scored, Scorer
from pdd.evaluation.scoring_loop import Devices, LightningScorer
from pdd.report.html import write_report
from pdd.runs import checkpoint as model_checkpoint
from pdd.runs.folder import (
    TRAINING_STATE,
    is_complete,
    read_json,
    refuse_existing_run,
    remove_partial_files,
    write_json,
    write_yaml,
)
from pdd.runs.ranks import is_global_zero_from_env
from pdd.training import feature_cache as teacher_cache
from pdd.training.loggers import build_loggers
from pdd.training.module import AnomalyModule
from pdd.training.options import (
    FitOptions,
    model_overrides,
    normalised,
    options_from_dict,
    options_to_dict,
)
from pdd.training.summary import aggregate_classes, aggregate_seeds
from pdd.training.trainer import TrainData, build_trainer, planned_global_batch

__all__ = ["FitOptions", "fit", "resume", "test"]


def fit(options: FitOptions) -> Path:
    """Train then test (every seed, every class); returns the run folder.

    ``options`` are those of ``pdd fit`` (``FitOptions``); the folder gets ``metrics.json``,
    ``scores.csv``, ``split.csv``, ``config.yaml``, ``model.ckpt`` and ``report.html`` (one
    ``seed_<n>/`` or ``<class>/`` sub-folder each when there are several).

    Example:
        >>> from pathlib import Path
        >>> from pdd.training import runner
        >>> from pdd.training.options import FitOptions
        >>> options = FitOptions(data=Path("/data/headct"), out=Path("runs/headct"), format="headct",
        ...                      preset="pdd", seeds=[0, 1, 2])
        >>> run = runner.fit(options)  # doctest: +SKIP
        >>> runner.resume(run)  # after a crash or Ctrl-C  # doctest: +SKIP
    """
    options = normalised(options)
    if not options.seeds:
        raise ConfigError("no seeds given: need at least one")
    if is_global_zero_from_env():
        refuse_existing_run(options.out)
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
        options = options_from_dict(saved["options"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{config_path}: cannot read the saved fit options ({exc})"
        ) from exc
    options = dataclasses.replace(options, out=run_dir, progress=progress)
    if is_global_zero_from_env():
        remove_partial_files(run_dir)
    return _execute(options)


def test(
    checkpoint: Path,
    data: Path,
    out: Path,
    *,
    format: str = "auto",
    split_file: Path | None = None,
    class_name: str | None = None,
    devices: Devices | None = None,
    batch_size: int | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> Path:
    """Evaluate a saved model on a dataset's test split; returns the run folder.

    Example:
        >>> from pathlib import Path
        >>> from pdd.training import runner
        >>> out = runner.test(Path("runs/headct/seed_0/model.ckpt"), Path("/data/headct"),  # doctest: +SKIP
        ...                   Path("runs/headct-test"), format="headct")

    The threshold and heatmap scale are the checkpoint's (chosen on the training run's held-out
    normals; a checkpoint without a threshold is evaluated without decisions, one without a
    colour scale, e.g. imported from the released code, gets one from this dataset's normals).
    Without ``split_file`` the split is drawn with the checkpoint's training seed, holdout
    fraction and grouping, so a small set without an official split is tested on exactly the
    images its training never saw. A joint model is tested on every class (pooled, per class,
    class mean).

    Scoring runs through Lightning's predict loop on ``devices`` (several devices or machines:
    every process runs this function and scores a disjoint share of the images; global rank 0
    merges them and writes the folder). ``batch_size`` is per device (default: the training's).
    """
    checkpoint, data, out = Path(checkpoint), Path(data), Path(out)
    model, meta = model_checkpoint.load(checkpoint)
    provenance = meta.get("provenance", {})
    seed = int(provenance.get("seed", 0))
    if provenance.get("joint"):
        class_name = None  # a joint model is tested on every class, as it was trained
    elif class_name is None:
        class_name = provenance.get("class_name")
    if is_global_zero_from_env():
        refuse_existing_run(out)
    split = load_dataset(
        data,
        format,
        class_name=class_name,
        seed=seed,
        split_file=split_file,
        holdout_fraction=float(provenance.get("holdout_fraction", 0.1)),
        group_by=provenance.get("group_by"),
    )
    image_size = int(meta["config"]["image_size"])
    if batch_size is None:
        batch_size = int(provenance.get("batch_size") or meta["config"]["train"]["batch_size"])
    devices = devices or Devices()
    scorer = LightningScorer(
        model,
        devices,
        out,
        image_size=image_size,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
    )
    scorer.source = f"checkpoint {checkpoint}"
    started = time.monotonic()
    map_stats, map_stats_from = meta.get("map_stats"), "the checkpoint (its held-out normals)"
    normals = None
    if map_stats is None:  # an imported checkpoint: display scale from this dataset's normals
        normals = scorer.score(split.holdout or split.train, "scoring normals", keep_maps=True)
    scored = score_test(scorer, split)
    if not scorer.is_global_zero:
        return out
    assert scored is not None
    if normals is not None:
        map_stats = colour_scale(normals)
        map_stats_from = "normals of the tested dataset (the checkpoint has no scale)"
    result = evaluate_test(
        scored,
        split,
        meta.get("threshold"),
        map_stats,
        out,
        class_thresholds=meta.get("class_thresholds"),
        normal_scores=meta.get("normal_scores"),
        class_normal_scores=stored_class_normal_scores(meta),
    )
    record = {
        **result,
        **stored_records(meta),
        **split_record(split, "split.csv"),
        "preset": meta["preset"],
        "teachers": meta["config"]["teachers"],
        "teacher_identity": meta["teachers"],
        "seed": seed,
        "joint": bool(provenance.get("joint", False)),
        "map_stats_from": map_stats_from,
        "image_size": image_size,
        "epochs": provenance.get("epochs"),
        "checkpoint": str(checkpoint),
        "trained_on": provenance.get("dataset"),
        "precision": scorer.precision,
        "batch_size": batch_size,
        "world_size": scorer.trainer.world_size,
        "pdd_version": __version__,
        "timing": _scoring_timing(
            time.monotonic() - started, len(split.test) + (0 if normals is None else len(normals.scores))
        ),
    }
    split.write_manifest(out / "split.csv")
    options = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "format": format,
        "split_file": None if split_file is None else str(split_file),
        "class_name": class_name,
        **dataclasses.asdict(devices),
        "batch_size": batch_size,
        "num_workers": num_workers,
    }
    write_yaml(
        out / "config.yaml",
        {"pdd_version": __version__, "test_options": options, "model": meta["config"]},
    )
    device = scorer.trainer.strategy.root_device  # the viewer's few scans: this process only
    viewer_scorer = Scorer(
        model.to(device), device, image_size, batch_size, num_workers,
        scorer.trainer.precision_plugin.forward_context, progress,
    )  # fmt: skip
    viewer_scorer.source = scorer.source
    _write_scans(out, split, scored, viewer_scorer, meta, map_stats)
    write_json(out / "metrics.json", record)
    write_report(out)
    return out


def _scoring_timing(seconds: float, images: int) -> dict[str, float | int]:
    """How long `pdd test` took to score and evaluate, and its throughput (all processes)."""
    return {
        "eval_seconds": round(seconds, 3),
        "images_scored": images,
        "images_per_second": round(images / seconds, 3) if seconds > 0 else 0.0,
    }


# --------------------------------------------------------------------------- sub-runs


@dataclass(frozen=True)
class _SubRun:
    seed: int
    class_name: str | None
    folder: Path


def _plan(options: FitOptions) -> list[_SubRun]:
    """One sub-run per seed and class (joint: per seed), with the folder it writes."""
    if options.joint:
        _check_joint(options)
        classes: list[str | None] = [None]  # one model; the split holds every class
    elif options.class_name is not None:
        classes = [options.class_name]
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


def _check_joint(options: FitOptions) -> None:
    if options.class_name is not None:
        raise ConfigError(
            "--joint trains one model on every class; it cannot be combined with --class"
        )
    if options.split_file is None and len(list_classes(options.data, options.format)) < 2:
        raise ConfigError(
            f"{options.data}: --joint needs a multi-class dataset (unimedical, bmad, or a folder "
            "with one sub-folder per class)"
        )


def _check_class_test_sets(options: FitOptions, split: Any) -> None:
    """A joint model is evaluated on every class it learns: a class without normal or anomalous
    test images has undefined metrics, found here before training rather than after it."""
    classes = sorted({s.class_name or "" for s in (*split.train, *split.holdout, *split.test)})
    for name in classes:
        labels = {s.label for s in split.test if (s.class_name or "") == name}
        missing = (
            "no test images" if not labels
            else "no anomalous test images" if 1 not in labels
            else "no normal test images" if 0 not in labels
            else None
        )  # fmt: skip
        if missing:
            raise DataError(
                f"{options.data}: class {name!r} has {missing}, so its metrics are undefined; "
                "add them, or train the other classes without --joint"
            )


def _execute(options: FitOptions) -> Path:
    seeds, runs = options.seeds, _plan(options)
    results: dict[_SubRun, dict[str, Any] | None] = {
        run: _run_one(options, run) for run in runs
    }
    if not is_global_zero_from_env():
        return options.out
    if len(runs) == 1:
        return options.out
    seed_records: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        mine = [run for run in runs if run.seed == seed]
        if len(mine) == 1:
            seed_records[seed] = results[mine[0]] or read_json(mine[0].folder / "metrics.json")
        else:
            seed_dir = mine[0].folder.parent
            per_class = {
                run.class_name: results[run] or read_json(run.folder / "metrics.json")
                for run in mine
            }
            seed_records[seed] = aggregate_classes(seed_dir, per_class, options)
    if len(seeds) > 1:
        aggregate_seeds(options, seed_records)
    return options.out


def _run_one(options: FitOptions, run: _SubRun) -> dict[str, Any] | None:
    """Train and evaluate one (seed, class); returns its metrics on rank 0, None elsewhere/when done."""
    state_path = run.folder / TRAINING_STATE
    if is_complete(run.folder):
        return None
    leader = is_global_zero_from_env()
    L.seed_everything(run.seed, workers=True, verbose=False)
    split = load_dataset(
        options.data,
        options.format,
        class_name=run.class_name,
        seed=run.seed,
        split_file=options.split_file,
        holdout_fraction=options.holdout_fraction,
        group_by=options.group_by,
    )
    model = create_model(options.preset, **model_overrides(options))
    train_config = model.config["train"]
    image_size, epochs, batch_size = (
        int(model.config["image_size"]),
        int(train_config["epochs"]),
        int(train_config["batch_size"]),
    )
    if not split.holdout and options.holdout_fraction > 0:
        raise DataError(
            f"{options.data}: no held-out normal images to choose the threshold on "
            f"({len(split.train)} training normals); add normal images, pass a split file with a "
            "holdout, or train on all of them without a threshold (--holdout-fraction 0)"
        )
    if options.joint:
        _check_class_test_sets(options, split)
    if leader:
        _write_run_config(options, run, model.config, split)

    feature_cache = teacher_cache.for_training(
        options.feature_cache, model, len(split.train), batch_size, options.feature_cache_dtype
    )
    module = AnomalyModule(model, feature_cache)
    trainer = build_trainer(
        options,
        state_path,
        epochs,
        accumulate=int(train_config.get("accumulate_grad_batches", 1)),
        loggers=build_loggers(options.logger, run.folder, _run_name(options, run)),
    )
    data = TrainData(
        split.train, image_size, batch_size, run.seed, options.num_workers,
        pixel_keys=feature_cache is not None,
    )
    if leader and options.progress and feature_cache is not None:
        print(feature_cache.describe())
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
    if options.progress and feature_cache is not None:
        print(feature_cache.summary())

    started = time.monotonic()
    device = trainer.strategy.root_device
    scorer = Scorer(
        model.to(device),
        device,
        image_size,
        batch_size,
        options.num_workers,
        trainer.precision_plugin.forward_context,
        options.progress,
    )
    scorer.source = f"the model trained in {options.out}"
    calibration = _calibrate(scorer, split, options.fpr)
    history = [dict(entry) for entry in module.history]
    batches = {
        "batch_size": batch_size,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "world_size": trainer.world_size,
        "global_batch_size": batch_size * trainer.world_size * trainer.accumulate_grad_batches,
    }
    about = {
        "preset": options.preset,
        "teachers": options.teachers,
        "seed": run.seed,
        "class_name": run.class_name,
        "joint": options.joint,
        "holdout_fraction": options.holdout_fraction,
        "group_by": options.group_by,
        "image_size": image_size,
        "epochs": epochs,
        **batches,
        "precision": str(options.precision),
        "train_history": history,
        "pdd_version": __version__,
    }
    provenance = {
        **about,
        "dataset": str(options.data),
        "format": split.format,
        "num_train": len(split.train),
        "num_holdout": len(split.holdout),
    }
    model_checkpoint.save(
        run.folder / "model.ckpt", model, **calibration.checkpoint_meta(), provenance=provenance
    )
    scored = score_test(scorer, split)
    assert scored is not None  # one process scores here
    result = evaluate_test(
        scored,
        split,
        calibration.threshold,
        calibration.map_stats,
        run.folder,
        class_thresholds=calibration.class_thresholds,
        normal_scores=calibration.normal_scores,
        class_normal_scores=calibration.class_normal_scores,
    )
    _write_scans(run.folder, split, scored, scorer, calibration.checkpoint_meta(), calibration.map_stats)
    record = {
        **result,
        **calibration.record(),
        **split_record(split, "split.csv"),
        **about,
        "teacher_identity": model.teacher_identity(),
        "map_stats_from": calibration.map_stats_from,
        "final_train_loss": history[-1]["loss"] if history else None,
        # this process's (rank 0's) hits and misses
        "feature_cache": feature_cache.record()
        if feature_cache is not None
        else teacher_cache.off_record(options.feature_cache, options.feature_cache_dtype),
        "timing": {
            "train_seconds": round(train_seconds, 3),
            "eval_seconds": round(time.monotonic() - started, 3),
        },
    }
    write_json(run.folder / "metrics.json", record)
    write_report(run.folder)
    state_path.unlink()
    return record


def _write_scans(
    folder: Path,
    split: DatasetSplit,
    scored: Scored,
    scorer: Scorer,
    meta: Mapping[str, Any],
    map_stats: Mapping[str, float],
) -> None:
    """volumes.csv and the report's scan viewer frames when the test set holds scans."""
    write_scan_results(
        folder, split.test, scored.scores, scorer, meta, (map_stats["vmin"], map_stats["vmax"])
    )


def _run_name(options: FitOptions, run: _SubRun) -> str:
    parts = [options.preset, f"seed_{run.seed}"]
    if run.class_name is not None:
        parts.append(run.class_name)
    return "/".join(parts)


def _write_run_config(
    options: FitOptions, run: _SubRun, model_config: Mapping[str, Any], split: DatasetSplit
) -> None:
    """``config.yaml`` (the top-level one covers all sub-runs; each sub-run folder has its own)
    and ``split.csv``, written before training so a crash can be resumed."""
    run.folder.mkdir(parents=True, exist_ok=True)
    train = model_config["train"]
    resolved = dataclasses.replace(
        options,
        image_size=int(model_config["image_size"]),
        epochs=int(train["epochs"]),
        batch_size=int(train["batch_size"]),
    )
    config = {
        "pdd_version": __version__,
        # batch per device x devices x accumulated batches (None: decided by the devices found)
        "global_batch_size": planned_global_batch(options, train),
        "options": options_to_dict(resolved),
        "model": dict(model_config),
    }
    if not (options.out / "config.yaml").exists():
        write_yaml(options.out / "config.yaml", config)
    if run.folder != options.out:
        mine = dataclasses.replace(
            resolved, seeds=[run.seed], class_name=run.class_name, out=run.folder
        )
        write_yaml(run.folder / "config.yaml", dict(config, options=options_to_dict(mine)))
    split.write_manifest(run.folder / "split.csv")


def _calibrate(scorer: Scorer, split: DatasetSplit, fpr: float) -> Calibration:
    """Threshold at false-alarm rate ``fpr`` and colour scale from the held-out normals; with none
    held out (holdout fraction 0) no threshold, and the colour scale from the training normals
    (display only)."""
    if not split.holdout:
        normals = scorer.score(split.train, "scoring training normals", keep_maps=True)
        return uncalibrated(normals, "training normals (no holdout)")
    holdout = scorer.score(split.holdout, "scoring held-out normals", keep_maps=True)
    return calibrate(holdout, split.holdout, fpr)
