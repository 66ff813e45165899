"""A joint model (`pdd fit --joint`): each class's threshold and p-values come from that class's own
held-out normals, checked against a hand computation (k-th smallest, k = ceil((n + 1)(1 - alpha));
p = (1 + #{class normals >= s}) / (n + 1)) from scores recomputed independently with `Detector`.
`pdd test` of the checkpoint gives the same p-values; `Detector`, which is not told an input's
class, uses the pooled held-out normals."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from pdd import Detector
from pdd.data.synthetic import make_phantom_dataset
from pdd.runs import checkpoint
from pdd.runs.folder import read_scores
from pdd.training import runner

ALPHA = 0.2
CLASSES = ("a", "b")


@pytest.fixture(autouse=True)
def _fake(fake_model: None) -> None:
    """The fake model (engine_fakes)."""


def _hand_p(score: float, normals: list[float]) -> float:
    return (1 + sum(1 for v in normals if v >= score)) / (len(normals) + 1)


def _held_out(run: Path) -> dict[str, list[str]]:
    """Each class's held-out normal images (split.csv paths are relative to the data root)."""
    found: dict[str, list[str]] = {name: [] for name in CLASSES}
    with (run / "split.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["split"] == "holdout":
                found[row["class_name"]].append(row["path"])
    return found


def test_joint_model_thresholds_and_p_values_are_per_class(tmp_path: Path) -> None:
    data = make_phantom_dataset(
        tmp_path / "data", classes=list(CLASSES), n_train=12, n_test_normal=3, n_test_abnormal=3, size=32
    )
    options = runner.FitOptions(
        data=data, out=tmp_path / "run", preset="fake", teachers="random", accelerator="cpu",
        progress=False, joint=True, holdout_fraction=0.5, fpr=ALPHA, epochs=1,
    )
    runner.fit(options)
    run = tmp_path / "run"
    _, meta = checkpoint.load(run / "model.ckpt")
    detector = Detector.load(run / "model.ckpt")
    recorded = json.loads((run / "metrics.json").read_text())["class_calibration"]
    class_normals = {}
    for name, paths in _held_out(run).items():
        # the class's held-out normals, scored again one by one
        by_hand = sorted(detector.predict(str(data / path)).score for path in paths)
        stored = meta["class_calibration"][name]["normal_scores"]
        np.testing.assert_allclose(sorted(stored), by_hand, rtol=1e-5)
        n = len(by_hand)
        k = math.ceil((n + 1) * (1 - ALPHA))
        assert n == 6 and k == 6
        assert meta["class_thresholds"][name] == meta["class_calibration"][name]["threshold"]
        assert meta["class_thresholds"][name] == pytest.approx(by_hand[k - 1], rel=1e-5)
        assert {key: recorded[name][key] for key in ("n", "alpha", "rank")} == {"n": n, "alpha": ALPHA, "rank": k}
        class_normals[name] = stored
    pooled = meta["normal_scores"]
    assert len(pooled) == 12

    rows = read_scores(run / "scores.csv")
    differs = 0
    for row in rows:
        p = float(row["p_value"])
        assert p == pytest.approx(_hand_p(float(row["score"]), class_normals[row["class_name"]]))
        differs += p != pytest.approx(_hand_p(float(row["score"]), pooled))
    assert differs > 0  # the per-class answer is not the pooled one here

    runner.test(run / "model.ckpt", data, tmp_path / "test", progress=False)
    tested = {row["path"]: row for row in read_scores(tmp_path / "test" / "scores.csv")}
    for row in rows:
        assert float(tested[row["path"]]["p_value"]) == pytest.approx(float(row["p_value"]))
    test_record = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert test_record["class_calibration"] == recorded

    # Detector is not told the class of what it scores: the pooled normals
    image = data / "a" / "test" / "lesion" / "000.png"
    found = detector.predict(image)
    assert found.p_value == pytest.approx(_hand_p(found.score, pooled))
