"""Scoring new files with a saved model, as scans, through Lightning's predict loop.

What a run writes in its output folder:

- ``scores.csv``: one row per slice/image in input order: ``path`` (``file`` or ``file#slice``),
  ``scan`` (the volume's path or the series' SeriesInstanceUID, empty for a single image),
  ``slice`` (position in the scan), ``score``, ``decision`` (``anomalous`` iff score > the
  checkpoint's threshold; empty when the checkpoint has none), ``heatmap`` (the file holding its
  map: a PNG overlay for an image, the scan's map file/folder for a slice), ``p_value`` (against
  the checkpoint's stored held-out normal scores; empty for a checkpoint without them).
- ``volumes.csv``: one row per NIfTI volume or DICOM series: ``scan``, ``kind``, ``patient_id``,
  ``num_slices``, ``score`` (the scan rule over its slice scores), ``decision``, ``max_slice``
  (position of the most anomalous slice), ``rule``, ``map``, ``p_value``; a checkpoint calibrated
  on normal volumes with the same rule decides scans by its scan threshold and gives their
  p-values against its normal scan scores (otherwise: the slice threshold, no p-value).
- ``maps/<name>_anomaly.nii.gz`` (NIfTI inputs) and ``dicom/<series UID>/`` (derived DICOM series),
  see ``pdd.prediction.scan_maps``; ``heatmaps/*.png`` overlays for 2-D images, coloured with the
  checkpoint's fixed map statistics (never per image).
- ``skipped.csv`` (``path,reason``) and ``notes.csv`` (``scan,note``: series scored as images and
  why) when there is anything to say; ``predict.json``: the options, the scan rule, counts.

Scale: each process scores a disjoint set of whole scans (assigned from the plan, largest load
first), writes its rows to its own part file as they are produced (memory holds one batch and one
scan's maps), and global rank 0 merges the parts in input order at the end. A killed run keeps
its finished scans and the per-slice maps of an unfinished scan; ``resume`` scores only the rest.

Modules: this one holds the entry points and the setup (checks, Trainer, inputs -> plan, run
record); ``predict_loop`` what runs inside Lightning's predict loop; ``predict_merge`` the result
files; ``predict_run`` the options, file names and context they share; ``predict_rules`` the scan
score rule, stored threshold and decision; ``predict_plan`` the numbered work list.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch

from pdd import __version__
from pdd.errors import CheckpointError, ConfigError, DataError, PDDError
from pdd.evaluation.scoring_loop import (
    Devices,
    build_predict_trainer,
    quiet_predict_loop,
)
from pdd.fileio import atomic_write_text
from pdd.finite_output import NonFiniteOutput
from pdd.prediction.loop import BatchWriter, PredictData, ScoringModule
from pdd.prediction.merge import merge_parts
from pdd.prediction.plan import Plan
from pdd.prediction.rules import (
    DEFAULT_SCAN_RULE,
    parse_scan_rule,
    scan_reference,
    scan_score,
    stored_normal_scores,
    stored_statistics,
)
from pdd.prediction.run import (
    COLLECTED_SKIPS_FILE,
    NOTES_FILE,
    PATH_ENCODING,
    RUN_FILE,
    SKIPPED_FILE,
    VOLUMES_FILE,
    WORK_DIR,
    PredictOptions,
    PredictResult,
    RunContext,
    read_record,
    write_csv,
)
from pdd.runs.lock import LOCK_NAME, run_lock
from pdd.runs.ranks import is_global_zero_from_env

__all__ = [
    "DEFAULT_SCAN_RULE",
    "NOTES_FILE",
    "SKIPPED_FILE",
    "VOLUMES_FILE",
    "PredictOptions",
    "PredictResult",
    "parse_scan_rule",
    "predict",
    "resume",
    "scan_score",
    "stored_statistics",
]


# --------------------------------------------------------------------------- entry points


def predict(
    options: PredictOptions, *, on_progress: Callable[[int, int], None] | None = None
) -> PredictResult | None:
    """Score ``options.inputs`` into the new or empty folder ``options.out``.

    Example:
        >>> from pathlib import Path
        >>> from pdd.prediction.predict import PredictOptions, predict, resume
        >>> options = PredictOptions(checkpoint=Path("runs/headct/seed_0/model.ckpt"),
        ...                          inputs=(Path("/data/new_scans"),), out=Path("runs/new"))
        >>> result = predict(options)  # doctest: +SKIP
        >>> result.scored, result.anomalous, result.scores_csv  # doctest: +SKIP
        >>> result = resume(Path("runs/new"))  # after an interruption  # doctest: +SKIP

    Returns the totals on global rank 0 and None on the other processes of a multi-process run.
    Raises ``DataError`` when nothing could be scored (after writing skipped.csv).
    """
    _check_rule_and_batch(options)
    trainer = _trainer(options)  # accelerator problems fail here, before anything is written
    zero = is_global_zero_from_env()
    with _run_lock(options.out):
        if zero:
            _refuse_used_folder(options.out)
        model, meta = _load(options.checkpoint)
        plan = None
        if zero or not Plan.exists(options.out / WORK_DIR):
            # Rank 0 writes the plan; processes started beside it (SLURM) may not see it yet and
            # build the same one from the same inputs.
            plan = _make_plan(options, meta, write=zero)
        return _execute(options, trainer, model, meta, plan, on_progress=on_progress)


def resume(
    out: Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> PredictResult | None:
    """Continue the predict run in ``out`` without scoring finished inputs again.

    ``overrides`` may change how it runs (``accelerator``, ``devices``, ``num_nodes``,
    ``strategy``, ``batch_size``, ``num_workers``), never what it computes.
    """
    read_record(out)  # not a predict run's folder: refused before the lock creates anything
    with _run_lock(out):
        return _resume(out, overrides, on_progress)


def _resume(
    out: Path,
    overrides: Mapping[str, Any] | None,
    on_progress: Callable[[int, int], None] | None,
) -> PredictResult | None:
    record = read_record(out)
    allowed = {"accelerator", "devices", "num_nodes", "strategy", "batch_size", "num_workers"}
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    refused = sorted(set(changes) - allowed)
    if refused:
        raise ConfigError(f"--resume: {', '.join(refused)} cannot change when resuming {out}")
    options = replace(_options_from_record(record, out), **changes)
    _check_rule_and_batch(options)
    _check_checkpoint_unchanged(record, options.checkpoint)
    trainer = _trainer(options)
    if not Plan.exists(out / WORK_DIR):
        if record.get("status") == "complete":
            raise PDDError(f"{out}: this predict run is already complete; nothing to resume")
        raise PDDError(f"{out}: the run's work list ({WORK_DIR}/) is missing; it cannot be resumed")
    model, meta = _load(options.checkpoint)
    return _execute(options, trainer, model, meta, None, on_progress=on_progress)


# --------------------------------------------------------------------------- setup


def _run_lock(out: Path) -> contextlib.AbstractContextManager[object]:
    """The folder's lock (``pdd.runs.lock``, as ``pdd fit`` holds it) for the whole run, held by
    global rank 0, the process that writes the result files: a second ``pdd predict`` or
    ``--resume`` on the same folder is a one-line error naming the holder's pid."""
    return run_lock(out) if is_global_zero_from_env() else contextlib.nullcontext()


