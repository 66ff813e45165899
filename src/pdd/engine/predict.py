"""Scoring new files with a saved model, as scans, through Lightning's predict loop.

What a run writes in its output folder:

- ``scores.csv``: one row per slice/image in input order: ``path`` (``file`` or ``file#slice``),
  ``scan`` (the volume's path or the series' SeriesInstanceUID, empty for a single image),
  ``slice`` (position in the scan), ``score``, ``decision`` (``anomalous`` iff score > the
  checkpoint's threshold; empty when the checkpoint has none), ``heatmap`` (the file holding its
  map: a PNG overlay for an image, the scan's map file/folder for a slice).
- ``volumes.csv``: one row per NIfTI volume or DICOM series: ``scan``, ``kind``, ``patient_id``,
  ``num_slices``, ``score`` (the scan rule over its slice scores), ``decision``, ``max_slice``
  (position of the most anomalous slice), ``rule``, ``map``.
- ``maps/<name>_anomaly.nii.gz`` (NIfTI inputs) and ``dicom/<series UID>/`` (derived DICOM series),
  see ``pdd.engine.scan_maps``; ``heatmaps/*.png`` overlays for 2-D images, coloured with the
  checkpoint's fixed map statistics (never per image).
- ``skipped.csv`` (``path,reason``) and ``notes.csv`` (``scan,note``: series scored as images and
  why) when there is anything to say; ``predict.json``: the options, the scan rule, counts.

Scale: each process scores a disjoint set of whole scans (assigned from the plan, largest load
first), writes its rows to its own part file as they are produced (memory holds one batch and one
scan's maps), and global rank 0 merges the parts in input order at the end. A killed run keeps
its finished scans and the per-slice maps of an unfinished scan; ``resume`` scores only the rest.
"""

from __future__ import annotations

import csv
import heapq
import json
import logging
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from pdd import __version__
from pdd.engine.predict_plan import Item, Plan, open_text, read_complete_rows
from pdd.engine.ranks import is_global_zero_from_env
from pdd.errors import CheckpointError, ConfigError, DataError, PDDError
from pdd.fileio import atomic_write_text

__all__ = [
    "DEFAULT_SCAN_RULE",
    "PredictOptions",
    "PredictResult",
    "parse_scan_rule",
    "predict",
    "resume",
    "scan_score",
    "stored_statistics",
]

ANOMALOUS = "anomalous"
NORMAL = "normal"
SCORES_FILE = "scores.csv"
VOLUMES_FILE = "volumes.csv"
SKIPPED_FILE = "skipped.csv"
NOTES_FILE = "notes.csv"
RUN_FILE = "predict.json"
WORK_DIR = ".partial"
HEATMAP_DIR = "heatmaps"
DEFAULT_SCAN_RULE = "mean-top-3"
"""Scan score = mean of the 3 highest slice scores: on phantom volumes it ranked scans at least as
well as ``max`` for lesions over 1, 3 and 6 slices (benchmarks/README.md, "scan score rule")."""
PATH_ENCODING = (
    "utf-8, surrogateescape: file-name bytes that are not valid UTF-8 are written as those bytes"
)
_RULE = re.compile(r"^(max|mean-top-([1-9][0-9]*))$")
_RESULT_FILES = (SCORES_FILE, VOLUMES_FILE, SKIPPED_FILE, NOTES_FILE)


@dataclass(frozen=True)
class PredictOptions:
    """Everything a predict run depends on; the Lightning fields are as in ``pdd fit``."""

    checkpoint: Path
    inputs: tuple[Path, ...]
    out: Path
    window: tuple[float, float] | None = None
    batch_size: int = 8
    scan_rule: str = DEFAULT_SCAN_RULE
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0


@dataclass
class PredictResult:
    """Totals of a finished run (all processes); rows are in the files, not in memory."""

    out: Path
    threshold: float | None
    scored: int
    anomalous: int
    volumes: int
    skipped: int
    notes: int
    newly_scored: int
    seconds: float
    first_skip: tuple[str, str] | None = None

    @property
    def scores_csv(self) -> Path:
        return self.out / SCORES_FILE

    @property
    def images_per_second(self) -> float:
        """Throughput of this invocation (slices scored now / wall time of the scoring loop)."""
        return self.newly_scored / self.seconds if self.seconds > 0 else 0.0


