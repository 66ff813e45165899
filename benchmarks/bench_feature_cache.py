"""What the teacher-feature cache saves: ``pdd fit`` with ``--feature-cache off`` against the cache.

    python benchmarks/bench_feature_cache.py [--data ../shared/data/headct] [--image-size 256]
        [--epochs 5] [--presets pdd rd4ad] [--modes off auto] [--threads 2] [--limit N]
        [--keep-freed-memory]
    python benchmarks/bench_feature_cache.py --image-size 64 --epochs 2 --limit 8   # quick check

Each (preset, mode) is one real ``pdd fit`` in this process (random teachers, batch as the preset,
evaluation included), the in-memory cache emptied before each so every fit starts cold. Reported:

* the fit's wall time (training + evaluation) and the training time (metrics.json ``timing``);
* the steady-state epoch: the median time of epochs 2..N (epoch 1 computes and stores the teacher
  features; every later epoch reads them), per training image, from a callback on the Trainer;
* the ratio of wall times cached / off (goal: <= 0.65 for ``pdd fit --epochs 5`` on HeadCT at 256 px);
* with anomalib installed (``pip install -e .[bench]``), anomalib RD's training step at batch 4 per
  image in the same process (bench_peers.py's model), and each steady-state epoch per image as a
  ratio to it (goals: pdd <= 0.70x, rd4ad <= 0.85x). anomalib's figure is one optimiser step on
  in-memory tensors (no data loading), ours a whole epoch with data loading: the comparison is
  against us.

``--limit N`` keeps the first N training images, N/4 held-out ones and N test images (half normal,
half anomalous; a manifest written to a temporary folder), for a quick check. The load average is printed before and after: on a shared machine the
times are only as good as it was idle.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from _common import machine, table
from lightning.pytorch.callbacks import Callback

DEFAULT_HEADCT = Path(__file__).resolve().parents[2] / "shared" / "data" / "headct"


class EpochClock(Callback):
    """Wall time and images of every training epoch."""

    def __init__(self) -> None:
        self.epochs: list[tuple[float, int]] = []
        self._start = 0.0
        self._images = 0

    def on_train_epoch_start(self, *args: Any) -> None:
        self._start, self._images = time.perf_counter(), 0

    def on_train_batch_end(
        self, trainer: Any, module: Any, outputs: Any, batch: Any, *args: Any
    ) -> None:
        self._images += int(batch["image"].shape[0])

    def on_train_epoch_end(self, *args: Any) -> None:
        self.epochs.append((time.perf_counter() - self._start, self._images))


def _fit(
    args: argparse.Namespace,
    preset: str,
    mode: str,
    work: Path,
    split_file: Path | None,
) -> dict[str, Any]:
    from pdd.training import feature_cache, runner
    from pdd.training.options import FitOptions

    clock = EpochClock()
    build = runner.build_trainer

    def with_clock(*a: Any, **k: Any) -> Any:
        trainer = build(*a, **k)
        trainer.callbacks.append(clock)
        return trainer

    feature_cache.clear_memory()
    runner.build_trainer = with_clock
    out = work / f"{preset}-{mode}"
    options = FitOptions(
        data=args.data,
        out=out,
        format=args.format,
        preset=preset,
        teachers="random",
        image_size=args.image_size,
        epochs=args.epochs,
        split_file=split_file,
        feature_cache=mode,
        accelerator="cpu",
        progress=False,
    )
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runner.fit(options)
    finally:
        runner.build_trainer = build
    wall = time.perf_counter() - started
    metrics = json.loads((out / "metrics.json").read_text())
    steady = [seconds / images for seconds, images in clock.epochs[1:] if images]
    return {
        "wall": wall,
        "train": metrics["timing"]["train_seconds"],
        "first_epoch": clock.epochs[0][0] if clock.epochs else float("nan"),
        "steady_per_image": statistics.median(steady) if steady else float("nan"),
        "cache": metrics.get("feature_cache", {}),
        "history": [entry["loss"] for entry in metrics["train_history"]],
        "image_auroc": metrics.get("image_auroc"),
    }


def _anomalib_step_per_image(size: int, repeats: int) -> float | None:
    """Median anomalib RD training step (batch 4) per image, or None without anomalib."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_peers import TRAIN_BATCH, _anomalib_entries

    entries = _anomalib_entries(size)
    if not entries:
        return None
    entry = entries[0]
    images = torch.randn(TRAIN_BATCH, 3, size, size)
    times = []
    for round_index in range(repeats + 1):
        start = time.perf_counter()
        entry.step(images)
        if round_index:
            times.append(time.perf_counter() - start)
    return statistics.median(times) / TRAIN_BATCH


