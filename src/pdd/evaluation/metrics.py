"""Evaluation metrics: image- and pixel-level AUROC, AP, F1-max, AUPRO, decision thresholds with a
finite-sample false-alarm guarantee, and conformal p-values.

Conventions (shared by every function here):

- Higher score = more anomalous; label/mask 1 (True) = anomalous.
- A decision threshold flags a scan as anomalous iff ``score > threshold``.
- Undefined values are errors, never a silent 0.5: empty inputs, a length/shape mismatch, NaN or
  infinite scores, or a metric that needs both classes when only one is present raise
  ``MetricError``.

Image-level metrics are exact (scikit-learn). Pixel-level metrics stream over the images and count
pixels per threshold bin, so memory stays O(bins + one image) however many pixels there are
(200 images at 256 x 256 = 13 M pixels need well under 100 MB). The curves are computed *exactly*
at up to ``max_thresholds`` thresholds (default 20 000) placed at quantiles of the anomalous and of
the normal pixel scores (taken from a seeded sample of at most 10^6 pixels per class). When the maps
have no more distinct values than that - and no class needed sampling - every distinct value is a
threshold and the results equal scikit-learn's / the exact per-pixel AUPRO. Otherwise each bin holds
about 2/max_thresholds of either class, and the AUROC differs from the exact value by at most
1/2 * sum over bins of dFPR * dTPR (about 1/max_thresholds = 5e-5 by default); AP, F1-max and AUPRO
have the same resolution.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
)

from pdd.errors import PDDError

__all__ = [
    "ConformalThreshold",
    "MetricError",
    "aupro",
    "conformal_threshold",
    "image_metrics",
    "normals_needed",
    "p_values",
    "pixel_metrics",
    "sensitivity_specificity",
]

DEFAULT_MAX_THRESHOLDS = 20_000
_SAMPLE_PER_CLASS = 1_000_000
_SAMPLE_SEED = 0
# AUPRO regions are 8-connected components of each ground-truth mask (as in the MVTec AD
# evaluation code): pixels touching at a corner belong to the same lesion.
_REGION_STRUCTURE = np.ones((3, 3), dtype=bool)

ArrayLike = Any  # numpy arrays, torch tensors (CPU or not) or nested sequences


class MetricError(PDDError):
    """A metric is undefined for the given inputs (one class only, empty, NaN, mismatched)."""


# --------------------------------------------------------------------------- input checks


def _to_numpy(values: ArrayLike) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor, possibly on GPU or requiring grad
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _scores_1d(scores: ArrayLike, what: str = "scores") -> npt.NDArray[np.float64]:
    array = _to_numpy(scores)
    if array.ndim != 1:
        raise MetricError(f"{what} must be one-dimensional, got shape {tuple(array.shape)}")
    if array.size == 0:
        raise MetricError(f"{what} is empty")
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise MetricError(f"{what} must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise MetricError(f"{what} contain {bad} NaN or infinite value(s)")
    return array


def _labels_1d(labels: ArrayLike, n: int) -> npt.NDArray[np.bool_]:
    array = _to_numpy(labels)
    if array.ndim != 1:
        raise MetricError(f"labels must be one-dimensional, got shape {tuple(array.shape)}")
    if array.shape[0] != n:
        raise MetricError(f"labels and scores differ in length: {array.shape[0]} vs {n}")
    if array.dtype != np.bool_:
        if not np.issubdtype(array.dtype, np.number) or not np.all(np.isin(array, (0, 1))):
            raise MetricError("labels must be 0 (normal) or 1 (anomalous)")
        array = array.astype(bool)
    return array


def _checked_pair(
    labels: ArrayLike, scores: ArrayLike
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    values = _scores_1d(scores)
    flags = _labels_1d(labels, values.shape[0])
    n_pos = int(flags.sum())
    if n_pos == 0 or n_pos == flags.size:
        only = "anomalous" if n_pos else "normal"
        raise MetricError(f"metric undefined: all {flags.size} samples are {only}; need both classes")
    return flags, values


def _f1_max_from_counts(
    tp: npt.NDArray[np.float64], fp: npt.NDArray[np.float64], n_pos: float
) -> float:
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (TP + FP + P); never 0/0 because P > 0.
    return float(np.max(2.0 * tp / (tp + fp + n_pos)))


# --------------------------------------------------------------------------- image level


def image_metrics(labels: ArrayLike, scores: ArrayLike) -> dict[str, float]:
    """Image AUROC, average precision and F1-max (best F1 over all thresholds), exact."""
    flags, values = _checked_pair(labels, scores)
    precision, recall, _ = precision_recall_curve(flags, values)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator),
                   where=denominator > 0)
    return {
        "image_auroc": float(roc_auc_score(flags, values)),
        "image_ap": float(average_precision_score(flags, values)),
        "image_f1_max": float(np.max(f1)),
    }


@dataclass(frozen=True)
class ConformalThreshold:
    """A decision threshold with its finite-sample promise (split conformal / order statistics).

    For ``n`` held-out normal scores and a new normal scan exchangeable with them, flagging
    ``score > threshold`` with ``threshold`` the k-th smallest score, k = ceil((n + 1)(1 - alpha)),
    flags it with probability at most (n + 1 - k) / (n + 1) <= alpha. When k > n no threshold can
    promise ``alpha``; the smallest rate ``n`` supports, 1 / (n + 1), is used (threshold = the
    highest normal score) and ``alpha_used`` says so.
    """

    threshold: float
    alpha_requested: float
    alpha_used: float
    n: int
    rank: int  # k: the threshold is the k-th smallest normal score

    @property
    def guarantee(self) -> str:
        """The promise in words, for metrics.json, the checkpoint and the report."""
        text = (
            f"at most {100 * self.alpha_used:.3g} % of normal scans flagged, for scans like these "
            f"{self.n} held-out normals (threshold = {self.rank}-th smallest of their scores)"
        )
        if self.alpha_used > self.alpha_requested:
            text += (
                f"; {100 * self.alpha_requested:.3g} % was asked for, which needs at least "
                f"{normals_needed(self.alpha_requested)} normals"
            )
        return text

    def record(self) -> dict[str, Any]:
        """Plain JSON-able description (metrics.json, checkpoint meta)."""
        return {
            "threshold": self.threshold,
            "alpha_requested": self.alpha_requested,
            "alpha": self.alpha_used,
            "n": self.n,
            "rank": self.rank,
            "rule": "conformal: k-th smallest held-out normal score, k = ceil((n + 1)(1 - alpha))",
            "guarantee": self.guarantee,
        }


def normals_needed(alpha: float) -> int:
    """Smallest number of normal scores for which the conformal rule can promise ``alpha``."""
    return max(math.ceil(1.0 / alpha - 1e-12) - 1, 1)


def conformal_threshold(scores: ArrayLike, alpha: float) -> ConformalThreshold:
    """Decision threshold from held-out NORMAL scores only (``ConformalThreshold`` says what it
    promises); warns once when there are too few normals for ``alpha``. Test images must never be
    passed here."""
    if not 0.0 < alpha < 1.0:
        raise MetricError(f"false-alarm rate alpha must be in (0, 1), got {alpha}")
    values = np.sort(_scores_1d(scores, "normal scores"))
    n = values.size
    # The small tolerance keeps e.g. (19 + 1) * 0.95 = 19.000000000000004 at 19, not 20.
    rank = math.ceil((n + 1) * (1.0 - alpha) - 1e-9)
    alpha_used = float(alpha)
    if rank > n:
        rank, alpha_used = n, 1.0 / (n + 1)
        warnings.warn(
            f"{n} held-out normal scores cannot promise a false-alarm rate of {alpha:g}: that "
            f"needs at least {normals_needed(alpha)}; using the smallest rate {n} supports, "
            f"1/(n + 1) = {alpha_used:.3g} (threshold = the highest normal score)",
            UserWarning,
            stacklevel=2,
        )
    return ConformalThreshold(float(values[rank - 1]), float(alpha), alpha_used, n, rank)


def p_values(normal_scores: ArrayLike, scores: ArrayLike) -> npt.NDArray[np.float64]:
    """Conformal p-values: (1 + #{normal scores >= s}) / (n + 1) for each score ``s``; small means
    unusual for a normal scan (a normal scan's p-value is at most u with probability at most u)."""
    normals = np.sort(_scores_1d(normal_scores, "normal scores"))
    values = _scores_1d(scores)
    at_or_above = normals.size - np.searchsorted(normals, values, side="left")
    return (1.0 + at_or_above) / (normals.size + 1.0)


def sensitivity_specificity(
    labels: ArrayLike, scores: ArrayLike, threshold: float
) -> dict[str, float]:
    """Sensitivity (recall of anomalous) and specificity (recall of normal) at ``score > threshold``."""
    if not math.isfinite(threshold):
        raise MetricError(f"threshold must be finite, got {threshold}")
    flags, values = _checked_pair(labels, scores)
    predicted = values > threshold
    return {
        "sensitivity": float(np.mean(predicted[flags])),
        "specificity": float(np.mean(~predicted[~flags])),
    }


# --------------------------------------------------------------------------- pixel level


@dataclass(frozen=True)
class _PixelCounts:
    """Per-threshold counts, thresholds in DESCENDING order (index 0 = highest threshold)."""

    thresholds: npt.NDArray[np.float64]
    tp: npt.NDArray[np.float64]  # anomalous pixels with score >= threshold
    fp: npt.NDArray[np.float64]  # normal pixels with score >= threshold
    overlap_sum: npt.NDArray[np.float64]  # sum over regions of (region pixels >= threshold)/size
    n_pos: int
    n_neg: int
    n_regions: int


def _pixel_pairs(
    masks: ArrayLike | Sequence[ArrayLike], maps: ArrayLike | Sequence[ArrayLike]
) -> list[tuple[npt.NDArray[np.bool_], np.ndarray]]:
    """Validate masks/maps ([N,H,W] arrays or sequences of HxW arrays) into per-image pairs."""
    if len(masks) != len(maps):
        raise MetricError(f"masks and maps differ in number of images: {len(masks)} vs {len(maps)}")
    if len(maps) == 0:
        raise MetricError("no images: masks and maps are empty")
    pairs = []
    for index in range(len(maps)):
        mask, amap = _to_numpy(masks[index]), _to_numpy(maps[index])
        if amap.ndim != 2 or mask.shape != amap.shape:
            raise MetricError(
                f"image {index}: mask and map must both be HxW and equal in shape, got "
                f"{tuple(mask.shape)} and {tuple(amap.shape)} (pass masks/maps as [N,H,W])"
            )
        if amap.size == 0:
            raise MetricError(f"image {index}: map is empty")
        if mask.dtype != np.bool_:
            if not np.all(np.isin(mask, (0, 1))):
                raise MetricError(f"image {index}: mask values must be 0/1 or bool")
            mask = mask.astype(bool)
        if not np.issubdtype(amap.dtype, np.number):
            raise MetricError(f"image {index}: map must be numeric, got dtype {amap.dtype}")
        if not np.all(np.isfinite(amap)):
            raise MetricError(f"image {index}: map contains NaN or infinite values")
        pairs.append((mask, amap))
    return pairs


def _thresholds(
    pairs: list[tuple[npt.NDArray[np.bool_], np.ndarray]], max_thresholds: int
) -> npt.NDArray[np.float64]:
    """Ascending thresholds: actual score values, dense where either class has mass."""
    n_pos = sum(int(mask.sum()) for mask, _ in pairs)
    n_neg = sum(mask.size for mask, _ in pairs) - n_pos
    fraction = {True: min(1.0, _SAMPLE_PER_CLASS / max(n_pos, 1)),
                False: min(1.0, _SAMPLE_PER_CLASS / max(n_neg, 1))}
    rng = np.random.default_rng(_SAMPLE_SEED)
    samples: dict[bool, list[np.ndarray]] = {True: [], False: []}
    lowest = math.inf
    for mask, amap in pairs:
        lowest = min(lowest, float(amap.min()))
        for cls in (True, False):
            values = amap[mask] if cls else amap[~mask]
            if fraction[cls] < 1.0:
                values = values[rng.random(values.size) < fraction[cls]]
            samples[cls].append(values)
    pooled = {cls: np.concatenate(parts) for cls, parts in samples.items()}
    distinct = np.union1d(np.union1d(pooled[True], pooled[False]), [lowest])
    if distinct.size <= max_thresholds:
        return distinct
    # (max_thresholds - 1) // 2 quantiles per class plus the lowest score: at most max_thresholds
    probabilities = np.linspace(0.0, 1.0, (max_thresholds - 1) // 2)
    edges = [np.quantile(values, probabilities, method="lower")
             for values in pooled.values() if values.size]
    # The lowest score is always a threshold, so the curves end at (FPR, TPR) = (1, 1).
    return np.unique(np.concatenate([*edges, [lowest]]))


def _pixel_counts(
    masks: ArrayLike | Sequence[ArrayLike],
    maps: ArrayLike | Sequence[ArrayLike],
    max_thresholds: int,
) -> _PixelCounts:
    if max_thresholds < 5:
        raise MetricError(f"max_thresholds must be at least 5, got {max_thresholds}")
    pairs = _pixel_pairs(masks, maps)
    ascending = _thresholds(pairs, max_thresholds)
    n_bins = ascending.size
    pos_hist = np.zeros(n_bins)
    neg_hist = np.zeros(n_bins)
    overlap_hist = np.zeros(n_bins)
    n_regions = 0
    for mask, amap in pairs:
        # Bin i holds scores in [t_i, t_{i+1}); every score is >= t_0, the lowest score.
        bins = np.searchsorted(ascending, amap, side="right") - 1
        pos_hist += np.bincount(bins[mask], minlength=n_bins)
        neg_hist += np.bincount(bins[~mask], minlength=n_bins)
        if mask.any():
            regions, count = ndimage.label(mask, structure=_REGION_STRUCTURE)
            sizes = np.bincount(regions.ravel())
            inside = regions > 0
            # Each pixel of region r weighs 1/|r|: a bin's weight is the overlap it adds.
            overlap_hist += np.bincount(
                bins[inside], weights=1.0 / sizes[regions[inside]], minlength=n_bins
            )
            n_regions += count
    n_pos, n_neg = int(pos_hist.sum()), int(neg_hist.sum())
    if n_pos == 0 or n_neg == 0:
        only = "anomalous" if n_pos else "normal"
        raise MetricError(f"pixel metric undefined: all {n_pos + n_neg} mask pixels are {only}")

    def at_or_above(hist: np.ndarray) -> np.ndarray:  # descending thresholds
        return np.cumsum(hist[::-1])

    return _PixelCounts(
        thresholds=ascending[::-1],
        tp=at_or_above(pos_hist),
        fp=at_or_above(neg_hist),
        overlap_sum=at_or_above(overlap_hist),
        n_pos=n_pos,
        n_neg=n_neg,
        n_regions=n_regions,
    )


def _area_up_to(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], x_max: float) -> float:
    """Trapezoid area under a monotone curve (x, y non-decreasing) from x[0] to x_max."""
    keep = int(np.searchsorted(x, x_max, side="right"))
    xs, ys = x[:keep], y[:keep]
    if keep < x.size and xs[-1] < x_max:  # the curve crosses x_max between two points
        x0, y0, x1, y1 = xs[-1], ys[-1], x[keep], y[keep]
        xs = np.append(xs, x_max)
        ys = np.append(ys, y0 + (y1 - y0) * (x_max - x0) / (x1 - x0))
    return float(np.trapezoid(ys, xs))


def _aupro_from_counts(counts: _PixelCounts, fpr_limit: float) -> float:
    fpr = np.concatenate([[0.0], counts.fp / counts.n_neg])
    pro = np.concatenate([[0.0], counts.overlap_sum / counts.n_regions])
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


def _check_fpr_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise MetricError(f"fpr_limit must be in (0, 1], got {fpr_limit}")


def pixel_metrics(
    masks: ArrayLike | Sequence[ArrayLike],
    maps: ArrayLike | Sequence[ArrayLike],
    *,
    fpr_limit: float = 0.3,
    max_thresholds: int = DEFAULT_MAX_THRESHOLDS,
) -> dict[str, float]:
    """Pixel AUROC, AP, F1-max and AUPRO (FPR <= ``fpr_limit``) of anomaly maps against GT masks.

    ``masks``: bool [N,H,W] (or a sequence of HxW arrays); ``maps``: float, same shapes. Pixels of
    all images are pooled; precision as described in the module docstring.
    """
    _check_fpr_limit(fpr_limit)
    counts = _pixel_counts(masks, maps, max_thresholds)
    tpr = np.concatenate([[0.0], counts.tp / counts.n_pos])
    fpr = np.concatenate([[0.0], counts.fp / counts.n_neg])
    precision = counts.tp / (counts.tp + counts.fp)  # every threshold is a score: never 0/0
    return {
        "pixel_auroc": float(np.trapezoid(tpr, fpr)),
        "pixel_ap": float(np.sum(np.diff(tpr) * precision)),
        "pixel_f1_max": _f1_max_from_counts(counts.tp, counts.fp, counts.n_pos),
        "pixel_aupro": _aupro_from_counts(counts, fpr_limit),
    }


def aupro(
    masks: ArrayLike | Sequence[ArrayLike],
    maps: ArrayLike | Sequence[ArrayLike],
    fpr_limit: float = 0.3,
    *,
    max_thresholds: int = DEFAULT_MAX_THRESHOLDS,
) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (MVTec AD's AUPRO).

    Regions are the 8-connected components of each mask; at each threshold the PRO is the mean over
    all regions (of all images) of the fraction of the region at or above the threshold, and the
    FPR is taken over all normal pixels. The PRO-vs-FPR curve is integrated (trapezoids,
    interpolated at ``fpr_limit``) from 0 to ``fpr_limit`` and divided by ``fpr_limit``.
    """
    _check_fpr_limit(fpr_limit)
    counts = _pixel_counts(masks, maps, max_thresholds)
    return _aupro_from_counts(counts, fpr_limit)
