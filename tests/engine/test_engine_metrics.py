"""Metrics against scikit-learn and against a slow, straightforward AUPRO reference."""

from __future__ import annotations

import itertools
import tracemalloc
import warnings
from collections import deque

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
)

from pdd.errors import PDDError
from pdd.evaluation import metrics
from pdd.evaluation.metrics import MetricError

# --------------------------------------------------------------------------- references


def sklearn_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(f1.max())


def flood_fill_regions(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components by breadth-first search, independent of scipy."""
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    height, width = mask.shape
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, region = deque([start]), []
        while queue:
            y, x = queue.popleft()
            region.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        regions.append(region)
    return regions


def reference_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float) -> float:
    """Every distinct score is a threshold; PRO = mean region overlap; FPR over normal pixels."""
    regions = [
        (index, np.array(region))
        for index in range(len(masks))
        for region in flood_fill_regions(masks[index])
    ]
    normal_scores = maps[~masks]
    points = [(0.0, 0.0)]
    for threshold in sorted(np.unique(maps), reverse=True):
        fpr = np.mean(normal_scores >= threshold)
        overlaps = [
            np.mean(maps[index][pixels[:, 0], pixels[:, 1]] >= threshold)
            for index, pixels in regions
        ]
        points.append((float(fpr), float(np.mean(overlaps))))
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def random_masks_and_maps(
    rng: np.random.Generator, n: int, size: int, decimals: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Rectangles plus scattered pixels (touching at corners too), a few all-normal images."""
    masks = np.zeros((n, size, size), dtype=bool)
    for index in range(n):
        if index % 3 == 2:
            continue  # a normal image
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 3, 2)
            h, w = rng.integers(1, 5, 2)
            masks[index, y : y + h, x : x + w] = True
        masks[index] |= rng.random((size, size)) < 0.03
    maps = rng.random((n, size, size)) + 0.4 * masks
    if decimals is not None:
        maps = np.round(maps, decimals)  # many ties
    return masks, maps


# --------------------------------------------------------------------------- image level


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 1])
def test_image_metrics_match_sklearn(seed: int, decimals: int | None) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    labels[:2] = [0, 1]
    scores = rng.normal(size=60) + labels
    if decimals is not None:
        scores = np.round(scores, decimals)
    result = metrics.image_metrics(labels, scores)
    assert result["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert result["image_f1_max"] == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-12)


def test_image_metrics_accept_torch_and_bool() -> None:
    labels = torch.tensor([False, False, True, True])
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8], requires_grad=True)
    result = metrics.image_metrics(labels, scores)
    assert result["image_auroc"] == pytest.approx(0.75)
    assert result["image_f1_max"] == pytest.approx(0.8)  # threshold 0.35: TP 2, FP 1, FN 0


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([0, 0, 0], [0.1, 0.2, 0.3], "all 3 samples are normal"),
        ([1, 1], [0.1, 0.2], "all 2 samples are anomalous"),
        ([], [], "empty"),
        ([0, 1], [0.1, float("nan")], "NaN"),
        ([0, 1], [0.1, float("inf")], "NaN or infinite"),
        ([0, 1, 1], [0.1, 0.2], "differ in length"),
        ([0, 2], [0.1, 0.2], r"0 \(normal\) or 1"),
        ([[0, 1]], [[0.1, 0.2]], "one-dimensional"),
    ],
)
def test_image_metrics_undefined_inputs_raise(labels, scores, message) -> None:
    with pytest.raises(MetricError, match=message):
        metrics.image_metrics(labels, scores)


def test_metric_error_is_a_pdd_error() -> None:
    assert issubclass(MetricError, PDDError)


# --------------------------------------------------------------------------- thresholds


