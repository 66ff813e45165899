"""Training one sub-run with Lightning: the Trainer, the seeded data order and mid-epoch resume.

The data order is a function of (seed, epoch) only, so every process and every restart sees the same
sequence. Multiple processes (DDP): each global batch (``batch_size x world size``) is cut into one
contiguous part per process (no ``DistributedSampler``), so with the same global batch the optimiser
sees the same images as a 1-process run (with R > 1 processes up to R - 1 images per epoch repeat,
as with ``DistributedSampler``; BatchNorm statistics are per process, as Lightning's default).

The full training state (weights, optimiser, scheduler, loop counters and the position inside the
epoch) is saved atomically to ``training_state.ckpt`` by ``TrainingStateSaver``; Lightning restores
all of it, including ``_ResumableLoader``'s position, from ``ckpt_path``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, Dataset, Sampler

from pdd.data import ImageDataset, Sample
from pdd.fileio import atomic_torch_save
from pdd.training.feature_cache import pixels_key
from pdd.training.options import FitOptions

__all__ = [
    "AtomicCheckpointIO",
    "TrainData",
    "TrainingStateSaver",
    "accumulation",
    "build_trainer",
    "planned_global_batch",
]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file and renamed: never half a file."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(checkpoint, path)


class TrainingStateSaver(Callback):
    """Saves the full training state every ``every_n_steps`` optimiser steps (for ``resume``).

    Only right after an optimiser step: a state saved in the middle of gradient accumulation would
    lose the gradients accumulated so far, and the resumed run would differ.
    """

    def __init__(self, path: Path, every_n_steps: int) -> None:
        self.path = path
        self.every_n_steps = every_n_steps
        self._stepped = False

    def on_before_optimizer_step(self, *args: Any) -> None:
        self._stepped = True

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if self._stepped and trainer.global_step % self.every_n_steps == 0:
            trainer.save_checkpoint(self.path, weights_only=False)
        self._stepped = False


def build_trainer(
    options: FitOptions,
    state_path: Path,
    epochs: int,
    *,
    accumulate: int = 1,
    loggers: list[Logger] | None = None,
) -> L.Trainer:
    """The Lightning Trainer of one sub-run: our data sharding and training-state saving, the
    given loggers (one row per batch).

    ``accumulate`` is the preset's ``train.accumulate_grad_batches``, stated for one device; the
    Trainer accumulates ``accumulation(accumulate, world size)`` batches per optimiser step.
    """
    # Lightning's start-up chatter (device summary, logger advertisement) is INFO; ours is printed.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    callbacks: list[Callback] = []
    if options.checkpoint_every_n_steps:
        callbacks.append(
            TrainingStateSaver(state_path, options.checkpoint_every_n_steps)
        )
    on_cpu = options.accelerator == "cpu" or (
        options.accelerator == "auto" and not torch.cuda.is_available()
    )
    trainer = L.Trainer(
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
        logger=loggers or False,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=options.progress,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(state_path.parent),
    )
    # Known only once the Trainer has resolved devices and nodes; Lightning reads it at run time.
    trainer.accumulate_grad_batches = accumulation(accumulate, trainer.world_size)
    return trainer


def planned_global_batch(options: FitOptions, train: Mapping[str, Any]) -> int | None:
    """The global batch a fit will run with (batch x devices x accumulation), known before the
    Trainer exists when the device count is a number; None for ``devices: auto``."""
    if not isinstance(options.devices, int):
        return None
    world = options.devices * options.num_nodes
    steps = accumulation(int(train.get("accumulate_grad_batches", 1)), world)
    return int(train["batch_size"]) * world * steps


def accumulation(requested: int, world_size: int) -> int:
    """Batches accumulated per optimiser step so that the global batch is what the preset asks for.

    ``train.accumulate_grad_batches`` describes the released launch (pdd-reference: 2 processes x
    batch 10 = global 20). On one device the 2 batches are accumulated; with as many processes as
    the preset's factor (``--devices 2``) there is nothing left to accumulate.
    """
    return max(1, requested // max(1, world_size))


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


class _PixelKeyed(Dataset):
    """``ImageDataset`` samples plus ``pixels_key``: the hash of the preprocessed pixels that the
    teacher-feature cache looks features up by (hashed in the loader's workers)."""

    def __init__(self, images: ImageDataset) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.images[index]
        return {**item, "pixels_key": pixels_key(item["image"])}


class _ResumableLoader(DataLoader):
    """A DataLoader Lightning can checkpoint mid-epoch (``state_dict``): it records how many batches
    of which epoch were handed out, so a restart continues with the next batch, not the first."""

    def __init__(
        self, dataset: Dataset, batches: _GlobalBatches, num_workers: int
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


class TrainData(L.LightningDataModule):
    """The training normals, in the seeded resumable order of ``_GlobalBatches``.

    With ``pixel_keys`` each batch also carries ``pixels_key`` (one hash per image) for the
    teacher-feature cache.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        batch_size: int,
        seed: int,
        num_workers: int,
        *,
        pixel_keys: bool = False,
    ) -> None:
        super().__init__()
        self.samples = list(samples)
        self.image_size = image_size
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.pixel_keys = pixel_keys

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        assert trainer is not None
        batches = _GlobalBatches(
            _EpochOrder(len(self.samples), self.seed),
            self.batch_size,
            trainer.global_rank,
            trainer.world_size,
        )
        images = ImageDataset(self.samples, self.image_size)
        dataset: Dataset = _PixelKeyed(images) if self.pixel_keys else images
        return _ResumableLoader(dataset, batches, self.num_workers)
