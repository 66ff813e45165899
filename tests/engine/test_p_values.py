"""Conformal p-values against the checkpoint's stored held-out normal scores: ``pdd predict``
(scores.csv and volumes.csv), ``Detector`` and ``pdd test``'s scores.csv, each checked against a
hand computation (1 + #{normal >= s}) / (n + 1); checkpoints without stored scores still work."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_fakes import create_fake
from PIL import Image

from pdd import Detector
from pdd.data import read_image, to_model_input
from pdd.data.synthetic import make_phantom, write_nifti
from pdd.prediction.predict import PredictOptions, predict
from pdd.runs import checkpoint
from pdd.runs.folder import read_scores

VMIN, VMAX = 0.1, 1.0


@pytest.fixture(autouse=True)
def _fake(fake_model: None) -> None:
    """Every test here loads the fake model from its checkpoint."""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("p_inputs")
    rng = np.random.default_rng(3)
    for k in range(4):
        image, _ = make_phantom(rng, 40, lesion=k % 2 == 1)
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(root / f"image{k}.png")
    volume = np.stack([make_phantom(rng, 36, lesion=k == 2)[0] for k in range(4)], axis=2)
    write_nifti(root / "volume.nii.gz", volume.astype(np.float32), np.eye(4))
    return {"root": root, "volume": root / "volume.nii.gz"}


def _hand_p(score: float, normals: list[float]) -> float:
    at_or_above = sum(1 for v in normals if v >= score)
    return (1 + at_or_above) / (len(normals) + 1)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory, inputs: dict) -> tuple[Path, list[float], list[float]]:
    """A checkpoint whose stored normal scores interleave the inputs' scores (so p-values take
    several values, ties included), and a scan calibration for the default rule."""
    model = create_fake().eval()
    images = [read_image(p) for p in sorted(inputs["root"].glob("*.png"))]
    with torch.inference_mode():
        _, scores = model(torch.stack([to_model_input(image, 32) for image in images]))
    ordered = sorted(float(s) for s in scores)
    normals = [ordered[0] - 1.0, (ordered[0] + ordered[1]) / 2, ordered[2], ordered[3] + 1.0]
    scan_normals = [0.0, 1e9]  # the volume's scan score lies between: p = 2/3
    path = tmp_path_factory.mktemp("p_ckpt") / "model.ckpt"
    checkpoint.save(
        path, model, threshold=ordered[2], map_stats={"vmin": VMIN, "vmax": VMAX},
        normal_scores=normals, scan_threshold=1e9,
        scan_calibration={"scan_rule": "mean-top-3", "normal_scores": scan_normals},
    )
    return path, normals, scan_normals


def test_predict_and_detector_p_values_match_a_hand_computation(
    tmp_path: Path, inputs: dict, calibrated
) -> None:
    ckpt, normals, scan_normals = calibrated
    predict(PredictOptions(ckpt, (inputs["root"],), tmp_path / "out", accelerator="cpu"))
    rows = _rows(tmp_path / "out" / "scores.csv")
    assert len(rows) == 8
    values = set()
    for row in rows:
        values.add(float(row["p_value"]))
        assert float(row["p_value"]) == pytest.approx(_hand_p(float(row["score"]), normals))
    assert len(values) >= 3  # not one constant
    (volume,) = _rows(tmp_path / "out" / "volumes.csv")
    assert float(volume["p_value"]) == pytest.approx(_hand_p(float(volume["score"]), scan_normals))
    assert float(volume["p_value"]) == pytest.approx(2 / 3)
    assert volume["decision"] == "normal"  # the scan threshold (1e9), not the slice threshold

    # The run's report shows the volume in the scan viewer, from frames at the model's input size.
    (frames,) = (tmp_path / "out" / "viewer").glob("*.npz")
    with np.load(frames) as saved:
        assert str(saved["key"]) == str(inputs["volume"])
        assert saved["images"].shape == saved["levels"].shape == (4, 32, 32)
    report = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert 'class="pdd-scan"' in report and volume["p_value"] in report

    detector = Detector.load(ckpt)
    by_path = {row["path"]: row for row in rows}
    for png in sorted(inputs["root"].glob("*.png")):
        found = detector.predict(png)
        assert found.p_value == pytest.approx(float(by_path[str(png)]["p_value"]))
        assert found.p_value == pytest.approx(_hand_p(found.score, normals))


def test_checkpoint_without_normal_scores_gives_empty_p_values(tmp_path: Path, inputs: dict) -> None:
    model = create_fake().eval()
    ckpt = tmp_path / "old.ckpt"
    checkpoint.save(ckpt, model, threshold=0.5, map_stats={"vmin": VMIN, "vmax": VMAX})
    predict(PredictOptions(ckpt, (inputs["root"],), tmp_path / "out", accelerator="cpu"))
    assert {row["p_value"] for row in _rows(tmp_path / "out" / "scores.csv")} == {""}
    assert {row["p_value"] for row in _rows(tmp_path / "out" / "volumes.csv")} == {""}
    found = Detector.load(ckpt).predict(next(inputs["root"].glob("*.png")))
    assert found.p_value is None and found.is_anomalous is not None


def test_old_scores_csv_without_p_value_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "scores.csv"
    path.write_text("path,label,score,kind,class_name,heatmap\na.png,0,0.5,good,,\n", encoding="utf-8")
    (row,) = read_scores(path)
    assert row["score"] == "0.5" and row.get("p_value") is None


def test_fit_and_test_record_the_promise_and_write_p_values(tmp_path: Path, phantoms: Path) -> None:
    """A fit with 4 held-out normals cannot promise 5 %: it warns, uses 1/5 and says so; the
    threshold is then the highest held-out score; fit's and test's scores.csv p-values equal the
    hand computation against the stored normal scores."""
    import json

    from pdd.training.runner import FitOptions, fit, test

    options = FitOptions(
        data=phantoms, out=tmp_path / "run", preset="fake", teachers="random",
        accelerator="cpu", progress=False, holdout_fraction=0.25, fpr=0.05,
    )
    with pytest.warns(UserWarning, match="needs at least 19"):
        fit(options)
    _, meta = checkpoint.load(tmp_path / "run" / "model.ckpt")
    normals = meta["normal_scores"]
    assert len(normals) == 4 and meta["threshold"] == max(normals)
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())["threshold_calibration"]
    assert meta["threshold_calibration"] == record
    assert (record["alpha_requested"], record["alpha"], record["n"]) == (0.05, pytest.approx(0.2), 4)
    assert "at most 20 % of normal scans flagged" in record["guarantee"]
    fit_rows = read_scores(tmp_path / "run" / "scores.csv")
    for row in fit_rows:
        assert float(row["p_value"]) == pytest.approx(_hand_p(float(row["score"]), normals))

    test(tmp_path / "run" / "model.ckpt", phantoms, tmp_path / "test", devices=None, progress=False)
    test_rows = read_scores(tmp_path / "test" / "scores.csv")
    assert [r["path"] for r in test_rows] == [r["path"] for r in fit_rows]
    for row, before in zip(test_rows, fit_rows):
        assert float(row["p_value"]) == pytest.approx(float(before["p_value"]), abs=1e-6)