def test_conformal_threshold_is_the_k_th_smallest_normal_score() -> None:
    normal_scores = np.arange(100, 0, -1, dtype=float)  # 100..1, any order
    # k = ceil(101 * 0.95) = 96; ceil(101 * 0.5) = 51; ceil(101 * 0.99) = 100
    chosen = metrics.conformal_threshold(normal_scores, 0.05)
    assert (chosen.threshold, chosen.rank, chosen.n, chosen.alpha_used) == (96.0, 96, 100, 0.05)
    assert metrics.conformal_threshold(normal_scores, 0.5).threshold == 51.0
    assert metrics.conformal_threshold(normal_scores, 0.01).threshold == 100.0
    record = chosen.record()
    assert record["alpha"] == record["alpha_requested"] == 0.05 and record["n"] == 100
    assert "at most 5 % of normal scans flagged" in record["guarantee"]


def test_too_few_normals_warn_and_use_the_smallest_supported_rate() -> None:
    # alpha = 0.05 needs n >= ceil(1/0.05) - 1 = 19: 19 normals are enough, 18 are not.
    assert metrics.normals_needed(0.05) == 19
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enough = metrics.conformal_threshold(np.arange(19.0), 0.05)
    assert (enough.rank, enough.alpha_used) == (19, 0.05)
    with pytest.warns(UserWarning, match="needs at least 19"):
        few = metrics.conformal_threshold(np.arange(8.0), 0.05)
    assert few.threshold == 7.0 and few.alpha_used == pytest.approx(1 / 9)
    assert few.record()["alpha_requested"] == 0.05
    assert "needs at least 19 normals" in few.guarantee


