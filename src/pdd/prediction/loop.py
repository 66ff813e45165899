"""What runs inside Lightning's predict loop, in every process of a predict run.

``PredictData`` gives each process its share of the plan (whole scans, minus what earlier
attempts finished), ``ScoringModule`` runs the model, and ``BatchWriter`` appends each batch's
results to this process's own part files as they come: image scores and overlays at once, a
volume's slice maps under ``.partial/slices/`` until the scan is complete, then its map files,
slice rows and volume row. A killed process leaves only whole rows (or a cut-off last line that
readers ignore), so a resumed run can tell exactly what is finished.
"""

from __future__ import annotations

import csv
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from pdd import __version__
from pdd.errors import PDDError
from pdd.finite_output import check_finite
from pdd.prediction.plan import Item, Plan, open_text, read_complete_rows
from pdd.prediction.rules import scan_score
from pdd.prediction.run import WORK_DIR, RunContext

__all__ = ["BatchWriter", "PredictData", "ScoringModule"]


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

    def __init__(self, items: list[Item], context: RunContext) -> None:
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


class ScoringModule(L.LightningModule):
    """The model's forward in Lightning's predict loop (device, precision and DDP are Lightning's)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
        if batch["image"] is None:
            return None
        maps, scores = self.model(batch["image"])
        return maps.float().cpu().numpy(), scores.float().cpu().numpy()


class PredictData(L.LightningDataModule):
    """Builds each process's loader once the processes exist: rank 0 reads what earlier attempts
    finished and sends every process the same assignment."""

    def __init__(self, context: RunContext) -> None:
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


class BatchWriter(BasePredictionWriter):
    """Writes each batch's results as they come (Lightning calls it after every predict step)."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.context: RunContext | None = None
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

    def __init__(self, context: RunContext, rank: int) -> None:
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
            names = [plan.items[index].key for index in batch["index"]]
            check_finite(scores, maps, names, f"checkpoint {self.context.options.checkpoint}")
            for row, index in enumerate(batch["index"]):
                item = plan.items[index]
                scan = plan.scans[item.scan]
                score = float(scores[row])
                if scan.is_volume:
                    self._slice_done(index, maps[row], score, batch["image"][row])
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

    def _slice_done(
        self, index: int, amap: np.ndarray | None, score: float | None, image: torch.Tensor | None = None
    ) -> None:
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
            from pdd.data import to_display

            assert image is not None  # the model input, kept small for the report's scan viewer
            display = np.round(to_display(image).mean(axis=2) * 255).astype(np.uint8)
            np.savez(
                partial, score=np.array(score, dtype=np.float64), map=amap.astype(np.float32), display=display
            )
        os.replace(partial, folder / f"{index}.npz")
        remaining = self.remaining.get(number)
        if remaining is not None:
            remaining.discard(index)
            if not remaining:
                self._finish_scan(number)

    def _finish_scan(self, number: int) -> None:
        """All slices of a scan are in: its map files, its slice rows, then its volume row."""
        from pdd.prediction import scan_maps

        scan = self.context.plan.scans[number]
        folder = self._slice_dir(number)
        maps: list[np.ndarray | None] = []
        scores: list[float | None] = []
        displays: list[np.ndarray | None] = []
        for index in range(scan.first, scan.first + scan.count):
            path = folder / f"{index}.npz"
            if not path.is_file():
                maps.append(None)
                scores.append(None)
                displays.append(None)
                continue
            with np.load(path) as saved:  # a skipped slice has no map (its score is only a marker)
                maps.append(saved.get("map"))
                displays.append(saved.get("display"))
                scores.append(float(saved["score"]) if "map" in saved else None)
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
            self._save_frames(number, maps, displays)
            for item, value in zip(items, scores):
                if value is not None:
                    self._row(self.scores, (item.index, repr(value)))
            self.scores.flush()
            best = int(np.nanargmax([np.nan if s is None else s for s in scores]))
            total = scan_score(scored, self.context.options.scan_rule)
            self._row(self.volumes, (number, len(scored), repr(total), best))
            self.volumes.flush()
        shutil.rmtree(folder, ignore_errors=True)

    def _save_frames(
        self, number: int, maps: list[np.ndarray | None], displays: list[np.ndarray | None]
    ) -> None:
        """The scan's slices and maps at the model's input size, for the report's scan viewer
        (none without a colour scale, as for overlays)."""
        from pdd.report.scan_viewer import FRAMES_DIR, save_scan_frames

        kept = [k for k, (m, d) in enumerate(zip(maps, displays)) if m is not None and d is not None]
        if self.context.scale is None or not kept:
            return
        save_scan_frames(
            self.out / FRAMES_DIR / f"{number:06d}.npz",
            self.context.plan.scans[number].key,
            kept,
            [displays[k] / 255.0 for k in kept],  # type: ignore[operator]
            [maps[k] for k in kept],  # type: ignore[misc]
            self.context.scale,
        )

    def close(self) -> None:
        for handle in (self.scores, self.volumes, self.skipped):
            handle.close()

