"""Protocol guards (issue 10): each test here fails on one mutation of the evaluation glue that once
passed the whole suite. The docstring of each test names the mutation it kills:

- M1 the decision threshold taken from the test normals instead of the held-out normals;
- M2 every label in ``scores.csv`` written as 0;
- M3 ``pdd test`` ignoring the checkpoint's training seed;
- M4 PDD's anomaly map built without student 1;
- M5 L_s1 and L_s2 applied to the wrong students.

References are independent of the code under test: numpy's quantile, scikit-learn's metrics, a
hand-written AUPRO, scipy's Gaussian filter, and the manifests the run wrote.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from engine_fakes import SMALL_VMAMBA, read_metrics, read_scores
from scipy import ndimage
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
)
from torch.utils.data import DataLoader

from pdd import create_model
from pdd.data import (
    ImageDataset,
    Sample,
    load_dataset,
    make_phantom,
    read_manifest,
    to_model_input,
)
from pdd.runs.checkpoint import load
from pdd.training import runner
from pdd.training.runner import FitOptions, fit

CLASSES = ("a", "b")
SMALL_MODEL = {
    "teachers": "random",
    "image_size": 32,
    "teacher_options": {"vmamba_tiny_v0": SMALL_VMAMBA},
}


# --------------------------------------------------------------------------- helpers


def forward_all(
    model: torch.nn.Module, samples: list[Sample], size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(maps [N,S,S], scores [N], masks [N,S,S]) of ``samples`` by the model itself, no Scorer."""
    maps, scores, masks = [], [], []
    model.eval()
    with torch.inference_mode():
        for batch in DataLoader(ImageDataset(samples, size), batch_size=8):
            batch_maps, batch_scores = model(batch["image"])
            maps.append(batch_maps.double().numpy())
            scores.append(batch_scores.double().numpy())
            masks.append(batch["mask"][:, 0].numpy() > 0.5)
    return np.concatenate(maps), np.concatenate(scores), np.concatenate(masks)


def manifest_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(
            precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0
        )
    return float(f1.max())


def aupro_by_hand(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """MVTec AD's AUPRO, exactly, at every distinct map value: 8-connected regions per image, PRO
    the mean region overlap at ``score >= t``, FPR over all normal pixels, the PRO-FPR curve from
    (0, 0) integrated up to ``fpr_limit`` (linear at the crossing) and divided by it."""
    thresholds = np.unique(maps)[::-1]
    normal = np.sort(maps[~masks])
    fpr = (normal.size - np.searchsorted(normal, thresholds, side="left")) / normal.size
    overlaps = []
    for mask, amap in zip(masks, maps):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        for region in range(1, count + 1):
            values = np.sort(amap[labelled == region])
            overlaps.append(
                (values.size - np.searchsorted(values, thresholds, side="left"))
                / values.size
            )
    pro = np.mean(overlaps, axis=0)
    x, y = np.concatenate([[0.0], fpr]), np.concatenate([[0.0], pro])
    beyond = int(np.argmax(x > fpr_limit)) if (x > fpr_limit).any() else x.size
    xs, ys = list(x[:beyond]), list(y[:beyond])
    if beyond < x.size:
        x0, y0, x1, y1 = x[beyond - 1], y[beyond - 1], x[beyond], y[beyond]
        xs.append(fpr_limit)
        ys.append(y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0))
    return float(np.trapezoid(ys, xs) / fpr_limit)


def recomputed_metrics(
    rows: list[dict[str, str]],
    threshold: float,
    pixels: tuple[np.ndarray, np.ndarray] | None,
) -> dict[str, float]:
    """Every metric of metrics.json from scores.csv rows (scikit-learn) and regenerated maps."""
    labels = np.array([int(r["label"]) for r in rows])
    scores = np.array([float(r["score"]) for r in rows])
    values = {
        "image_auroc": roc_auc_score(labels, scores),
        "image_ap": average_precision_score(labels, scores),
        "image_f1_max": f1_max(labels, scores),
        "sensitivity": float(np.mean(scores[labels == 1] > threshold)),
        "specificity": float(np.mean(scores[labels == 0] <= threshold)),
    }
    if pixels is not None:
        masks, maps = pixels
        values.update(
            pixel_auroc=roc_auc_score(masks.ravel(), maps.ravel()),
            pixel_ap=average_precision_score(masks.ravel(), maps.ravel()),
            pixel_f1_max=f1_max(masks.ravel(), maps.ravel()),
            pixel_aupro=aupro_by_hand(masks, maps),
        )
    return {key: float(value) for key, value in values.items()}