def parse_scan_rule(text: str) -> int | None:
    """``max`` -> None; ``mean-top-K`` -> K. Anything else is a ConfigError."""
    match = _RULE.match(text)
    if match is None:
        raise ConfigError(f"--scan-score: expected max or mean-top-K (e.g. mean-top-3), got {text!r}")
    return None if match.group(2) is None else int(match.group(2))


def scan_score(scores: Sequence[float], rule: str) -> float:
    """One score for a scan: its highest slice score (``max``) or the mean of its K highest."""
    top = parse_scan_rule(rule)
    values = sorted((float(s) for s in scores), reverse=True)
    if not values:
        raise ValueError("a scan needs at least one slice score")
    return values[0] if top is None else float(np.mean(values[:top]))


def stored_statistics(meta: Mapping[str, Any]) -> tuple[float | None, tuple[float, float] | None]:
    """``(threshold, (vmin, vmax))`` saved at fit time; either is None when the checkpoint lacks it
    (no held-out normals, an imported release): scores are then written without decisions, and
    no PNG overlay is drawn (a per-image colour scale would mislead)."""
    threshold = meta.get("threshold")
    stats = meta.get("map_stats") or {}
    try:
        value = None if threshold is None else float(threshold)
        scale = (float(stats["vmin"]), float(stats["vmax"])) if stats else None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint threshold/heatmap statistics are unreadable ({exc})") from None
    if value is not None and not np.isfinite(value):
        raise CheckpointError(f"checkpoint threshold is not a finite number ({value})")
    if scale is not None and not scale[1] > scale[0]:
        raise CheckpointError(f"checkpoint heatmap range is empty ({scale[0]} .. {scale[1]})")
    return value, scale


def decision(score: float, threshold: float | None) -> str:
    """``anomalous``/``normal`` at the stored threshold; empty without one."""
    if threshold is None:
        return ""
    return ANOMALOUS if score > threshold else NORMAL


# --------------------------------------------------------------------------- entry points


def predict(
    options: PredictOptions, *, on_progress: Callable[[int, int], None] | None = None
) -> PredictResult | None:
    """Score ``options.inputs`` into the new or empty folder ``options.out``.

    Returns the totals on global rank 0 and None on the other processes of a multi-process run.
    Raises ``DataError`` when nothing could be scored (after writing skipped.csv).
    """
    _check_rule_and_batch(options)
    trainer = _trainer(options)  # accelerator problems fail here, before anything is written
    zero = is_global_zero_from_env()
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
    record = _read_record(out)
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


def _check_rule_and_batch(options: PredictOptions) -> None:
    parse_scan_rule(options.scan_rule)
    if options.batch_size < 1:
        raise ConfigError(f"--batch-size: expected a number >= 1, got {options.batch_size}")


def _trainer(options: PredictOptions):  # -> L.Trainer
    """Lightning's Trainer for the predict loop; a device that is not there is a one-line error."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if options.accelerator == "gpu" and not torch.cuda.is_available():
        raise ConfigError(
            "--accelerator gpu: no CUDA GPU is available to torch on this machine; "
            "use --accelerator cpu (or auto)"
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*16-mixed.*is not supported by the CPU")
            return L.Trainer(
                accelerator=options.accelerator,
                devices=options.devices,
                num_nodes=options.num_nodes,
                strategy=options.strategy,
                precision=options.precision,  # type: ignore[arg-type]
                logger=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                enable_progress_bar=False,
                use_distributed_sampler=False,  # scans are assigned to processes by the plan
                callbacks=[_Writer()],
                default_root_dir=str(options.out / WORK_DIR),
            )
    except (MisconfigurationException, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"--accelerator {options.accelerator} --devices {options.devices} "
            f"--strategy {options.strategy} --precision {options.precision}: {first}"
        ) from None


def _refuse_used_folder(out: Path) -> None:
    """A folder with anything in it is another run's (or someone's files): never mix results."""
    if out.exists() and not out.is_dir():
        raise PDDError(f"{out}: output folder is a file")
    if out.is_dir() and any(out.iterdir()):
        if (out / RUN_FILE).is_file():
            raise PDDError(
                f"{out}: holds a predict run already; continue it with `pdd predict --resume {out}` "
                "or choose a new --out"
            )
        raise PDDError(f"{out}: output folder is not empty; choose a new or empty folder")


def _load(checkpoint: Path):  # -> (model, meta)
    from pdd.engine.checkpoint import load

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
        _write_csv(work / "collect_skipped.csv", ("path", "reason"), skipped)
        _write_csv(work / NOTES_FILE, ("scan", "note"), notes)
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


def _read_record(out: Path) -> dict[str, Any]:
    path = out / RUN_FILE
    if not path.is_file():
        raise PDDError(f"{out}: no {RUN_FILE} here; this is not a predict run folder")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            raise ValueError("not an object")
        return record
    except (ValueError, UnicodeDecodeError) as exc:
        raise PDDError(f"{path}: unreadable run record ({exc})") from None


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


@dataclass
class _Context:
    """What every process of a run shares: the plan, the model's statistics, the options."""

    options: PredictOptions
    plan: Plan
    threshold: float | None
    scale: tuple[float, float] | None
    image_size: int
    checkpoint_name: str
    on_progress: Callable[[int, int], None] | None = None
    pending: list[tuple[int, list[int]]] = field(default_factory=list)  # this rank's scans
    previously_scored: int = 0
    precision_used: str = ""


