"""Real training epochs for ``bench_peers.py``: ``pdd fit`` with the teacher-feature cache against
anomalib's ``Engine.fit`` with its Reverse Distillation, on the same training images.

One optimiser step on in-memory tensors (bench_peers' model table) leaves out what an epoch costs
besides: reading and resizing the files, the caching of teacher features, the logging. Here both
libraries run their own training loop in this process for ``epochs`` epochs (random teachers, no
data-loader workers, the same image size), and the steady-state epoch is the median of epochs
2..N, per training image:

* ours: ``bench_feature_cache._fit`` (a real ``pdd fit``, evaluation included, with
  ``--feature-cache memory``: epoch 1 computes and stores the teacher features, later epochs read
  them); the epoch clock runs from the epoch's start to its end (our fit has no validation loop);
* anomalib: ``Engine.fit`` on a ``Folder`` datamodule of the same training images (its validation
  and test images: the split's test images), timed from the epoch's start to the end of its last
  training batch, so its per-epoch validation and checkpoint are left out (in its favour).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_feature_cache import EpochClock, _fit, _limited_split

# What anomalib's training data module batches by default is 32; 16 is the RD4AD paper's batch
# and our rd4ad preset's (pdd: 10), so per-image figures do not differ by batch size alone.
ANOMALIB_BATCH = 16


@dataclass
class Epochs:
    """One training run's epochs: what a user waits for, split as the cache splits it."""

    name: str
    batch: int
    first_seconds: float
    steady_per_image: float  # seconds, median of epochs 2..N
    note: str = ""


def data_for_fits(
    source: Path, work: Path, limit: int | None, size: int
) -> tuple[Path, Path, int]:
    """The dataset folder, a split manifest that every run here trains on (the first ``limit``
    images of each set, or all) and its training image count: ``source`` when it exists, else
    HeadCT-like phantoms written under ``work`` (printed so)."""
    from pdd.data import load_dataset
    from pdd.data.synthetic import make_phantom_dataset

    if not source.is_dir():
        normals = 100 if limit is None else 2 * limit
        source = make_phantom_dataset(
            work / "phantoms",
            "headct",
            n_train=normals * 3 // 4,
            n_test_normal=normals - normals * 3 // 4,
            n_test_abnormal=normals,
            size=size,
        )
        print(
            f"  training rows: no dataset folder given, {2 * normals} phantoms in {source}"
        )
    limited = argparse.Namespace(data=source, format="auto", limit=limit)
    split_file = _limited_split(limited, work)
    if split_file is None:
        split_file = load_dataset(source, seed=0).write_manifest(work / "split.csv")
    return source, split_file, len(load_dataset(source, split_file=split_file).train)


def pdd_fit(
    preset: str, data: Path, split_file: Path, size: int, epochs: int, work: Path
) -> Epochs:
    """A real ``pdd fit`` with the in-memory feature cache; its epochs as our callback saw them."""
    from pdd.config.presets import resolve_config
    from pdd.training import feature_cache

    options = argparse.Namespace(
        data=data, format="auto", image_size=size, epochs=epochs
    )
    result = _fit(options, preset, "memory", work, split_file)
    feature_cache.clear_memory()  # the next run (anomalib's) should not share RAM with it
    gc.collect()
    return Epochs(
        f"`pdd fit --preset {preset} --feature-cache memory`",
        int(resolve_config(preset)["train"]["batch_size"]),
        result["first_epoch"],
        result["steady_per_image"],
        _cache_note(result["cache"]),
    )


def _cache_note(record: dict[str, Any]) -> str:
    """metrics.json's ``feature_cache`` in a few words (hits: images read from the cache)."""
    return (
        f"cache: {record.get('mode')}, {record.get('entries')} entries, "
        f"{record.get('bytes', 0) / 2**20:.0f} MiB, {record.get('hits')} hits, "
        f"{record.get('misses')} misses"
    )


class _TrainingBatchesClock(EpochClock):
    """``EpochClock`` for anomalib's batches (``batch.image``), stopped at the last training
    batch's end: the validation loop and checkpoint that follow it are not training."""

    def on_train_batch_end(
        self, trainer: Any, module: Any, outputs: Any, batch: Any, *args: Any
    ) -> None:
        self._images += int(batch.image.shape[0])
        self._last_batch_end = time.perf_counter()

    def on_train_epoch_end(self, *args: Any) -> None:
        self.epochs.append((self._last_batch_end - self._start, self._images))


def _linked(folder: Path, files: list[Path]) -> Path:
    """``folder`` holding symbolic links to ``files`` (numbered: names may repeat across folders)."""
    folder.mkdir(parents=True)
    for index, path in enumerate(files):
        (folder / f"{index:05d}_{path.name}").symlink_to(path.resolve())
    return folder


def anomalib_fit(
    data: Path, split_file: Path, size: int, epochs: int, work: Path
) -> Epochs | None:
    """anomalib's ``Engine.fit`` (ReverseDistillation, random encoder) on the split's training
    images; None when anomalib is not importable."""
    try:
        from anomalib.data import Folder
        from anomalib.engine import Engine
        from anomalib.models import ReverseDistillation
    except ImportError:
        return None
    from pdd.data import load_dataset

    split = load_dataset(data, split_file=split_file)
    folder = work / "anomalib-data"
    datamodule = Folder(
        name="bench",
        root=folder,
        normal_dir=_linked(folder / "train", [Path(s.path) for s in split.train]),
        normal_test_dir=_linked(
            folder / "test-normal", [Path(s.path) for s in split.test if s.label == 0]
        ),
        abnormal_dir=_linked(
            folder / "test-abnormal", [Path(s.path) for s in split.test if s.label == 1]
        ),
        train_batch_size=ANOMALIB_BATCH,
        eval_batch_size=ANOMALIB_BATCH,
        num_workers=0,
        seed=0,
    )
    model = ReverseDistillation(
        pre_trained=False,
        pre_processor=ReverseDistillation.configure_pre_processor(
            image_size=(size, size)
        ),
    )
    clock = _TrainingBatchesClock()
    engine = Engine(
        default_root_dir=str(work / "anomalib-fit"),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=epochs,
        callbacks=[clock],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine.fit(model=model, datamodule=datamodule)
    steady = [seconds / images for seconds, images in clock.epochs[1:] if images]
    return Epochs(
        f"anomalib `Engine.fit` (RD, batch {ANOMALIB_BATCH})",
        ANOMALIB_BATCH,
        clock.epochs[0][0],
        statistics.median(steady),
        "its validation and checkpoint after each epoch not counted",
    )