# --------------------------------------------------------------------------- a real two-class run


@pytest.fixture(scope="module")
def pdd_classes_run(
    tmp_path_factory: pytest.TempPathFactory, phantom_classes: Path, real_options
) -> Path:
    """The real ``pdd`` preset (random teachers, small VMamba, 32 px, 1 epoch) fit on both classes
    of a phantom set, one model per class; 30 % of the training normals held out (4 images)."""
    return fit(
        real_options(
            "pdd",
            phantom_classes,
            tmp_path_factory.mktemp("pdd_classes") / "run",
            holdout_fraction=0.3,
        )
    )


@pytest.mark.slow
def test_threshold_and_colour_scale_come_from_held_out_normals(
    pdd_classes_run: Path, phantom_classes: Path
) -> None:
    """Kills M1 (threshold from the test normals): after fit, each class's threshold is the
    conformal one at --fpr 0.05 (the k-th smallest held-out normal score, k = ceil((n + 1) * 0.95),
    the highest when k > n) and its stored normal scores are theirs, recomputed with the saved model.ckpt from split.csv's
    holdout rows, and the heatmap scale (median held-out pixel, highest held-out score) comes from
    the same images; the test normals would give another threshold."""
    for name in CLASSES:
        folder = pdd_classes_run / name
        model, meta = load(folder / "model.ckpt")
        size = int(meta["config"]["image_size"])
        parts = read_manifest(folder / "split.csv", phantom_classes)
        holdout = parts["holdout"]
        assert len(holdout) >= 3 and {s.label for s in holdout} == {0}
        maps, scores, _ = forward_all(model, holdout, size)
        rank = min(math.ceil((len(scores) + 1) * 0.95), len(scores))
        expected = float(np.sort(scores)[rank - 1])
        assert meta["threshold"] == pytest.approx(expected, rel=1e-6)
        assert meta["normal_scores"] == pytest.approx(list(scores), rel=1e-6)
        assert meta["threshold_calibration"]["n"] == len(scores)
        assert read_metrics(folder)["threshold"] == meta["threshold"]
        assert meta["map_stats"]["vmin"] == pytest.approx(
            float(np.median(maps)), rel=1e-5
        )
        assert meta["map_stats"]["vmax"] == pytest.approx(float(scores.max()), rel=1e-6)
        assert read_metrics(folder)["map_stats"] == meta["map_stats"]
        # The guard can tell the two sets apart.
        _, test_scores, _ = forward_all(
            model, [s for s in parts["test"] if s.label == 0], size
        )
        test_rank = min(math.ceil((len(test_scores) + 1) * 0.95), len(test_scores))
        assert float(np.sort(test_scores)[test_rank - 1]) != pytest.approx(
            expected, rel=1e-6
        )


