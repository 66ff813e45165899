"""Which scan score rule ranks phantom volumes best: the highest slice score or a top-K mean?

Trains the demo's small PDD (random teachers, 64 px, 20 epochs, 40 phantom slices), writes phantom
NIfTI volumes (normal ones, and abnormal ones whose lesion spans 1, 3 or 6 of their slices), scores
them with ``pdd predict`` and reports, per lesion extent, the scan-level AUROC (scikit-learn) of
each rule computed from the per-slice scores in scores.csv. Slices of a phantom volume are
independent phantoms (not a coherent 3-D anatomy); the lesion extent is what the rules differ on.

    python benchmarks/scan_score_rule.py [--work DIR] [--slices 12] [--volumes 20]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from pdd.data.synthetic import make_phantom, make_phantom_dataset, write_nifti
from pdd.prediction.predict import scan_score

RULES = ("max", "mean-top-2", "mean-top-3", "mean-top-5")
EXTENTS = (1, 3, 6)


def _volume(rng: np.random.Generator, slices: int, lesion_slices: int, size: int) -> np.ndarray:
    start = int(rng.integers(0, slices - lesion_slices + 1)) if lesion_slices else 0
    planes = [
        make_phantom(rng, size, lesion=start <= k < start + lesion_slices)[0] for k in range(slices)
    ]
    return np.stack([np.rot90(p, k=-1) for p in planes], axis=2).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: temporary)")
    parser.add_argument("--slices", type=int, default=12, help="slices per volume")
    parser.add_argument("--volumes", type=int, default=20, help="volumes per group")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="pdd-scan-rule-"))
    data = make_phantom_dataset(work / "train", n_train=40, n_test_normal=4, n_test_abnormal=4, size=128)
    run = work / "run"
    if not (run / "model.ckpt").is_file():
        subprocess.run(
            ["pdd", "fit", "--data", str(data), "--out", str(run), "--teachers", "random",
             "--image-size", "64", "--epochs", "20", "--batch-size", "8", "--no-progress"],
            check=True,
        )
    rng = np.random.default_rng(7)
    volumes = work / "volumes"
    labels: dict[str, tuple[int, int]] = {}  # file -> (label, lesion extent)
    for i in range(args.volumes):
        name = f"normal_{i:03d}.nii.gz"
        write_nifti(volumes / name, _volume(rng, args.slices, 0, 128))
        labels[name] = (0, 0)
    for extent in EXTENTS:
        for i in range(args.volumes):
            name = f"lesion{extent}_{i:03d}.nii.gz"
            write_nifti(volumes / name, _volume(rng, args.slices, extent, 128))
            labels[name] = (1, extent)
    out = work / "predict"
    if not (out / "scores.csv").is_file():
        subprocess.run(
            ["pdd", "predict", "--checkpoint", str(run / "model.ckpt"), str(volumes), "--out", str(out),
             "--accelerator", "cpu", "--no-progress"],
            check=True,
        )
    slice_scores: dict[str, list[float]] = defaultdict(list)
    with (out / "scores.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            slice_scores[Path(row["scan"]).name].append(float(row["score"]))
    print(f"{args.volumes} normal volumes vs {args.volumes} abnormal per extent, {args.slices} slices each\n")
    print("| lesion slices | " + " | ".join(RULES) + " |")
    print("|---" * (len(RULES) + 1) + "|")
    for extent in EXTENTS:
        names = [n for n, (label, e) in labels.items() if e in (0, extent)]
        truth = [labels[n][0] for n in names]
        cells = [
            f"{roc_auc_score(truth, [scan_score(slice_scores[n], rule) for n in names]):.3f}"
            for rule in RULES
        ]
        print(f"| {extent} | " + " | ".join(cells) + " |")
    print(f"\nwork folder: {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
