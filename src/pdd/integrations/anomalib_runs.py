"""An anomalib model as one cell of ``pdd benchmark``: trained and scored by anomalib, judged by pdd.

Per seed, exactly as ``pdd fit`` does for our presets:

* the split is ``pdd.data.load_dataset`` with the seed, holdout fraction and split file (the same
  group-aware split, written to ``split.csv``);
* anomalib's ``Engine.fit`` trains the model (its own Lightning module and schedule) on a
  datamodule over the split's training normals, and ``Engine.predict`` scores the held-out normals
  and the test images;
* preprocessing: our readers decode every image and mask (``pdd.data.ImageDataset``: file ->
  RGB in [0, 1] -> S x S, antialiased bilinear; masks nearest), the ImageNet normalisation is
  undone, and the model's own anomalib pre-processor (its ``configure_pre_processor`` at S x S,
  e.g. resize and ImageNet normalisation) runs inside anomalib's loop;
* the raw image scores and anomaly maps (no anomalib post-processing) go to OUR evaluation code:
  ``pdd.evaluation.evaluate`` picks the threshold and colour scale on the held-out normals and
  computes the image and pixel metrics, scores.csv and the heatmaps; the run folder is an ordinary
  one (metrics.json, scores.csv, split.csv, config.yaml, report.html).

``trained_images.txt`` lists every image anomalib's training loop received (as Lightning handed
the batches to the model), so anyone can check it against ``split.csv``'s train rows.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from anomalib.data.dataclasses.torch import ImageBatch, ImageItem
from anomalib.engine import Engine
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

from pdd import __version__
from pdd.data import DatasetSplit, ImageDataset, Sample, load_dataset, to_display
from pdd.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pdd.errors import DataError, WeightsError
from pdd.evaluation.evaluate import (
    Calibration,
    calibrate,
    evaluate_test,
    score_test,
    split_record,
    uncalibrated,
)
from pdd.evaluation.scoring import ScoreCollector, Scored, extreme_indices
from pdd.evaluation.scoring_loop import quiet_predict_loop
from pdd.fileio import atomic_write_text
from pdd.integrations.anomalib_models import (
    DEFAULT_IMAGE_SIZE,
    AnomalibEntry,
    anomalib_version,
    build_model,
    model_arguments,
)
from pdd.report.html import write_report
from pdd.runs.folder import is_complete, read_json, write_json, write_yaml
from pdd.training.options import FitOptions
from pdd.training.summary import aggregate_seeds

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_IMAGE_SIZE", "AnomalibCell", "AnomalibScorer", "run_cell"]

DEFAULT_BATCH_SIZE = 32
"""When neither the suite nor the entry gives a batch size (anomalib's datamodules' default)."""
TRAINED_IMAGES = "trained_images.txt"


@dataclass(frozen=True)
class AnomalibCell:
    """One anomalib model on one dataset: the ``FitOptions`` our presets get in the same grid
    cell (data, split, seeds, sizes, fpr, devices), with the entry's own epochs / batch size."""

    entry: AnomalibEntry
    options: FitOptions
    dataset_name: str = "data"

    @property
    def size(self) -> int:
        return self.options.image_size or DEFAULT_IMAGE_SIZE

    @property
    def batch(self) -> int:
        return self.entry.batch_size or self.options.batch_size or DEFAULT_BATCH_SIZE

    @property
    def max_epochs(self) -> int | None:
        return self.entry.epochs or self.options.epochs


def run_cell(cell: AnomalibCell) -> Path:
    """Every seed of the cell (finished seeds are kept), then the mean over seeds; the folder."""
    seeds = [int(s) for s in cell.options.seeds]
    records: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        folder = cell.options.out / f"seed_{seed}" if len(seeds) > 1 else cell.options.out
        if is_complete(folder):
            records[seed] = read_json(folder / "metrics.json")
        else:
            records[seed] = _run_seed(cell, seed, folder)
    if len(seeds) > 1:
        write_yaml(cell.options.out / "config.yaml", _config(cell, None))
        aggregate_seeds(FitOptions(data=cell.options.data, out=cell.options.out), records)
    return cell.options.out