@pytest.mark.slow
def test_scores_labels_and_every_metric_recomputed_from_the_run(
    pdd_classes_run: Path, phantom_classes: Path
) -> None:
    """Kills M2 (every label in scores.csv written as 0): scores.csv's labels equal split.csv's test
    labels row by row, and every metric of metrics.json - image and pixel, sensitivity/specificity
    - equals scikit-learn (and a hand AUPRO) on scores.csv and on maps regenerated from model.ckpt,
    for each class and for the mean over classes."""
    per_class = {}
    for name in CLASSES:
        folder = pdd_classes_run / name
        rows = read_scores(folder)
        tested = [
            r for r in manifest_rows(folder / "split.csv") if r["split"] == "test"
        ]
        assert [(Path(r["path"]).resolve(), r["label"]) for r in rows] == [
            ((phantom_classes / r["path"]).resolve(), r["label"]) for r in tested
        ]
        assert {r["label"] for r in rows} == {"0", "1"}
        model, meta = load(folder / "model.ckpt")
        test = read_manifest(folder / "split.csv", phantom_classes)["test"]
        maps, scores, masks = forward_all(
            model, test, int(meta["config"]["image_size"])
        )
        np.testing.assert_allclose(scores, [float(r["score"]) for r in rows], rtol=1e-5)
        metrics = read_metrics(folder)
        expected = recomputed_metrics(rows, metrics["threshold"], (masks, maps))
        for key, value in expected.items():
            assert metrics[key] == pytest.approx(value, abs=1e-6), (name, key)
        per_class[name] = expected
    mean = read_metrics(pdd_classes_run)
    assert mean["mean_over"] == "classes"
    for key in per_class["a"]:
        assert mean["classes"]["a"][key] == pytest.approx(
            per_class["a"][key], abs=1e-6
        ), key
        assert mean["classes"]["b"][key] == pytest.approx(
            per_class["b"][key], abs=1e-6
        ), key
        assert mean[key] == pytest.approx(
            (per_class["a"][key] + per_class["b"][key]) / 2, abs=1e-6
        ), key
    pooled = read_scores(pdd_classes_run)
    assert [r["label"] for r in pooled] == [
        r["label"] for name in CLASSES for r in read_scores(pdd_classes_run / name)
    ]


# --------------------------------------------------------------------------- M3: the training split


def test_test_and_fit_split_reproduce_the_training_split(
    fake_model: None, headct_phantoms: Path, tmp_path: Path
) -> None:
    """Kills M3 (``pdd test`` ignoring the checkpoint's seed): on a set without an official split,
    trained with seed 3, ``pdd test`` (no --split) and ``fit --split`` reproduce the training
    run's split.csv and its scores exactly; seed 0 would have drawn another test set."""

    def options(out: Path, **changes: object) -> FitOptions:
        return FitOptions(data=headct_phantoms, out=out, preset="fake", teachers="random", seeds=[3],  # type: ignore[arg-type]
                          epochs=1, accelerator="cpu", progress=False, **changes)  # fmt: skip

    trained = fit(options(tmp_path / "run"))
    split = manifest_rows(trained / "split.csv")
    tested_names = {Path(r["path"]).name for r in split if r["split"] == "test"}
    assert {
        Path(s.path).name for s in load_dataset(headct_phantoms, seed=0).test
    } != tested_names

    tested = runner.test(
        trained / "model.ckpt", headct_phantoms, tmp_path / "test", progress=False
    )
    assert manifest_rows(tested / "split.csv") == split
    assert [(r["path"], r["score"]) for r in read_scores(tested)] == [
        (r["path"], r["score"]) for r in read_scores(trained)
    ]

    refit = fit(options(tmp_path / "refit", split_file=trained / "split.csv"))
    assert manifest_rows(refit / "split.csv") == split
    assert [(r["path"], r["score"]) for r in read_scores(refit)] == [
        (r["path"], r["score"]) for r in read_scores(trained)
    ]


# --------------------------------------------------------------------------- M4, M5: the real model


def phantom_batch(count: int = 2, size: int = 32) -> torch.Tensor:
    rng = np.random.default_rng(5)
    images = [
        np.repeat(make_phantom(rng, 64, lesion=k % 2 == 1)[0][:, :, None], 3, axis=2)
        for k in range(count)
    ]
    return torch.stack([to_model_input(image, size) for image in images])


def students_by_hand(
    model: torch.nn.Module, u: torch.Tensor, f: list[torch.Tensor]
) -> list[list[torch.Tensor]]:
    """The students as the paper wires them: student 1 decodes u, student 2 (the only one of a
    one-student model; the same decoder when shared) decodes u with the MPA priors added."""
    priors = model.prior(u, [tuple(f[2].shape[-2:]), tuple(f[1].shape[-2:])])
    prior_fed = model.students[-1](u, priors)
    return (
        [prior_fed]
        if model.config["num_students"] == 1
        else [model.students[0](u), prior_fed]
    )


