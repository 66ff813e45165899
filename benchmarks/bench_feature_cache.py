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
* what a cache can reach at all: from the ``off`` fit, the teachers' seconds per epoch (timed around
  the training step's one call into them), the ratio a perfect cache (teachers in epoch 1 only, at
  no cost) would give, and how fast the rest of an epoch would have to run for ``--goal``, beside
  the cached step's counted GFLOP per image and what they take at this process's float32 GEMM
  ceiling (a lower bound for float32 arithmetic);
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from _common import machine, table
from lightning.pytorch.callbacks import Callback

DEFAULT_HEADCT = Path(__file__).resolve().parents[2] / "shared" / "data" / "headct"


class TeacherClock:
    """Seconds spent in the teachers inside training steps: the work a feature cache can skip.

    Wraps ``feature_cache.teacher_features``, the one function through which a training step
    reaches the teachers with the cache off and on a cache miss (evaluation calls the model
    directly and is not counted)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def installed(self) -> Iterator[None]:
        from pdd.training import feature_cache, module

        original = feature_cache.teacher_features

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        feature_cache.teacher_features = module.teacher_features = timed
        try:
            yield
        finally:
            feature_cache.teacher_features = module.teacher_features = original


class EpochClock(Callback):
    """Wall time, images and teacher seconds of every training epoch."""

    def __init__(self, teachers: TeacherClock | None = None) -> None:
        self.epochs: list[tuple[float, int]] = []
        self.teacher_seconds: list[float] = []  # all 0 unless ``teachers`` is installed
        self._teachers = teachers or TeacherClock()
        self._start = self._teachers_at_start = 0.0
        self._images = 0

    def on_train_epoch_start(self, *args: Any) -> None:
        self._start, self._images = time.perf_counter(), 0
        self._teachers_at_start = self._teachers.seconds

    def on_train_batch_end(
        self, trainer: Any, module: Any, outputs: Any, batch: Any, *args: Any
    ) -> None:
        self._images += int(batch["image"].shape[0])

    def on_train_epoch_end(self, *args: Any) -> None:
        self.epochs.append((time.perf_counter() - self._start, self._images))
        self.teacher_seconds.append(self._teachers.seconds - self._teachers_at_start)


def _fit(
    args: argparse.Namespace,
    preset: str,
    mode: str,
    work: Path,
    split_file: Path | None,
) -> dict[str, Any]:
    from pdd.training import feature_cache, runner
    from pdd.training.options import FitOptions

    teachers = TeacherClock()
    clock = EpochClock(teachers)
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
        with warnings.catch_warnings(), teachers.installed():
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
        "epoch_seconds": [seconds for seconds, _ in clock.epochs],
        "teacher_seconds": clock.teacher_seconds,
        "images": clock.epochs[0][1] if clock.epochs else 0,
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


def _cached_step_gflop(preset: str, size: int) -> tuple[float, int]:
    """Counted GFLOP per image of one cached training step (the loss from given teacher features,
    its backward) at the preset's batch, and that batch: convolutions and matmuls only, so the
    time it takes at the GEMM ceiling is a lower bound on any float32 step doing this arithmetic."""
    from bench_peers import _gflop

    import pdd

    model = pdd.create_model(preset, teachers="random", image_size=size)
    batch = int(model.config["train"]["batch_size"])
    model.train()
    with torch.no_grad():
        features = model.teacher_features(torch.randn(batch, 3, size, size))
    gflop = _gflop(lambda: model.loss_from_features(features)["loss"].backward())
    return gflop / batch, batch


def _gemm_ceiling(repeats: int = 5) -> float:
    """bench_peers' GEMM ceiling (its square float32 matmuls), timed in this process now."""
    from bench_peers import _ceiling, _gemms

    gemms = _gemms()
    for gemm in gemms:
        gemm.run()  # untimed warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            gemm.run()
            gemm.times.append(time.perf_counter() - start)
    return _ceiling(gemms)[0]