def _check_rule_and_batch(options: PredictOptions) -> None:
    parse_scan_rule(options.scan_rule)
    if options.batch_size < 1:
        raise ConfigError(f"--batch-size: expected a number >= 1, got {options.batch_size}")


def _trainer(options: PredictOptions) -> L.Trainer:
    """Lightning's Trainer for the predict loop; scans are assigned to processes by the plan, so
    Lightning's own sampler is off. A device that is not there is a one-line error."""
    devices = Devices(
        accelerator=options.accelerator,
        devices=options.devices,
        num_nodes=options.num_nodes,
        strategy=options.strategy,
        precision=options.precision,
    )
    return build_predict_trainer(
        devices, [BatchWriter()], options.out / WORK_DIR, distributed_sampler=False
    )


def _refuse_used_folder(out: Path) -> None:
    """A folder with anything in it is another run's (or someone's files): never mix results."""
    if out.exists() and not out.is_dir():
        raise PDDError(f"{out}: output folder is a file")
    if out.is_dir() and any(entry.name != LOCK_NAME for entry in out.iterdir()):
        if (out / RUN_FILE).is_file():
            raise PDDError(
                f"{out}: holds a predict run already; continue it with `pdd predict --resume {out}` "
                "or choose a new --out"
            )
        raise PDDError(f"{out}: output folder is not empty; choose a new or empty folder")


def _load(checkpoint: Path):  # -> (model, meta)
    from pdd.runs.checkpoint import load

    return load(checkpoint)


def _make_plan(options: PredictOptions, meta: Mapping[str, Any], *, write: bool) -> Plan:
    """Collect the inputs (never inside the output folder), group them into scans, number them."""
    from pdd.data import collect_inputs
    from pdd.data.scans import group_scans

    threshold, scale = stored_statistics(meta)
    skipped: list[tuple[str, str]] = []
    samples = collect_inputs([Path(p) for p in options.inputs], skipped=skipped)
    # collect_inputs takes each file once (links resolved). Results of a predict run, this one's
    # included (a resumed or second process sees its predict.json), are never inputs.
    run_folders: dict[Path, Path | None] = {}
    ignored: dict[Path, int] = {}
    unique = []
    for sample in samples:
        earlier = _predict_run_above(Path(os.path.realpath(sample.path)), run_folders)
        if earlier is None:
            unique.append(sample)
        else:
            ignored[earlier] = ignored.get(earlier, 0) + 1
    notes = [
        (str(folder), f"{count} file(s) inside a predict run's folder not scored")
        for folder, count in ignored.items()
    ]
    skipped = [
        (p, why) for p, why in skipped if _predict_run_above(Path(os.path.realpath(p)), run_folders) is None
    ]
    if not unique and not skipped:
        raise DataError(f"no images found in {', '.join(str(p) for p in options.inputs)}")
    scans = group_scans(unique, notes)
    plan = Plan.build(scans, overlays=scale is not None)
    if write:
        work = options.out / WORK_DIR
        try:
            work.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PDDError(f"{options.out}: cannot write to output folder: {exc.strerror or exc}") from exc
        write_csv(work / COLLECTED_SKIPS_FILE, ("path", "reason"), skipped)
        write_csv(work / NOTES_FILE, ("scan", "note"), notes)
        record = {
            "pdd_version": __version__,
            "status": "running",
            **_options_record(options),
            "checkpoint_size": options.checkpoint.stat().st_size,
            "checkpoint_mtime_ns": options.checkpoint.stat().st_mtime_ns,
            "threshold": threshold,
            "map_stats": None if scale is None else {"vmin": scale[0], "vmax": scale[1]},
            "path_encoding": PATH_ENCODING,
        }
        atomic_write_text(options.out / RUN_FILE, json.dumps(record, indent=2) + "\n")
        plan.save(work)  # last: a complete plan marks a started run
    return plan