def _execute(
    options: PredictOptions,
    trainer: Any,
    model: torch.nn.Module,
    meta: Mapping[str, Any],
    plan: Plan | None,
    *,
    on_progress: Callable[[int, int], None] | None,
) -> PredictResult | None:
    threshold, scale = stored_statistics(meta)
    context = _Context(
        options=options,
        plan=plan if plan is not None else Plan.load(options.out / WORK_DIR),
        threshold=threshold,
        scale=scale,
        image_size=int(model.config["image_size"]),
        checkpoint_name=options.checkpoint.name,
        on_progress=on_progress,
    )
    writer = next(c for c in trainer.callbacks if isinstance(c, _Writer))
    writer.context = context
    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        warnings.filterwarnings("ignore", message=r".*does not have many workers")
        warnings.filterwarnings("ignore", message=r"Total length of `DataLoader` across ranks is zero")
        warnings.filterwarnings("ignore", message=r"predict returned None")
        trainer.predict(_ScoringModule(model), datamodule=_Data(context), return_predictions=False)
    writer.close(trainer.global_rank)
    context.precision_used = str(trainer.precision)
    if trainer.world_size > 1:
        trainer.strategy.barrier("pdd-predict-merge")
    seconds = time.monotonic() - started
    if not trainer.is_global_zero:
        return None
    return _merge(context, seconds)


def _assign(plan: Plan, done: _Done, world: int) -> list[list[tuple[int, list[int]]]]:
    """Unfinished scans (with their unscored slices) for each process, balanced by slice count."""
    shards: list[list[tuple[int, list[int]]]] = [[] for _ in range(world)]
    loads = [0] * world
    for scan in plan.scans:
        if scan.number in done.scans:
            continue
        indices = range(scan.first, scan.first + scan.count)
        pending = [i for i in indices if i not in done.slices]
        if not scan.is_volume and not pending:
            continue
        rank = loads.index(min(loads))
        shards[rank].append((scan.number, pending))
        loads[rank] += max(len(pending), 1)
    return shards


@dataclass
class _Done:
    """What earlier attempts finished: whole scans (rows written) and slices (map saved/skipped)."""

    scans: set[int] = field(default_factory=set)
    slices: set[int] = field(default_factory=set)
    scored: int = 0


def _read_done(plan: Plan, work: Path) -> _Done:
    done = _Done()
    for path in sorted(work.glob("volumes-*.csv")):
        done.scans.update(int(row[0]) for row in read_complete_rows(path))
    for path in sorted(work.glob("scores-*.csv")):
        for row in read_complete_rows(path):
            index = int(row[0])
            item = plan.items[index]
            if not plan.scans[item.scan].is_volume or item.scan in done.scans:
                done.slices.add(index)
    done.scored = len(done.slices)
    for path in sorted(work.glob("skipped-*.csv")):
        done.slices.update(int(row[0]) for row in read_complete_rows(path))
    slices = work / "slices"
    if slices.is_dir():
        for scan_dir in slices.iterdir():
            if scan_dir.is_dir() and int(scan_dir.name) not in done.scans:
                done.slices.update(int(p.stem) for p in scan_dir.glob("*.npz"))
    return done