def _what_caching_can_reach(
    args: argparse.Namespace, results: dict[tuple[str, str], dict[str, Any]]
) -> str:
    """Per preset, from its ``off`` fit: the ratio a perfect cache would reach, and how fast the
    rest of an epoch would have to be for the goal.

    Model of a fit of E epochs over n images: wall = rest + E x (t + c n), with t the teachers'
    seconds per epoch and c everything else per image and epoch (student forward and backward,
    optimiser, data), both medians over epochs 2..E; rest is the remainder of the wall time: setup,
    checkpoints, evaluation and epoch 1's warm-up. A perfect cache runs the teachers in epoch 1
    only: (rest + t + E c n) / (rest + E t + E c n). With t and rest as measured, that
    ratio is at most ``goal`` when c <= (t (goal E - 1) - (1 - goal) rest) / (E n (1 - goal)).
    The last column puts the cached step's counted arithmetic at the GEMM ceiling in place of c:
    the lowest ratio float32 arithmetic reaches with this rest and these teachers.
    """
    ceiling = _gemm_ceiling()
    rows = []
    for preset in args.presets:
        off = results[preset, "off"]
        cached = next((results[preset, m] for m in args.modes if m != "off"), None)
        epochs, images = len(off["epoch_seconds"]), off["images"]
        steady = slice(1, None) if epochs > 1 else slice(None)
        teachers = statistics.median(off["teacher_seconds"][steady])
        epoch = statistics.median(off["epoch_seconds"][steady])
        per_epoch_rest = (epoch - teachers) / images
        rest = off["wall"] - epochs * epoch
        perfect = (off["wall"] - (epochs - 1) * teachers) / off["wall"]
        goal = args.goal
        needed = (teachers * (goal * epochs - 1) - (1 - goal) * rest) / (
            epochs * images * (1 - goal)
        )
        gflop, batch = _cached_step_gflop(preset, args.image_size)
        at_ceiling = epochs * images * gflop / ceiling
        ceiling_ratio = (rest + teachers + at_ceiling) / (rest + epochs * teachers + at_ceiling)
        rows.append(
            [
                preset,
                str(epochs),
                f"{teachers:.1f}",
                f"{per_epoch_rest * 1e3:.0f}",
                f"{rest:.1f}",
                f"{perfect:.2f}",
                "-" if cached is None else f"{cached['wall'] / off['wall']:.2f}",
                "-" if cached is None else f"{sum(cached['teacher_seconds'][1:]):.1f}",
                f"{needed * 1e3:.0f}" if needed > 0 else "none (< 0)",
                f"{gflop:.1f} (batch {batch})",
                f"{gflop / ceiling * 1e3:.0f}",
                f"{ceiling_ratio:.2f}",
            ]
        )
    return f"\nwhat a cache can reach (float32 GEMM ceiling now: {ceiling:.0f} GFLOP/s):\n" + table(
        [
            "preset",
            "epochs",
            "teachers, s per epoch (off)",
            "rest of an epoch, ms/image (off)",
            "setup, evaluation, warm-up: s",
            "perfect cache's ratio",
            "measured ratio",
            "teachers in the cached fit's epochs 2..E, s",
            f"rest of an epoch for {args.goal}, ms/image",
            "cached step, counted GFLOP/image",
            "that at the ceiling, ms/image",
            "perfect cache's ratio, the rest of an epoch at the ceiling",
        ],
        rows,
    )


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
    p.add_argument("--data", type=Path, default=DEFAULT_HEADCT, help="dataset folder (HeadCT)")
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
        "--goal", type=float, default=0.65, help="the cached / off wall-time ratio aimed at"
    )
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
                "-" if reference is None else f"{result['steady_per_image'] / reference:.2f}x",
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
    print(_what_caching_can_reach(args, results))
    print(f"after: {_load()}")


if __name__ == "__main__":
    main()
