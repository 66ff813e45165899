"""`pdd.engine.predict`: PNG, DICOM and NIfTI inputs -> scores.csv + one overlay per image.

The checkpoint is an untrained small model (random teachers, a narrow VMamba) saved with a
threshold placed between the inputs' scores, so both decisions occur. Scores are checked against
the model run directly, and overlays against the checkpoint's fixed colour scale.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pdd import create_model
from pdd.data import read_image, to_model_input
from pdd.data.synthetic import make_phantom, write_dicom, write_nifti
from pdd.engine import checkpoint
from pdd.engine.predict import predict
from pdd.errors import CheckpointError, DataError
from pdd.report.heatmap import overlay

SMALL = {
    "teachers": "random",
    "image_size": 32,
    "teacher_options": {"vmamba_tiny_v0": {"dims": 8, "depths": [1, 1, 1, 1], "ssm_d_state": 4}},
}
VMIN, VMAX = 0.5, 3.0


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One PNG (lesion), one DICOM, one NIfTI volume of 3 slices, in a folder with a broken PNG."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    lesion, _ = make_phantom(rng, 48, lesion=True)
    Image.fromarray(np.round(lesion * 255).astype(np.uint8)).save(root / "lesion.png")
    normal, _ = make_phantom(rng, 40)
    write_dicom(root / "scan.dcm", np.round(normal * 1000).astype(np.int16), window=(500, 1000))
    volume = np.stack([make_phantom(rng, 36)[0] for _ in range(3)], axis=2)
    write_nifti(root / "volume.nii.gz", volume.astype(np.float32))
    return {"root": root, "png": root / "lesion.png", "dicom": root / "scan.dcm", "nifti": root / "volume.nii.gz"}


@pytest.fixture(scope="module")
def model_and_ckpt(tmp_path_factory: pytest.TempPathFactory, inputs: dict[str, Path]):
    model = create_model("pdd", **SMALL).eval()
    images = [read_image(inputs["png"]), read_image(inputs["dicom"])]
    images += [read_image(inputs["nifti"], slice_index=k) for k in range(3)]
    with torch.inference_mode():
        _, scores = model(torch.stack([to_model_input(image, 32) for image in images]))
    ordered = sorted(float(s) for s in scores)
    threshold = (ordered[1] + ordered[2]) / 2  # strictly between scores: both decisions occur
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    checkpoint.save(path, model, threshold=threshold, map_stats={"vmin": VMIN, "vmax": VMAX})
    return model, path, threshold


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_png_dicom_nifti(tmp_path: Path, inputs: dict[str, Path], model_and_ckpt) -> None:
    model, ckpt, threshold = model_and_ckpt
    calls: list[tuple[int, int]] = []
    result = predict(
        ckpt,
        [inputs["png"], inputs["dicom"], inputs["nifti"]],
        tmp_path,
        batch_size=2,
        on_progress=lambda done, total: calls.append((done, total)),
    )
    assert calls[-1] == (5, 5) and len(calls) == 3
    rows = _rows(tmp_path / "scores.csv")
    assert list(rows[0]) == ["path", "score", "decision", "heatmap"]
    nifti = str(inputs["nifti"])
    assert [row["path"] for row in rows] == [
        str(inputs["png"]), str(inputs["dicom"]), f"{nifti}#0", f"{nifti}#1", f"{nifti}#2"
    ]
    assert result.skipped == []

    reads = [read_image(inputs["png"]), read_image(inputs["dicom"])]
    reads += [read_image(inputs["nifti"], slice_index=k) for k in range(3)]
    with torch.inference_mode():
        maps, scores = model(torch.stack([to_model_input(image, 32) for image in reads]))
    decisions = set()
    for row, image, amap, score in zip(rows, reads, maps, scores):
        assert float(row["score"]) == pytest.approx(float(score), rel=1e-5, abs=1e-6)
        expected = "anomalous" if float(row["score"]) > threshold else "normal"
        assert row["decision"] == expected
        decisions.add(row["decision"])
        # One overlay per image, at the image's own size, coloured with the stored scale.
        png = np.asarray(Image.open(tmp_path / row["heatmap"]).convert("RGB"))
        assert png.shape == image.shape
        np.testing.assert_array_equal(png, overlay(image, amap.numpy(), VMIN, VMAX))
        per_image = overlay(image, amap.numpy(), float(amap.min()), float(amap.max()))
        assert not np.array_equal(png, per_image)  # the check above can tell the scales apart
    assert decisions == {"anomalous", "normal"}
    assert not (tmp_path / "skipped.csv").exists()


def test_predict_folder_reports_unreadable(tmp_path: Path, inputs: dict[str, Path], model_and_ckpt) -> None:
    _, ckpt, _ = model_and_ckpt
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(inputs["png"].read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "notes.txt").write_text("not an image, ignored")
    out = tmp_path / "out"
    out.mkdir()
    result = predict(ckpt, [folder], out)
    assert [Path(p.path).name for p in result.predictions] == ["a.png"]
    assert [Path(path).name for path, _ in result.skipped] == ["broken.png"]
    skipped = _rows(out / "skipped.csv")
    assert Path(skipped[0]["path"]).name == "broken.png" and skipped[0]["reason"]


def test_predict_window_changes_dicom_only(tmp_path: Path, inputs: dict[str, Path], model_and_ckpt) -> None:
    _, ckpt, _ = model_and_ckpt
    both = [inputs["dicom"], inputs["png"]]
    default = predict(ckpt, both, tmp_path / "a")
    narrow = predict(ckpt, both, tmp_path / "b", window=(300.0, 200.0))
    assert default.predictions[0].score != narrow.predictions[0].score
    assert default.predictions[1].score == narrow.predictions[1].score


def test_predict_nothing_readable(tmp_path: Path, model_and_ckpt) -> None:
    _, ckpt, _ = model_and_ckpt
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="none of the inputs"):
        predict(ckpt, [broken], tmp_path / "out")


def test_checkpoint_without_statistics(tmp_path: Path, inputs: dict[str, Path], model_and_ckpt) -> None:
    model, _, _ = model_and_ckpt
    bare = checkpoint.save(tmp_path / "bare.ckpt", model)
    with pytest.raises(CheckpointError, match="threshold"):
        predict(bare, [inputs["png"]], tmp_path)
