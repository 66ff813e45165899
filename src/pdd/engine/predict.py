"""Scoring new files with a saved model: scores, decisions and heatmap overlays.

Decisions use the threshold stored in the checkpoint (chosen on held-out normal images at fit
time), and every heatmap is coloured with the checkpoint's fixed map statistics, never per image,
so the same colour means the same anomaly level across images and runs.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pdd.errors import CheckpointError, DataError, PDDError
from pdd.fileio import atomic_write_text

__all__ = ["PredictResult", "Prediction", "predict", "stored_statistics"]

ANOMALOUS = "anomalous"
NORMAL = "normal"
SCORES_FILE = "scores.csv"
SKIPPED_FILE = "skipped.csv"
HEATMAP_DIR = "heatmaps"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Prediction:
    """One scored image: ``path`` is ``file`` or ``file#slice`` (NIfTI), ``heatmap`` is relative."""

    path: str
    score: float
    decision: str
    heatmap: str


@dataclass
class PredictResult:
    """What `predict` wrote: the CSV, the rows, and the inputs it could not read (with why)."""

    scores_csv: Path
    threshold: float
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def stored_statistics(meta: dict, checkpoint: Path) -> tuple[float, float, float]:
    """``(threshold, vmin, vmax)`` saved at fit time; a checkpoint without them cannot predict."""
    try:
        threshold = float(meta["threshold"])
        vmin = float(meta["map_stats"]["vmin"])
        vmax = float(meta["map_stats"]["vmax"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{checkpoint}: checkpoint has no stored threshold/heatmap statistics ({exc}); "
            "it was not written by `pdd fit`"
        ) from None
    if not vmax > vmin:
        raise CheckpointError(f"{checkpoint}: stored heatmap range is empty ({vmin} .. {vmax})")
    return threshold, vmin, vmax


def predict(
    checkpoint: Path,
    inputs: Sequence[Path],
    out: Path,
    *,
    window: tuple[float, float] | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
) -> PredictResult:
    """Score every image found in ``inputs``; write ``scores.csv`` and ``heatmaps/*.png`` to ``out``.

    ``window`` (centre, width) replaces the DICOM files' own display window.
    Inputs that cannot be read are listed in ``skipped.csv`` and returned in ``skipped``; the
    caller decides how loudly to fail. Raises ``DataError`` when no input could be scored.
    """
    from pdd.data import collect_inputs, image_format, read_image, to_model_input
    from pdd.engine.checkpoint import load
    from pdd.report.heatmap import save_overlay

    model, meta = load(checkpoint)
    threshold, vmin, vmax = stored_statistics(meta, checkpoint)
    image_size = int(model.config["image_size"])
    model = model.to(device).eval()

    result = PredictResult(scores_csv=out / SCORES_FILE, threshold=threshold)
    samples = collect_inputs([Path(p) for p in inputs], skipped=result.skipped)
    if not samples and not result.skipped:
        raise DataError(f"no images found in {', '.join(str(p) for p in inputs)}")
    heatmap_dir = out / HEATMAP_DIR
    heatmap_dir.mkdir(parents=True, exist_ok=True)

    total = len(samples)
    for start in range(0, total, batch_size):
        batch = samples[start : start + batch_size]
        images: list[np.ndarray] = []
        kept = []
        for sample in batch:
            try:
                # --window is a DICOM display setting; other formats in the same call ignore it.
                own_window = window if image_format(sample.path) == "dicom" else None
                images.append(read_image(sample.path, sample.slice_index, window=own_window))
            except PDDError as exc:
                result.skipped.append((sample.key, str(exc).removeprefix(f"{sample.path}: ")))
                continue
            kept.append(sample)
        if kept:
            tensor = torch.stack([to_model_input(image, image_size) for image in images])
            with torch.inference_mode():
                maps, scores = model(tensor.to(device))
            for offset, (sample, image, amap, score) in enumerate(
                zip(kept, images, maps.float().cpu(), scores.float().cpu())
            ):
                name = _heatmap_name(start + offset, sample.path, sample.slice_index)
                # The S x S map is resized to the image's own size inside save_overlay.
                save_overlay(heatmap_dir / name, image, amap, vmin, vmax)
                value = float(score)
                result.predictions.append(
                    Prediction(
                        path=sample.key,
                        score=value,
                        decision=ANOMALOUS if value > threshold else NORMAL,
                        heatmap=f"{HEATMAP_DIR}/{name}",
                    )
                )
        if on_progress is not None:
            on_progress(min(start + batch_size, total), total)

    if not result.predictions:
        reasons = "; ".join(f"{path}: {why}" for path, why in result.skipped[:3])
        raise DataError(f"none of the inputs could be read ({reasons})")
    atomic_write_text(result.scores_csv, _scores_text(result.predictions))
    skipped_csv = out / SKIPPED_FILE
    if result.skipped:
        atomic_write_text(skipped_csv, _csv_text(("path", "reason"), result.skipped))
    elif skipped_csv.exists():
        skipped_csv.unlink()  # a stale list from an earlier run would misreport this one
    return result


def _heatmap_name(index: int, path: str, slice_index: int | None) -> str:
    """Unique, file-system-safe overlay name: a running number keeps equal stems apart."""
    stem = Path(path).name
    for suffix in (".gz", ".nii", ".dcm", ".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    stem = _UNSAFE.sub("_", stem).strip("._") or "image"
    slice_part = "" if slice_index is None else f"_slice{slice_index:04d}"
    return f"{index:05d}_{stem[:80]}{slice_part}.png"


def _scores_text(predictions: list[Prediction]) -> str:
    rows = [(p.path, repr(p.score), p.decision, p.heatmap) for p in predictions]  # exact
    return _csv_text(("path", "score", "decision", "heatmap"), rows)


def _csv_text(header: tuple[str, ...], rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