def _false_alarm_rates(n: int, draws: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Empirical false-alarm rate of a new normal score for the conformal threshold and for the
    old ``np.quantile(.., 0.95)``, over ``draws`` independent sets of ``n`` normal scores."""
    # Uniform scores: the conformal rate is the same for every continuous distribution; the
    # interpolated quantile's depends on the shape, and the table is for this one.
    normals = rng.uniform(size=(draws, n))
    new = rng.uniform(size=draws)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n = 8 is too few for 5 %: tested above
        chosen = [metrics.conformal_threshold(row, 0.05) for row in normals]
    conformal = np.array([c.threshold for c in chosen])
    old = np.quantile(normals, 0.95, axis=1)
    return float(np.mean(new > conformal)), float(np.mean(new > old)), chosen[0].alpha_used


@pytest.mark.parametrize(("n", "old_expected"), [(8, 0.151), (20, 0.093), (50, 0.067)])
def test_conformal_threshold_keeps_its_false_alarm_promise(n: int, old_expected: float) -> None:
    draws = 20_000
    conformal, old, alpha_used = _false_alarm_rates(n, draws, np.random.default_rng(n))
    error = 3 * np.sqrt(alpha_used * (1 - alpha_used) / draws)  # three Monte-Carlo std errors
    assert conformal <= alpha_used + error
    assert alpha_used == (0.05 if n >= 19 else pytest.approx(1 / (n + 1)))
    # The table: the 0.95 quantile flags far more than 5 % of normals at these sizes.
    assert old == pytest.approx(old_expected, abs=0.008)
    assert old > 0.05 + 3 * np.sqrt(0.05 * 0.95 / draws)
    if n == 8:
        assert old > alpha_used + error  # even above the best rate 8 normals can promise


def test_p_values_against_a_hand_computation() -> None:
    normals = [0.2, 0.5, 0.5, 0.9]  # n = 4
    # s = 0.1: all 4 >= s -> 5/5; 0.5: 3 (0.5, 0.5, 0.9) -> 4/5; 0.7: 1 -> 2/5; 1.0: 0 -> 1/5
    assert metrics.p_values(normals, [0.1, 0.5, 0.7, 1.0]).tolist() == pytest.approx(
        [1.0, 0.8, 0.4, 0.2]
    )


@pytest.mark.parametrize(
    ("scores", "alpha", "message"),
    [
        ([], 0.05, "empty"),
        ([0.1, float("nan")], 0.05, "NaN"),
        ([0.1, 0.2], 0.0, "alpha"),
        ([0.1, 0.2], 1.0, "alpha"),
    ],
)
def test_conformal_threshold_bad_input(scores, alpha, message) -> None:
    with pytest.raises(MetricError, match=message):
        metrics.conformal_threshold(scores, alpha)


def test_sensitivity_specificity_uses_strictly_greater() -> None:
    labels = [0, 0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.5, 0.7, 0.5, 0.8, 0.9]
    # score > 0.5 is anomalous: normals 0.1, 0.2, 0.5 pass (3 of 4); anomalies 0.8, 0.9 (2 of 3).
    result = metrics.sensitivity_specificity(labels, scores, 0.5)
    assert result == {"sensitivity": pytest.approx(2 / 3), "specificity": pytest.approx(3 / 4)}
    with pytest.raises(MetricError, match="finite"):
        metrics.sensitivity_specificity(labels, scores, float("nan"))
    with pytest.raises(MetricError, match="both classes"):
        metrics.sensitivity_specificity([0, 0], [0.1, 0.2], 0.5)


# --------------------------------------------------------------------------- pixel level


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 2])
def test_pixel_metrics_match_sklearn_exactly_when_few_distinct_values(seed, decimals) -> None:
    rng = np.random.default_rng(seed)
    masks, maps = random_masks_and_maps(rng, n=6, size=20, decimals=decimals)
    result = metrics.pixel_metrics(masks, maps.astype(np.float32))
    labels, scores = masks.ravel(), maps.astype(np.float32).ravel()
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert result["pixel_f1_max"] == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_pixel_metrics_binned_stay_within_stated_precision(seed) -> None:
    rng = np.random.default_rng(seed)
    masks, maps = random_masks_and_maps(rng, n=9, size=40, decimals=None)
    max_thresholds = 200  # far fewer than the ~14 000 distinct scores: the binned path
    result = metrics.pixel_metrics(masks, maps, max_thresholds=max_thresholds)
    labels, scores = masks.ravel(), maps.ravel()
    tolerance = 2.0 / max_thresholds
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=tolerance)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(labels, scores), abs=tolerance)
    exact_f1 = sklearn_f1_max(labels, scores)
    assert exact_f1 - tolerance <= result["pixel_f1_max"] <= exact_f1 + 1e-12
    exact_pro = metrics.aupro(masks, maps)  # exact here: 14 400 distinct values < 20 000
    assert result["pixel_aupro"] == pytest.approx(exact_pro, abs=tolerance)


def test_pixel_metrics_accept_a_list_of_tensors() -> None:
    rng = np.random.default_rng(3)
    masks, maps = random_masks_and_maps(rng, n=3, size=12, decimals=2)
    as_arrays = metrics.pixel_metrics(masks, maps)
    as_tensors = metrics.pixel_metrics(
        [torch.from_numpy(m).float() for m in masks], [torch.from_numpy(a) for a in maps]
    )
    assert as_tensors == as_arrays


def test_pixel_metrics_memory_does_not_grow_with_the_number_of_images(monkeypatch) -> None:
    monkeypatch.setattr(metrics, "_SAMPLE_PER_CLASS", 20_000)  # so both sizes below sample

    def peak_bytes(n_images: int) -> int:
        rng = np.random.default_rng(0)
        masks = np.zeros((n_images, 128, 128), dtype=bool)
        masks[n_images // 2 :, 40:70, 50:90] = True
        maps = rng.random(masks.shape, dtype=np.float32)
        maps[masks] += 0.3
        tracemalloc.start()
        metrics.pixel_metrics(masks, maps)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return peak

    small, large = peak_bytes(10), peak_bytes(40)
    # 30 more images are 2 MB of float32 scores; an exact pooled computation (scikit-learn)
    # grows by ~35 MB here (sorted copies, int64 indices, cumulative counts), the streaming one
    # by ~0.4 MB (the list of per-image views).
    assert large - small < 1.5e6, f"peak grew from {small / 1e6:.1f} to {large / 1e6:.1f} MB"


@pytest.mark.parametrize(
    ("masks", "maps", "message"),
    [
        (np.zeros((2, 4, 4), bool), np.ones((2, 4, 4)), "all 32 mask pixels are normal"),
        (np.ones((1, 4, 4), bool), np.ones((1, 4, 4)), "all 16 mask pixels are anomalous"),
        (np.zeros((2, 4, 4), bool), np.ones((3, 4, 4)), "differ in number of images"),
        (np.zeros((1, 4, 4), bool), np.ones((1, 4, 5)), "equal in shape"),
        (np.zeros((0, 4, 4), bool), np.ones((0, 4, 4)), "empty"),
        (np.zeros((1, 1, 4, 4), bool), np.ones((1, 1, 4, 4)), r"\[N,H,W\]"),
        (np.eye(4)[None].astype(bool), np.full((1, 4, 4), np.nan), "NaN"),
        (np.full((1, 4, 4), 0.5), np.ones((1, 4, 4)), "0/1 or bool"),
    ],
)
def test_pixel_metrics_undefined_inputs_raise(masks, maps, message) -> None:
    with pytest.raises(MetricError, match=message):
        metrics.pixel_metrics(masks, maps)


# --------------------------------------------------------------------------- AUPRO


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_aupro_matches_slow_reference(seed: int, fpr_limit: float) -> None:
    rng = np.random.default_rng(seed)
    masks, maps = random_masks_and_maps(rng, n=5, size=14, decimals=2 if seed % 2 else None)
    expected = reference_aupro(masks, maps, fpr_limit)
    assert metrics.aupro(masks, maps, fpr_limit) == pytest.approx(expected, abs=1e-12)
    if fpr_limit == 0.3:
        assert metrics.pixel_metrics(masks, maps)["pixel_aupro"] == pytest.approx(expected, abs=1e-12)


def test_aupro_regions_are_8_connected_and_weighted_equally() -> None:
    # Region pixels (0,0),(1,0),(2,0) touch pixel (3,1) only at a corner: one region of 4 pixels.
    mask = np.zeros((4, 4), dtype=bool)
    mask[[0, 1, 2, 3], [0, 0, 0, 1]] = True
    amap = np.zeros((4, 4))
    amap[mask] = 0.5
    amap[3, 1] = 1.0
    normal = np.flatnonzero(~mask.ravel())
    amap.ravel()[normal[:6]] = 0.75  # half of the 12 normal pixels
    # Thresholds 1, .75, .5, 0 give (FPR, PRO) = (0, 1/4), (1/2, 1/4), (1/2, 1), (1, 1): area 5/8.
    # (With 4-connectivity the corner pixel would be its own region: PRO 1/2 and area 3/4.)
    assert metrics.aupro(mask[None], amap[None], fpr_limit=1.0) == pytest.approx(0.625)


def test_aupro_extremes() -> None:
    rng = np.random.default_rng(5)
    masks, _ = random_masks_and_maps(rng, n=4, size=16, decimals=None)
    perfect = masks + rng.random(masks.shape) * 0.5
    assert metrics.aupro(masks, perfect) == pytest.approx(1.0)
    assert metrics.aupro(masks, -perfect) == pytest.approx(0.0)


def test_aupro_rejects_bad_limit() -> None:
    masks = np.eye(4, dtype=bool)[None]
    with pytest.raises(MetricError, match="fpr_limit"):
        metrics.aupro(masks, np.ones((1, 4, 4)), fpr_limit=0.0)


@pytest.mark.parametrize("max_thresholds", [5, 6, 50])
def test_pixel_metrics_use_at_most_max_thresholds(max_thresholds, monkeypatch) -> None:
    rng = np.random.default_rng(4)
    masks, maps = random_masks_and_maps(rng, n=4, size=20, decimals=None)
    used = []
    original = metrics._thresholds

    def recording(pairs, limit):
        thresholds = original(pairs, limit)
        used.append(thresholds.size)
        return thresholds

    monkeypatch.setattr(metrics, "_thresholds", recording)
    metrics.pixel_metrics(masks, maps, max_thresholds=max_thresholds)
    assert 3 <= used[0] <= max_thresholds
    with pytest.raises(MetricError, match="at least 5"):
        metrics.pixel_metrics(masks, maps, max_thresholds=4)