def _run_seed(cell: AnomalibCell, seed: int, folder: Path) -> dict[str, Any]:
    L.seed_everything(seed, workers=True, verbose=False)
    split = load_dataset(
        cell.options.data,
        cell.options.format,
        class_name=None if cell.options.joint else cell.options.class_name,
        seed=seed,
        split_file=cell.options.split_file,
        holdout_fraction=cell.options.holdout_fraction,
    )
    if not split.holdout and cell.options.holdout_fraction > 0:
        raise DataError(
            f"{cell.options.data}: no held-out normal images to choose the threshold on "
            f"({len(split.train)} training normals)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    write_yaml(folder / "config.yaml", _config(cell, seed))
    split.write_manifest(folder / "split.csv")

    model = build_model(cell.entry, cell.size, cell.options.teachers)
    seen = _SeenImages()
    engine = Engine(
        default_root_dir=folder / "anomalib",
        logger=False,
        callbacks=[seen],
        accelerator=cell.options.accelerator,
        devices=1,
        max_epochs=cell.max_epochs,
        enable_progress_bar=cell.options.progress,
        enable_model_summary=False,
    )
    data = _TrainData(split, cell, seed)
    started = time.monotonic()
    try:
        with _quiet():
            engine.fit(model=model, datamodule=data)
    except OSError as exc:  # e.g. EfficientAd fetches its teacher and ImageNette when it starts
        raise WeightsError(
            f"{cell.entry.label}: anomalib could not read or download a file it needs to train "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            "); models that fetch pretrained weights or data sets on first use need one run "
            "with internet access"
        ) from exc
    train_seconds = time.monotonic() - started
    atomic_write_text(folder / TRAINED_IMAGES, "".join(f"{key}\n" for key in sorted(seen.keys)))

    started = time.monotonic()
    scorer = AnomalibScorer(engine, model, cell.size, cell.batch, cell.options.num_workers)
    calibration = _calibrate(scorer, split, cell.options.fpr)
    scored = score_test(scorer, split)
    assert scored is not None
    result = evaluate_test(
        scored,
        split,
        calibration.threshold,
        calibration.map_stats,
        folder,
        class_thresholds=calibration.class_thresholds,
        normal_scores=calibration.normal_scores,
    )
    eval_seconds = time.monotonic() - started
    images = len(split.test) + (len(split.holdout) if split.holdout else len(split.train))
    record = {
        **result,
        **calibration.record(),
        **split_record(split, "split.csv"),
        **_about(cell, seed),
        "epochs": int(engine.trainer.current_epoch),
        "map_stats_from": calibration.map_stats_from,
        "trained_images": {
            "file": TRAINED_IMAGES,
            "distinct": len(set(seen.keys)),
            "seen": len(seen.keys),
        },
        "timing": {
            "train_seconds": round(train_seconds, 3),
            "eval_seconds": round(eval_seconds, 3),
            "images_scored": images,
            "images_per_second": round(images / eval_seconds, 3) if eval_seconds > 0 else 0.0,
        },
    }
    write_json(folder / "metrics.json", record)
    write_report(folder)
    return record


def _calibrate(scorer: AnomalibScorer, split: DatasetSplit, fpr: float) -> Calibration:
    """As ``pdd fit``: threshold at false-alarm rate ``fpr`` and colour scale from the held-out
    normals; none held out: no threshold, the colour scale from the training normals."""
    if not split.holdout:
        normals = scorer.score(split.train, "scoring training normals", keep_maps=True)
        return uncalibrated(normals, "training normals (no holdout)")
    holdout = scorer.score(split.holdout, "scoring held-out normals", keep_maps=True)
    return calibrate(holdout, split.holdout, fpr)


def _about(cell: AnomalibCell, seed: int | None) -> dict[str, Any]:
    """What metrics.json and the tables say about the model: anomalib's name, version and args."""
    return {
        "preset": cell.entry.label,
        "framework": "anomalib",
        "anomalib_version": anomalib_version(cell.entry.label),
        "anomalib_model": cell.entry.model,
        "anomalib_args": model_arguments(cell.entry, cell.options.teachers),
        "teachers": cell.options.teachers,
        "seed": seed,
        "class_name": cell.options.class_name,
        "joint": cell.options.joint,
        "holdout_fraction": cell.options.holdout_fraction,
        "image_size": cell.size,
        "batch_size": cell.batch,
        "pdd_version": __version__,
    }


def _config(cell: AnomalibCell, seed: int | None) -> dict[str, Any]:
    about = _about(cell, seed)
    return {
        "pdd_version": __version__,
        "options": {
            "data": str(cell.options.data),
            "out": str(cell.options.out),
            "format": cell.options.format,
            "split_file": None if cell.options.split_file is None else str(cell.options.split_file),
            "class_name": cell.options.class_name,
            "joint": cell.options.joint,
            "holdout_fraction": cell.options.holdout_fraction,
            "seeds": [int(s) for s in cell.options.seeds] if seed is None else [seed],
            "image_size": cell.size,
            "epochs": cell.max_epochs,
            "batch_size": cell.batch,
            "teachers": cell.options.teachers,
            "accelerator": cell.options.accelerator,
            "num_workers": cell.options.num_workers,
        },
        "model": {
            key: about[key]
            for key in ("preset", "anomalib_model", "anomalib_args", "anomalib_version")
        },
    }


# --------------------------------------------------------------------------- data


_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


class _Items(Dataset):
    """Our samples as anomalib ``ImageItem``: our decoding and resize, un-normalised to [0, 1]
    (the model's anomalib pre-processor normalises as that model expects)."""

    def __init__(self, samples: Sequence[Sample], image_size: int) -> None:
        self.inner = ImageDataset(samples, image_size)
        self.keys = [sample.key for sample in samples]

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> ImageItem:
        item = self.inner[index]
        image = (item["image"] * _STD + _MEAN).clamp(0.0, 1.0)
        return ImageItem(
            image=image,
            gt_label=item["label"],
            gt_mask=item["mask"][0] > 0.5,
            image_path=self.keys[index],
        )


class _TrainData(L.LightningDataModule):
    """The split's training normals, shuffled with the seed, and its held-out normals as the
    validation set (models that calibrate on normals during training use them, e.g. EfficientAd's
    map quantiles; never test images). ``name`` / ``category`` name anomalib's workspace folder,
    ``train_batch_size`` is what EfficientAd checks."""

    def __init__(self, split: DatasetSplit, cell: AnomalibCell, seed: int) -> None:
        super().__init__()
        self.samples = list(split.train)
        self.holdout = list(split.holdout)
        self.cell = cell
        self.seed = seed
        self.name = "pdd_split"
        self.category = cell.dataset_name
        self.train_batch_size = cell.batch
        self.eval_batch_size = cell.batch

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if not self.holdout:
            return []
        return DataLoader(
            _Items(self.holdout, self.cell.size),
            batch_size=self.cell.batch,
            shuffle=False,
            num_workers=self.cell.options.num_workers,
            collate_fn=ImageBatch.collate,
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            _Items(self.samples, self.cell.size),
            batch_size=self.cell.batch,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.cell.options.num_workers,
            collate_fn=ImageBatch.collate,
        )


class _SeenImages(Callback):
    """The keys of every image the training loop handed to the model."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.keys.extend(batch.image_path)


# --------------------------------------------------------------------------- scoring


class AnomalibScorer:
    """``Scorer``'s interface (``score``) over anomalib's ``Engine.predict``: raw ``pred_score`` and
    ``anomaly_map`` of every sample, matched back to the sample by its key, each exactly once."""

    def __init__(
        self, engine: Engine, model: Any, image_size: int, batch_size: int, num_workers: int
    ) -> None:
        self.engine = engine
        self.model = model
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers

    def score(
        self,
        samples: Sequence[Sample],
        description: str,
        *,
        keep_maps: bool = False,
        keep_masks: bool = False,
        extremes: int = 0,
    ) -> Scored:
        """Scores (and maps, masks, the extremes' overlay inputs) of ``samples`` in their order."""
        items = _Items(samples, self.image_size)
        index_of = {key: i for i, key in enumerate(items.keys)}
        if len(index_of) != len(items.keys):
            raise DataError(f"{description}: the same image is listed twice")
        loader = DataLoader(
            items,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=ImageBatch.collate,
        )
        collector = ScoreCollector(
            len(items), keep_maps=keep_maps or extremes > 0, keep_masks=keep_masks
        )
        with _quiet():
            predictions = self.engine.predict(model=self.model, dataloaders=loader) or []
        for batch in predictions:
            index = np.array([index_of[key] for key in batch.image_path], dtype=np.int64)
            if collector.seen[index].any():
                raise RuntimeError(f"{description}: anomalib returned an image twice")
            scores = batch.pred_score.detach().reshape(len(index)).double().cpu().numpy()
            masks = batch.gt_mask[:, None].float() if keep_masks else None
            collector.add(index, scores, self._maps(batch.anomaly_map, len(index)), masks)
        scored = collector.result()
        if extremes:
            chosen = extreme_indices(scored.scores, range(len(items)), extremes)
            assert scored.maps is not None
            scored.extremes = {
                i: (to_display(items.inner[i]["image"]), scored.maps[i]) for i in sorted(chosen)
            }
            if not keep_maps:
                scored.maps = None
        return scored

    def _maps(self, maps: torch.Tensor, count: int) -> np.ndarray:
        size = (count, self.image_size, self.image_size)
        if maps is None or maps.numel() != count * self.image_size**2:
            shape = None if maps is None else tuple(maps.shape)
            raise RuntimeError(f"anomalib's anomaly maps have shape {shape}, expected {size}")
        return maps.detach().reshape(size).float().cpu().numpy()


_NOISE = (
    "ckpt_path is not provided",  # we pass the trained model itself
    "callbacks returned in `LightningModule.configure_callbacks` will override",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _NOISE)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's and anomalib's messages that say nothing to a benchmark's user."""
    names = ("anomalib.engine.engine", "lightning_fabric.utilities.rank_zero")
    loggers = [logging.getLogger(name) for name in names]
    noise = _DropNoise()
    for logger in loggers:
        logger.addFilter(noise)
    try:
        with quiet_predict_loop(), warnings.catch_warnings():
            # memory-bank models train without an optimiser; nobody validates here
            warnings.filterwarnings("ignore", message=r".*configure_optimizers. returned .None.")
            warnings.filterwarnings("ignore", message=r"You defined a `validation_step` but have")
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(noise)