def _limited_split(args: argparse.Namespace, work: Path) -> Path | None:
    if args.limit is None:
        return None
    from pdd.data import load_dataset

    split = load_dataset(args.data, args.format, seed=0)
    n = args.limit
    small = dataclasses.replace(
        split,
        train=split.train[:n],
        holdout=split.holdout[: max(2, n // 4)],
        test=[s for s in split.test if s.label == 0][: n // 2]
        + [s for s in split.test if s.label == 1][: n - n // 2],
    )
    return small.write_manifest(work / "split.csv")


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data", type=Path, default=DEFAULT_HEADCT, help="dataset folder (HeadCT)"
    )
    p.add_argument("--format", default="auto")
    p.add_argument("--presets", nargs="+", default=["pdd", "rd4ad"])
    p.add_argument(
        "--modes",
        nargs="+",
        default=["off", "auto"],
        choices=["off", "auto", "memory", "disk"],
    )
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="first N images of each set")
    p.add_argument("--anomalib-repeats", type=int, default=5, help="0: skip anomalib")
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="this process keeps freed memory as the pdd command does (pdd.allocator): every fit "
        "and anomalib's step alike",
    )
    args = p.parse_args()
    if "off" not in args.modes:
        p.error("--modes must include off (the reference)")
    torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        from pdd.allocator import keep_freed_memory

        if not keep_freed_memory():
            p.error("--keep-freed-memory: this C library has no such setting (glibc only)")
    print(machine(torch.device("cpu")) + f"; keep freed memory: {args.keep_freed_memory}")
    print(f"before: {_load()}", flush=True)
    results: dict[tuple[str, str], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="pdd-bench-cache-") as folder:
        work = Path(folder)
        split_file = _limited_split(args, work)
        for preset in args.presets:
            for mode in args.modes:
                result = _fit(args, preset, mode, work, split_file)
                results[preset, mode] = result
                print(
                    f"  {preset} {mode}: wall {result['wall']:.1f} s, steady epoch "
                    f"{result['steady_per_image'] * 1e3:.1f} ms/image, cache {result['cache']}",
                    flush=True,
                )
    reference = None
    if args.anomalib_repeats > 0:
        reference = _anomalib_step_per_image(args.image_size, args.anomalib_repeats)
    rows = []
    for (preset, mode), result in results.items():
        off = results[preset, "off"]
        same = result["history"] == off["history"]
        rows.append(
            [
                preset,
                mode,
                f"{result['wall']:.1f}",
                f"{result['wall'] / off['wall']:.2f}",
                f"{result['train']:.1f}",
                f"{result['first_epoch']:.1f}",
                f"{result['steady_per_image'] * 1e3:.1f}",
                "-"
                if reference is None
                else f"{result['steady_per_image'] / reference:.2f}x",
                "yes" if same else "NO",
                str(result["cache"].get("mode")),
            ]
        )
    print(
        f"\npdd fit, {args.epochs} epochs, {args.image_size} px, random teachers, "
        f"{args.threads} threads, data {args.data}"
        + (f" (first {args.limit} images of each set)" if args.limit else "")
    )
    if reference is not None:
        print(f"anomalib RD training step, batch 4: {reference * 1e3:.1f} ms/image")
    print(
        table(
            [
                "preset",
                "cache",
                "fit wall s",
                "vs off",
                "train s",
                "epoch 1 s",
                "steady epoch ms/image",
                "vs anomalib step",
                "same losses",
                "store",
            ],
            rows,
        )
    )
    print(f"after: {_load()}")


if __name__ == "__main__":
    main()