class _Dataset(torch.utils.data.Dataset):
    """This process's slices: a file that cannot be read becomes an error entry, not a crash."""

    def __init__(self, items: list[Item], context: _Context) -> None:
        self.items = items
        self.context = context

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> dict[str, Any]:
        from pdd.data import image_format, read_image, to_model_input

        item = self.items[position]
        try:
            window = self.context.options.window
            own_window = window if window is not None and image_format(item.path) == "dicom" else None
            # Bounded decoding: a huge image is reduced while it is read (its overlay too).
            image = read_image(
                item.path, item.slice_index, window=own_window, target_size=self.context.image_size
            )
        except PDDError as exc:
            reason = str(exc).removeprefix(f"{item.path}: ").replace("\n", " ")
            return {"index": item.index, "error": reason}
        keep = not self.context.plan.scans[item.scan].is_volume and self.context.scale is not None
        return {
            "index": item.index,
            "image": to_model_input(image, self.context.image_size),
            "original": image if keep else None,
        }


def _collate(entries: list[dict[str, Any]]) -> dict[str, Any]:
    good = [e for e in entries if "error" not in e]
    return {
        "image": torch.stack([e["image"] for e in good]) if good else None,
        "index": [e["index"] for e in good],
        "original": [e["original"] for e in good],
        "errors": [(e["index"], e["error"]) for e in entries if "error" in e],
    }


class _ScoringModule(L.LightningModule):
    """The model's forward in Lightning's predict loop (device, precision and DDP are Lightning's)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
        if batch["image"] is None:
            return None
        maps, scores = self.model(batch["image"])
        return maps.float().cpu().numpy(), scores.float().cpu().numpy()


class _Data(L.LightningDataModule):
    """Builds each process's loader once the processes exist: rank 0 reads what earlier attempts
    finished and sends every process the same assignment."""

    def __init__(self, context: _Context) -> None:
        super().__init__()
        self.context = context

    def predict_dataloader(self) -> Any:
        trainer = self.trainer
        plan = self.context.plan
        shards = None
        if trainer.is_global_zero:
            done = _read_done(plan, self.context.options.out / WORK_DIR)
            shards = (_assign(plan, done, trainer.world_size), done.scored)
        if trainer.world_size > 1:
            shards = trainer.strategy.broadcast(shards, src=0)
        assert shards is not None
        self.context.pending = shards[0][trainer.global_rank]
        self.context.previously_scored = shards[1]
        items = [plan.items[i] for _, pending in self.context.pending for i in pending]
        return torch.utils.data.DataLoader(
            _Dataset(items, self.context),
            batch_size=self.context.options.batch_size,
            shuffle=False,
            num_workers=self.context.options.num_workers,
            collate_fn=_collate,
        )


class _Writer(BasePredictionWriter):
    """Writes each batch's results as they come (Lightning calls it after every predict step)."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.context: _Context | None = None
        self.sink: _Sink | None = None

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[no-untyped-def, override]
        self._sink(trainer).consume(batch, prediction)

    def _sink(self, trainer: Any) -> _Sink:
        if self.sink is None:
            assert self.context is not None
            self.sink = _Sink(self.context, trainer.global_rank)
        return self.sink

    def close(self, rank: int) -> None:
        """Finish scans whose slices were all scored earlier, and close the part files."""
        if self.context is not None and self.sink is None:
            self.sink = _Sink(self.context, rank)
        if self.sink is not None:
            self.sink.close()