def _predict_run_above(path: Path, cache: dict[Path, Path | None]) -> Path | None:
    """The nearest folder above ``path`` that holds a predict run (its predict.json), if any."""
    folder = path.parent
    if folder not in cache:
        if (folder / RUN_FILE).is_file():
            cache[folder] = folder
        else:
            cache[folder] = None if folder.parent == folder else _predict_run_above(folder, cache)
    return cache[folder]


def _options_record(options: PredictOptions) -> dict[str, Any]:
    values = asdict(options)
    values["checkpoint"] = str(Path(options.checkpoint).resolve())
    values["inputs"] = [str(Path(p).resolve()) for p in options.inputs]
    values["out"] = str(options.out)
    values["window"] = None if options.window is None else list(options.window)
    return values


def _options_from_record(record: Mapping[str, Any], out: Path) -> PredictOptions:
    try:
        window = record.get("window")
        return PredictOptions(
            checkpoint=Path(record["checkpoint"]),
            inputs=tuple(Path(p) for p in record["inputs"]),
            out=out,
            window=None if window is None else (float(window[0]), float(window[1])),
            batch_size=int(record["batch_size"]),
            scan_rule=str(record["scan_rule"]),
            accelerator=str(record["accelerator"]),
            devices=record["devices"],
            num_nodes=int(record["num_nodes"]),
            strategy=str(record["strategy"]),
            precision=str(record["precision"]),
            num_workers=int(record.get("num_workers", 0)),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise PDDError(f"{out / RUN_FILE}: run record lacks a usable {exc}") from None


def _check_checkpoint_unchanged(record: Mapping[str, Any], checkpoint: Path) -> None:
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint}: the run's checkpoint is gone; it cannot be resumed")
    stat = checkpoint.stat()
    if (stat.st_size, stat.st_mtime_ns) != (record.get("checkpoint_size"), record.get("checkpoint_mtime_ns")):
        raise CheckpointError(
            f"{checkpoint}: changed since the run started; resuming would mix two models' scores"
        )


# --------------------------------------------------------------------------- the run


def _execute(
    options: PredictOptions,
    trainer: Any,
    model: torch.nn.Module,
    meta: Mapping[str, Any],
    plan: Plan | None,
    *,
    on_progress: Callable[[int, int], None] | None,
) -> PredictResult | None:
    """This process's part of the run through Lightning's predict loop; rank 0 then merges."""
    threshold, scale = stored_statistics(meta)
    context = RunContext(
        options=options,
        plan=plan if plan is not None else Plan.load(options.out / WORK_DIR),
        threshold=threshold,
        scale=scale,
        image_size=int(model.config["image_size"]),
        checkpoint_name=options.checkpoint.name,
        on_progress=on_progress,
        normal_scores=stored_normal_scores(meta),
        scan_reference=scan_reference(meta, options.scan_rule),
    )
    writer = next(c for c in trainer.callbacks if isinstance(c, BatchWriter))
    writer.context = context
    started = time.monotonic()
    try:
        with quiet_predict_loop():
            trainer.predict(ScoringModule(model), datamodule=PredictData(context), return_predictions=False)
    except NonFiniteOutput as exc:
        if writer.sink is not None:
            writer.sink.close()
        if trainer.is_global_zero:
            _record_failure(options.out, str(exc))
        raise
    writer.close(trainer.global_rank)
    context.precision_used = str(trainer.precision)
    if trainer.world_size > 1:
        trainer.strategy.barrier("pdd-predict-merge")
    seconds = time.monotonic() - started
    if not trainer.is_global_zero:
        return None
    return merge_parts(context, seconds)


def _record_failure(out: Path, message: str) -> None:
    """A run that cannot give results (a model that outputs NaN) says so in its record, never
    ``running`` or ``complete``; scores written so far stay in the work folder."""
    record = read_record(out)
    record.update(status="failed", error=message)
    atomic_write_text(out / RUN_FILE, json.dumps(record, indent=2) + "\n")
