"""What bfloat16 feature storage (``pdd fit --feature-cache-dtype bfloat16``) changes in the scores.

    python benchmarks/bench_feature_cache_dtype.py [--data ../shared/data/headct] [--preset pdd]
        [--image-size 128] [--epochs 3] [--seed 0] [--threads 2]

Two real ``pdd fit`` runs in this process (random teachers, the same seed, ``--feature-cache
memory``, the in-memory store emptied before each), one storing the teacher features as float32
(exact: the same run as without a cache) and one as bfloat16. Reported for each: image AUROC, the
cache's size, the last epoch's loss; between them: the largest test-score difference relative to
the float32 run's score range, and the anomaly maps' (``Detector`` on the test files, at each
file's resolution) largest and mean absolute difference relative to the float32 maps' range.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import machine, table

DEFAULT_HEADCT = Path(__file__).resolve().parents[2] / "shared" / "data" / "headct"
DTYPES = ("float32", "bfloat16")


def _fit(args: argparse.Namespace, dtype: str, out: Path) -> dict[str, Any]:
    from pdd.training import feature_cache, runner
    from pdd.training.options import FitOptions

    feature_cache.clear_memory()
    options = FitOptions(
        data=args.data,
        out=out,
        preset=args.preset,
        teachers="random",
        image_size=args.image_size,
        epochs=args.epochs,
        seeds=[args.seed],
        feature_cache="memory",
        feature_cache_dtype=dtype,
        accelerator="cpu",
        progress=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner.fit(options)
    metrics = json.loads((out / "metrics.json").read_text())
    with (out / "scores.csv").open(newline="") as handle:
        scores = {row["path"]: float(row["score"]) for row in csv.DictReader(handle)}
    return {"metrics": metrics, "scores": scores}


def _maps(checkpoint: Path, paths: list[str]) -> list[np.ndarray]:
    from pdd import Detector

    detector = Detector.load(checkpoint)
    return [d.anomaly_map for d in detector.predict(paths)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_HEADCT)
    p.add_argument("--preset", default="pdd")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(machine(torch.device("cpu")))
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="pdd-bench-cache-dtype-") as folder:
        runs = {dtype: _fit(args, dtype, Path(folder) / dtype) for dtype in DTYPES}
        paths = sorted(runs["float32"]["scores"])
        if sorted(runs["bfloat16"]["scores"]) != paths:
            raise SystemExit("the two runs scored different test images")
        maps = {
            dtype: _maps(Path(folder) / dtype / "model.ckpt", paths) for dtype in DTYPES
        }
    reference, bf16 = (
        np.array([runs[d]["scores"][path] for path in paths]) for d in DTYPES
    )
    score_range = float(reference.max() - reference.min())
    map_low = min(float(m.min()) for m in maps["float32"])
    map_high = max(float(m.max()) for m in maps["float32"])
    map_diff = [np.abs(a - b) for a, b in zip(maps["float32"], maps["bfloat16"])]
    map_max = max(float(d.max()) for d in map_diff) / (map_high - map_low)
    map_mean = float(np.mean([d.mean() for d in map_diff])) / (map_high - map_low)
    rows = []
    for dtype in DTYPES:
        metrics = runs[dtype]["metrics"]
        cache = metrics["feature_cache"]
        rows.append(
            [
                dtype,
                f"{metrics['image_auroc']:.4f}",
                f"{metrics['train_history'][-1]['loss']:.6f}",
                f"{cache['entries']} entries, {cache['bytes'] / 1024**2:.1f} MiB",
            ]
        )
    print(
        f"\n{args.preset}, HeadCT {args.image_size} px, {args.epochs} epochs, seed {args.seed}, "
        f"random teachers, {len(paths)} test images, {args.threads} threads"
    )
    print(table(["storage", "image AUROC", "last epoch loss", "cache"], rows))
    print(
        f"bfloat16 vs float32: max |score difference| / score range "
        f"{float(np.abs(bf16 - reference).max()) / score_range:.2e} (range {score_range:.4g}); "
        f"anomaly maps: max |difference| / map range {map_max:.2e}, "
        f"mean {map_mean:.2e} (range {map_high - map_low:.4g})"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