@pytest.mark.parametrize("preset", ["pdd", "pdd-one-student", "pdd-reference"])
def test_pdd_map_sums_three_pairs_per_student(preset: str) -> None:
    """Kills M4 (PDD's map built without student 1): the map equals a hand computation - per
    student and level, 1 - cos over channels (``F.cosine_similarity``), bilinearly upsampled,
    summed over 3 x (number of students) pairs, smoothed by scipy's Gaussian (sigma 4) - and
    leaving any one student out changes it far beyond the tolerance."""
    model = create_model(preset, **SMALL_MODEL).eval()
    images = phantom_batch()
    with torch.inference_mode():
        f, u = model.targets(images)
        students = students_by_hand(model, u, f)
        assert len(students) == model.config["num_students"]
        assert len(model.feature_pairs(images)) == 3 * len(students)
        per_student = [
            sum(
                F.interpolate(1 - F.cosine_similarity(s, t, dim=1)[:, None], size=(32, 32), mode="bilinear", align_corners=True)
                for s, t in zip(student, f)
            ).double().numpy()[:, 0]
            for student in students
        ]  # fmt: skip
        maps, scores = model(images)

    def smooth(total: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(
            total, sigma=(0, 4, 4), mode="reflect", truncate=4.0
        )

    expected = smooth(sum(per_student))
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(
        maps.double().numpy(), expected, rtol=0, atol=1e-5 * scale
    )
    np.testing.assert_allclose(
        scores.double().numpy(), expected.reshape(len(expected), -1).max(1), rtol=1e-5
    )
    for left_out in range(len(per_student) if len(per_student) > 1 else 0):
        partial = smooth(sum(m for i, m in enumerate(per_student) if i != left_out))
        assert np.abs(partial - expected).max() > 0.1 * scale


def test_each_student_receives_its_own_loss() -> None:
    """Kills M5 (L_s1 and L_s2 applied to the wrong students): with ``students: separate``, the
    gradient of L_s1 alone reaches student 1's decoder and not student 2's (nor the MPA prior),
    the gradient of L_s2 alone reaches student 2's decoder and the prior and not student 1's, and
    each term equals its loss computed by hand on that student's own features."""
    from pdd.models import losses

    model = create_model("pdd", **SMALL_MODEL)
    assert model.config["students"] == "separate" and len(model.students) == 2
    model.train()
    images = phantom_batch(count=4)
    terms = model.loss(images)
    parts = {
        "student 1": model.students[0],
        "student 2": model.students[1],
        "prior": model.prior,
    }

    def reached(term: str) -> set[str]:
        names = []
        params = []
        for name, part in parts.items():
            for p in part.parameters():
                names.append(name)
                params.append(p)
        grads = torch.autograd.grad(
            terms[term], params, allow_unused=True, retain_graph=True
        )
        return {
            name
            for name, g in zip(names, grads)
            if g is not None and bool(g.abs().sum() > 0)
        }

    assert reached("loss_s1") == {"student 1"}
    assert reached("loss_s2") == {"student 2", "prior"}

    # The values: each term on its own student's features (BatchNorm in training mode uses batch
    # statistics, so a second forward gives the same features).
    weights = model.config["loss"]
    with torch.no_grad():
        f, u = model.targets(images)
        first, second = students_by_hand(model, u, f)
        by_hand_s1 = losses.student1_loss(first, f, weights["a"])
        by_hand_s2 = losses.student2_loss(
            second, f, weights["a"], weights["b"], model.config["cos_term"]
        )
    assert terms["loss_s1"].item() == pytest.approx(by_hand_s1.item(), rel=1e-5)
    assert terms["loss_s2"].item() == pytest.approx(by_hand_s2.item(), rel=1e-5)