class _Sink:
    """One process's writer: part files named uniquely per process, flushed every batch."""

    def __init__(self, context: _Context, rank: int) -> None:
        self.context = context
        self.rank = rank
        out = context.options.out
        self.out = out
        self.work = out / WORK_DIR
        tag = uuid.uuid4().hex[:12]
        self.scores = open_text(self.work / f"scores-{tag}.csv", "a")
        self.volumes = open_text(self.work / f"volumes-{tag}.csv", "a")
        self.skipped = open_text(self.work / f"skipped-{tag}.csv", "a")
        self.remaining = {number: set(pending) for number, pending in context.pending}
        self.done = 0
        self.total = sum(len(p) for _, p in context.pending)
        for number, pending in context.pending:
            if not pending and context.plan.scans[number].is_volume:
                self._finish_scan(number)

    def consume(self, batch: Mapping[str, Any], prediction: Any) -> None:
        plan = self.context.plan
        for index, reason in batch["errors"]:
            self._row(self.skipped, (index, reason))
            self._slice_done(index, None, None)
        if prediction is not None:
            maps, scores = prediction
            for row, index in enumerate(batch["index"]):
                item = plan.items[index]
                scan = plan.scans[item.scan]
                score = float(scores[row])
                if scan.is_volume:
                    self._slice_done(index, maps[row], score)
                    continue
                if scan.output and batch["original"][row] is not None:
                    from pdd.report.heatmap import save_overlay

                    assert self.context.scale is not None
                    (self.out / scan.output).parent.mkdir(parents=True, exist_ok=True)
                    save_overlay(self.out / scan.output, batch["original"][row], maps[row], *self.context.scale)
                self._row(self.scores, (index, repr(score)))
                self._slice_done(index, None, None)
        for handle in (self.scores, self.volumes, self.skipped):
            handle.flush()
        self.done += len(batch["errors"]) + len(batch["index"])
        if self.context.on_progress is not None and self.rank == 0:
            self.context.on_progress(self.done, self.total)

    @staticmethod
    def _row(handle: Any, values: Sequence[object]) -> None:
        csv.writer(handle, lineterminator="\n").writerow(values)

    def _slice_dir(self, number: int) -> Path:
        return self.work / "slices" / str(number)

    def _slice_done(self, index: int, amap: np.ndarray | None, score: float | None) -> None:
        plan = self.context.plan
        number = plan.items[index].scan
        if not plan.scans[number].is_volume:
            return
        folder = self._slice_dir(number)
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{index}.tmp.npz"
        if amap is None:
            np.savez(partial, score=np.array(np.nan))
        else:
            np.savez(partial, score=np.array(score, dtype=np.float64), map=amap.astype(np.float32))
        os.replace(partial, folder / f"{index}.npz")
        remaining = self.remaining.get(number)
        if remaining is not None:
            remaining.discard(index)
            if not remaining:
                self._finish_scan(number)

    def _finish_scan(self, number: int) -> None:
        """All slices of a scan are in: its map files, its slice rows, then its volume row."""
        from pdd.engine import scan_maps

        scan = self.context.plan.scans[number]
        folder = self._slice_dir(number)
        maps: list[np.ndarray | None] = []
        scores: list[float | None] = []
        for index in range(scan.first, scan.first + scan.count):
            path = folder / f"{index}.npz"
            if not path.is_file():
                maps.append(None)
                scores.append(None)
                continue
            with np.load(path) as saved:
                value = float(saved["score"])
                maps.append(saved["map"] if "map" in saved else None)
                scores.append(None if np.isnan(value) else value)
        scored = [s for s in scores if s is not None]
        if scored:
            items = self.context.plan.items[scan.first : scan.first + scan.count]
            try:
                if scan.kind == "nifti":
                    scan_maps.write_nifti_map(Path(scan.key), maps, self.out / scan.output)
                elif scan.output:
                    scan_maps.write_dicom_series(
                        [item.path for item in items],
                        maps,
                        self.out / scan.output,
                        display_range=self.context.scale,
                        derivation=f"PDD anomaly map (pdd {__version__}, checkpoint "
                        f"{self.context.checkpoint_name}, scan rule {self.context.options.scan_rule})",
                    )
            except (PDDError, OSError) as exc:
                self._row(self.skipped, (scan.first, f"map not written: {exc}".replace("\n", " ")))
            for item, value in zip(items, scores):
                if value is not None:
                    self._row(self.scores, (item.index, repr(value)))
            self.scores.flush()
            best = int(np.nanargmax([np.nan if s is None else s for s in scores]))
            total = scan_score(scored, self.context.options.scan_rule)
            self._row(self.volumes, (number, len(scored), repr(total), best))
            self.volumes.flush()
        shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        for handle in (self.scores, self.volumes, self.skipped):
            handle.close()


