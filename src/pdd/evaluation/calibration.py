"""``pdd calibrate``: re-estimate a trained model's threshold, stored normal scores and colour scale
from normal scans of a new site, without retraining.

The model is untouched; only what it is deployed with changes, by the same rules as ``pdd fit``
(``pdd.evaluation.evaluate``): the conformal threshold at false-alarm rate ``alpha``, the p-value
reference scores, and the colour scale (median normal pixel .. highest normal image score).

The exchangeable units are what the user hands over: single images, or whole scans (NIfTI volumes,
DICOM series) scored by the scan rule over their slices. For scans, the scan threshold in
volumes.csv carries the promise; the slice threshold and slice p-values are set from all their
slices too (so slice rows stay on the new site's scale) but, as slices of one scan are not
exchangeable, without a guarantee, and the record says so. A set mixing single images and scans is
refused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from pdd.data import collect_inputs
from pdd.data.scans import group_scans
from pdd.errors import ConfigError, DataError
from pdd.evaluation import metrics
from pdd.evaluation.evaluate import colour_scale
from pdd.evaluation.scan_rule import DEFAULT_SCAN_RULE, scan_score
from pdd.evaluation.scoring import Scorer
from pdd.runs import checkpoint

__all__ = ["SiteCalibration", "calibrate_site", "path_digest"]

_LOAD_ADDED = ("format_version", "pdd_version", "preset", "config", "teachers")
"""Keys ``checkpoint.load`` adds to the meta from the payload; ``save`` writes them itself."""
_STALE = ("class_thresholds", "class_calibration", "scan_threshold", "scan_calibration")
"""Old-site statistics a new calibration replaces or, when it cannot re-estimate them, drops."""
_SLICES_NOTE = (
    "slices of {scans} normal scans; slices of one scan are not exchangeable, so this slice "
    "threshold carries no guarantee: the scan threshold (volumes.csv) does"
)


@dataclass(frozen=True)
class SiteCalibration:
    """What ``calibrate_site`` did: thresholds before and after, and the units it counted."""

    out: Path
    threshold_before: float | None  # image/slice threshold of the original checkpoint
    threshold_after: float
    scan_threshold_before: float | None
    promised: metrics.ConformalThreshold  # the images' or (for scans) the scans' threshold
    units: str  # "images" or "scans"
    files: int


def path_digest(paths: Sequence[str]) -> str:
    """SHA-256 of the sorted list of file paths (one per line): names the calibration set."""
    return hashlib.sha256("\n".join(sorted(paths)).encode("utf-8", "surrogateescape")).hexdigest()


def calibrate_site(
    checkpoint_path: Path,
    normals: Sequence[Path],
    out: Path,
    *,
    alpha: float = 0.05,
    site: str | None = None,
    device: str = "cpu",
    batch_size: int = 8,
    progress: bool = False,
) -> SiteCalibration:
    """Score the normal images or scans ``normals`` with the model of ``checkpoint_path`` and write
    a copy with the threshold, normal scores and colour scale they give to ``out``."""
    if Path(os.path.realpath(out)) == Path(os.path.realpath(checkpoint_path)):
        raise ConfigError(f"--out {out}: is the checkpoint being calibrated; write a new file")
    model, meta = checkpoint.load(checkpoint_path)
    skipped: list[tuple[str, str]] = []
    samples = collect_inputs(list(normals), skipped=skipped)
    if skipped:
        path, reason = skipped[0]
        raise DataError(
            f"{path}: cannot be used for calibration ({reason}); {len(skipped)} input(s) unreadable"
        )
    if not samples:
        raise DataError(f"no normal images found in {', '.join(str(p) for p in normals)}")
    scans = group_scans(samples)
    multi = [scan for scan in scans if len(scan.samples) > 1]
    if multi and len(multi) != len(scans):
        raise DataError(
            f"{multi[0].key}: calibration needs normals of one kind: {len(multi)} scans and "
            f"{len(scans) - len(multi)} single images given; calibrate on one kind at a time"
        )
    ordered = [sample for scan in scans for sample in scan.samples]
    scorer = Scorer(
        model.to(device),
        torch.device(device),
        int(model.config["image_size"]),
        batch_size,
        0,
        nullcontext,
        progress,
    )
    scored = scorer.score(ordered, "scoring calibration normals", keep_maps=True)
    slice_scores = [float(v) for v in scored.scores]
    files = sorted({sample.path for sample in ordered})
    new_meta = {k: v for k, v in meta.items() if k not in _LOAD_ADDED and k not in _STALE}
    slices = metrics.conformal_threshold(slice_scores, alpha)
    new_meta.update(
        threshold=slices.threshold,
        normal_scores=slice_scores,
        map_stats=colour_scale(scored),
        threshold_calibration=slices.record(),
    )
    units, promised = "images", slices
    if multi:
        units = "scans"
        per_scan, start = [], 0
        for scan in scans:
            per_scan.append(scan_score(slice_scores[start : start + len(scan.samples)], DEFAULT_SCAN_RULE))
            start += len(scan.samples)
        promised = metrics.conformal_threshold(per_scan, alpha)
        new_meta["threshold_calibration"]["guarantee"] = _SLICES_NOTE.format(scans=len(scans))
        new_meta["scan_threshold"] = promised.threshold
        new_meta["scan_calibration"] = {
            "scan_rule": DEFAULT_SCAN_RULE,
            **promised.record(),
            "normal_scores": per_scan,
        }
    new_meta["calibration"] = {
        "site": site or "",
        "units": units,
        "n": promised.n,
        "alpha": promised.alpha_used,
        "alpha_requested": float(alpha),
        "files": len(files),
        "digest": path_digest(files),
        "threshold_before": meta.get("threshold"),
        "from_checkpoint": str(Path(checkpoint_path).resolve()),
        "guarantee": promised.guarantee,
    }
    checkpoint.save(out, model, **new_meta)
    return SiteCalibration(
        Path(out),
        meta.get("threshold"),
        slices.threshold,
        meta.get("scan_threshold"),
        promised,
        units,
        len(files),
    )
