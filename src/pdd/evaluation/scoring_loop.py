"""Scoring a list of samples through Lightning's predict loop: any accelerator, number of devices
and machines, and precision, with each image scored exactly once across processes.

Lightning gives every process a disjoint share of the images (its unrepeated sampler for
prediction). Each process collects its share (``ScoreCollector``), saves it in a work folder
inside the run folder (shared by every machine of a multi-node run, as the run folder itself must
be), and global rank 0 merges the shares after a barrier. Only rank 0 gets the result.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader
from tqdm import tqdm

from pdd.data import ImageDataset, Sample
from pdd.errors import ConfigError
from pdd.evaluation.scoring import ScoreCollector, Scored

__all__ = ["Devices", "LightningScorer", "build_predict_trainer", "quiet_predict_loop"]

WORK_DIR = ".scoring"


@dataclass(frozen=True)
class Devices:
    """Where and how a model runs, with Lightning's names (as in ``pdd fit``)."""

    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"


def build_predict_trainer(
    devices: Devices, callbacks: Sequence[Any], root: Path, *, distributed_sampler: bool
) -> L.Trainer:
    """A Trainer for Lightning's predict loop; settings Lightning refuses are one ConfigError line."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if devices.accelerator == "gpu" and not torch.cuda.is_available():
        raise ConfigError(
            "--accelerator gpu: no CUDA GPU is available to torch on this machine; "
            "use --accelerator cpu (or auto)"
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*16-mixed.*is not supported by the CPU")
            return L.Trainer(
                accelerator=devices.accelerator,
                devices=devices.devices,
                num_nodes=devices.num_nodes,
                strategy=devices.strategy,
                precision=devices.precision,  # type: ignore[arg-type]
                logger=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                enable_progress_bar=False,
                use_distributed_sampler=distributed_sampler,
                callbacks=list(callbacks),
                default_root_dir=str(root),
            )
    except (MisconfigurationException, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"--accelerator {devices.accelerator} --devices {devices.devices} "
            f"--strategy {devices.strategy} --precision {devices.precision}: {first}"
        ) from None


@contextlib.contextmanager
def quiet_predict_loop() -> Iterator[None]:
    """Lightning's predict-loop warnings that say nothing to our users: frozen teachers are in
    eval mode on purpose, workers are the user's choice, a process may get no batch, a step may
    return nothing (every batch of a share unreadable), and torch's deprecation inside Lightning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        warnings.filterwarnings("ignore", message=r".*does not have many workers")
        warnings.filterwarnings("ignore", message=r"Total length of `DataLoader` across ranks is zero")
        warnings.filterwarnings("ignore", message=r"predict returned None")
        yield


class LightningScorer:
    """Scores samples on the given devices; ``score`` returns the result on global rank 0 only.

    Every process of the run must call ``score`` with the same samples (under DDP every process
    runs the same command, so it does).
    """

    source = "the model"
    """The checkpoint the model comes from, named when its output is not finite."""

    def __init__(
        self,
        model: torch.nn.Module,
        devices: Devices,
        work_root: Path,
        *,
        image_size: int,
        batch_size: int,
        num_workers: int = 0,
        progress: bool = True,
    ) -> None:
        self.model = model.eval()
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress
        self.work = Path(work_root) / WORK_DIR
        self._collecting = _Collect()
        # Accelerator problems fail here, before anything is scored or written.
        self.trainer = build_predict_trainer(
            devices, [self._collecting], self.work, distributed_sampler=True
        )

    @property
    def is_global_zero(self) -> bool:
        return bool(self.trainer.is_global_zero)

    @property
    def precision(self) -> str:
        """The precision Lightning ran with (recorded in results)."""
        return str(self.trainer.precision)

    def score(
        self,
        samples: Sequence[Sample],
        description: str,
        *,
        keep_maps: bool = False,
        keep_masks: bool = False,
        extremes: int = 0,
    ) -> Scored | None:
        """As ``Scorer.score``, across every process; None on processes other than global rank 0."""
        collector = ScoreCollector(
            len(samples), keep_maps=keep_maps, keep_masks=keep_masks, extremes=extremes,
            names=[sample.key for sample in samples], source=self.source,
        )
        self._collecting.start(collector, description, self.progress)
        loader = DataLoader(
            ImageDataset(samples, self.image_size),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )
        with quiet_predict_loop():
            self.trainer.predict(_Forward(self.model), dataloaders=loader, return_predictions=False)
        self._collecting.stop()
        return self._gather(collector)

    def _gather(self, collector: ScoreCollector) -> Scored | None:
        trainer = self.trainer
        if trainer.world_size == 1:
            return collector.result()
        rank = trainer.global_rank
        if rank == 0:
            self.work.mkdir(parents=True, exist_ok=True)
        trainer.strategy.barrier("pdd-scoring-folder")
        collector.save(self.work / f"share-{rank}.npz")
        trainer.strategy.barrier("pdd-scoring-shares")
        if rank != 0:
            return None
        for other in range(1, trainer.world_size):
            collector.merge(collector.load(self.work / f"share-{other}.npz"))
        shutil.rmtree(self.work, ignore_errors=True)
        return collector.result()


class _Forward(L.LightningModule):
    """The model's forward in the predict loop (device placement and precision are Lightning's)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
        maps, scores = self.model(batch["image"])
        return maps.float().cpu().numpy(), scores.double().cpu().numpy()


class _Collect(BasePredictionWriter):
    """Hands every batch's results to the collector as it is produced (memory: one batch)."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.collector: ScoreCollector | None = None
        self.bar: tqdm | None = None
        self.description = ""
        self.progress = False

    def start(self, collector: ScoreCollector, description: str, progress: bool) -> None:
        self.collector, self.description, self.progress = collector, description, progress

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        share = int(sum(trainer.num_predict_batches))
        self.bar = tqdm(
            total=share,
            desc=self.description,
            unit="batch",
            disable=not (self.progress and trainer.is_global_zero),
            file=sys.stderr,
            leave=False,
        )

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[no-untyped-def, override]
        assert self.collector is not None
        maps, scores = prediction
        self.collector.add(
            np.asarray(batch["index"].cpu()), scores, maps, batch["mask"], batch["image"]
        )
        if self.bar is not None:
            self.bar.update(1)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.collector = None, None