# --------------------------------------------------------------------------- merging


def _sorted_rows(pattern: str, work: Path) -> Iterator[list[str]]:
    """Rows of all part files matching ``pattern`` by their first column, each key once."""
    streams = [
        ((int(row[0]), row) for row in read_complete_rows(path)) for path in sorted(work.glob(pattern))
    ]
    last = None
    for key, row in heapq.merge(*streams, key=lambda pair: pair[0]):
        if key != last:
            yield row
            last = key


def _merge(context: _Context, seconds: float) -> PredictResult:
    """Global rank 0, after every process finished: the result files in input order."""
    out, plan, threshold = context.options.out, context.plan, context.threshold
    work = out / WORK_DIR
    scored = anomalous = 0
    with open_text(out / f".{SCORES_FILE}.tmp", "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("path", "scan", "slice", "score", "decision", "heatmap"))
        for row in _sorted_rows("scores-*.csv", work):
            item = plan.items[int(row[0])]
            scan = plan.scans[item.scan]
            value = float(row[1])
            verdict = decision(value, threshold)
            scored += 1
            anomalous += verdict == ANOMALOUS
            writer.writerow(
                (
                    item.key,
                    scan.key if scan.is_volume else "",
                    item.index - scan.first if scan.is_volume else "",
                    row[1],
                    verdict,
                    scan.output,
                )
            )
    volumes = 0
    with open_text(out / f".{VOLUMES_FILE}.tmp", "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(
            ("scan", "kind", "patient_id", "num_slices", "score", "decision", "max_slice", "rule", "map")
        )
        for row in _sorted_rows("volumes-*.csv", work):
            scan = plan.scans[int(row[0])]
            volumes += 1
            writer.writerow(
                (
                    scan.key, scan.kind, scan.patient_id, row[1], row[2],
                    decision(float(row[2]), threshold), row[3], context.options.scan_rule, scan.output,
                )
            )
    skipped = _merge_skipped(context, work)
    notes = _copy_notes(work, out)
    os.replace(out / f".{SCORES_FILE}.tmp", out / SCORES_FILE)
    if volumes:
        os.replace(out / f".{VOLUMES_FILE}.tmp", out / VOLUMES_FILE)
    else:
        (out / f".{VOLUMES_FILE}.tmp").unlink()
    result = PredictResult(
        out=out,
        threshold=threshold,
        scored=scored,
        anomalous=anomalous,
        volumes=volumes,
        skipped=len(skipped),
        notes=notes,
        newly_scored=scored - context.previously_scored,
        seconds=seconds,
        first_skip=skipped[0] if skipped else None,
    )
    record = _read_record(out)
    record.update(
        status="complete",
        scored=scored,
        anomalous=anomalous,
        volumes=volumes,
        skipped=len(skipped),
        notes=notes,
        images_per_second=round(result.images_per_second, 3),
        precision_used=context.precision_used,
    )
    if scored == 0:
        reasons = "; ".join(f"{p}: {why}" for p, why in skipped[:3])
        atomic_write_text(out / RUN_FILE, json.dumps(record, indent=2) + "\n")
        raise DataError(f"none of the inputs could be read ({reasons})")
    atomic_write_text(out / RUN_FILE, json.dumps(record, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return result


def _merge_skipped(context: _Context, work: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    collected = work / "collect_skipped.csv"
    if collected.is_file():
        with open_text(collected, "r") as handle:
            rows += [(r[0], r[1]) for r in list(csv.reader(handle))[1:]]
    rows += [(context.plan.items[int(r[0])].key, r[1]) for r in _sorted_rows("skipped-*.csv", work)]
    target = context.options.out / SKIPPED_FILE
    if rows:
        _write_csv(target, ("path", "reason"), rows)
    return rows


def _copy_notes(work: Path, out: Path) -> int:
    source = work / NOTES_FILE
    if not source.is_file():
        return 0
    with open_text(source, "r") as handle:
        count = max(len(list(csv.reader(handle))) - 1, 0)
    if count:
        shutil.copyfile(source, out / NOTES_FILE)
    return count


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    with open_text(partial, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(partial, path)
