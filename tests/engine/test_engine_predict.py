"""`pdd.prediction.predict`: PNG, DICOM series and NIfTI volumes -> scores.csv, volumes.csv, maps.

The checkpoint holds the tiny ``fake`` model (engine_fakes) with a threshold placed between the
inputs' scores, so both decisions occur. Scores are checked against the model run directly on
``read_image`` + ``to_model_input`` (an independent path), scan scores against a hand-written max,
overlays against the checkpoint's fixed colour scale.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from dicom_series import write_series
from engine_fakes import create_fake
from PIL import Image

from pdd import Detector
from pdd.cli import main
from pdd.data import read_image, to_model_input
from pdd.data.synthetic import make_phantom, write_dicom, write_nifti
from pdd.errors import ConfigError, DataError, PDDError
from pdd.prediction.predict import PredictOptions, predict, resume, scan_score
from pdd.report.heatmap import overlay
from pdd.runs import checkpoint

VMIN, VMAX = 0.5, 3.0
AFFINE = np.array(
    [[-0.9, 0.0, 0.0, 30.0], [0.0, 1.3, 0.0, -4.0], [0.0, 0.0, 2.0, 11.0], [0.0, 0.0, 0.0, 1.0]]
)  # scaled, translated, x flipped


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A PNG (lesion), a lone DICOM, a NIfTI volume of 3 slices, a shuffled DICOM series of 3."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    lesion, _ = make_phantom(rng, 48, lesion=True)
    Image.fromarray(np.round(lesion * 255).astype(np.uint8)).save(root / "lesion.png")
    normal, _ = make_phantom(rng, 40)
    write_dicom(root / "scan.dcm", np.round(normal * 1000).astype(np.int16), window=(500, 1000))
    volume = np.stack([make_phantom(rng, 36)[0] for _ in range(3)], axis=2)
    write_nifti(root / "volume.nii.gz", volume.astype(np.float32), AFFINE)
    series = [np.round(make_phantom(rng, 32, lesion=k == 1)[0] * 1000).astype(np.int16) for k in range(3)]
    files = write_series(root / "series", series)
    return {
        "root": root, "png": root / "lesion.png", "dicom": root / "scan.dcm",
        "nifti": root / "volume.nii.gz", "series": root / "series", "series_files": files,  # type: ignore[dict-item]
    }


def _reads(inputs: dict) -> list[tuple[str, np.ndarray]]:
    """(csv path, image) in the order predict must write them."""
    nifti = str(inputs["nifti"])
    rows = [(str(inputs["png"]), read_image(inputs["png"])), (str(inputs["dicom"]), read_image(inputs["dicom"]))]
    rows += [(f"{nifti}#{k}", read_image(nifti, slice_index=k)) for k in range(3)]
    rows += [(str(p), read_image(p)) for p in inputs["series_files"]]
    return rows


@pytest.fixture(scope="module")
def model_and_ckpt(tmp_path_factory: pytest.TempPathFactory, inputs: dict):
    model = create_fake().eval()
    images = [image for _, image in _reads(inputs)]
    with torch.inference_mode():
        _, scores = model(torch.stack([to_model_input(image, 32) for image in images]))
    ordered = sorted(float(s) for s in scores)
    threshold = (ordered[3] + ordered[4]) / 2  # strictly between scores: both decisions occur
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    checkpoint.save(path, model, threshold=threshold, map_stats={"vmin": VMIN, "vmax": VMAX})
    return model, path, threshold


@pytest.fixture(autouse=True)
def _fake(fake_model: None) -> None:
    """Every test here loads the fake model from its checkpoint."""


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return list(csv.DictReader(handle))


def _run(ckpt: Path, paths: list[Path], out: Path, **options) -> object:
    options.setdefault("accelerator", "cpu")
    return predict(PredictOptions(checkpoint=ckpt, inputs=tuple(paths), out=out, **options))


def test_scores_volumes_overlays_and_maps(tmp_path: Path, inputs: dict, model_and_ckpt) -> None:
    """Kills: a wrong row order, a per-image colour scale, a scan score other than the default
    rule (mean of the 3 highest slices; = the mean here, != the max), a wrong max_slice, slices of
    a series out of order."""
    model, ckpt, threshold = model_and_ckpt
    calls: list[tuple[int, int]] = []
    result = predict(
        PredictOptions(ckpt, (inputs["png"], inputs["dicom"], inputs["nifti"], inputs["series"]), tmp_path,
                       batch_size=2, accelerator="cpu"),
        on_progress=lambda done, total: calls.append((done, total)),
    )
    assert calls[-1] == (8, 8)
    assert result.scored == 8 and result.volumes == 2 and result.skipped == 0
    rows = _rows(tmp_path / "scores.csv")
    assert list(rows[0]) == ["path", "scan", "slice", "score", "decision", "heatmap", "p_value"]
    expected = _reads(inputs)
    assert [row["path"] for row in rows] == [path for path, _ in expected]

    with torch.inference_mode():
        maps, scores = model(torch.stack([to_model_input(image, 32) for _, image in expected]))
    for row, (_, image), amap, score in zip(rows, expected, maps, scores):
        assert float(row["score"]) == pytest.approx(float(score), rel=1e-5, abs=1e-6)
        assert row["decision"] == ("anomalous" if float(row["score"]) > threshold else "normal")
    assert {row["decision"] for row in rows} == {"anomalous", "normal"}
    for row, (_, image), amap in zip(rows[:2], expected, maps):
        png = np.asarray(Image.open(tmp_path / row["heatmap"]).convert("RGB"))
        np.testing.assert_array_equal(png, overlay(image, amap.numpy(), VMIN, VMAX))
        assert not np.array_equal(png, overlay(image, amap.numpy(), float(amap.min()), float(amap.max())))

    volumes = _rows(tmp_path / "volumes.csv")
    assert [v["kind"] for v in volumes] == ["nifti", "dicom"]
    for volume, first in zip(volumes, (2, 5)):
        slice_scores = [float(s) for s in scores[first : first + 3]]
        assert float(volume["score"]) == pytest.approx(sum(slice_scores) / 3, rel=1e-6)
        assert float(volume["score"]) != pytest.approx(max(slice_scores), rel=1e-6)
        assert int(volume["max_slice"]) == int(np.argmax(slice_scores))
        assert volume["num_slices"] == "3" and volume["rule"] == "mean-top-3"
    assert volumes[1]["patient_id"] == "P-007"
    assert [row["slice"] for row in rows[5:]] == ["0", "1", "2"]
    assert all(row["scan"] == volumes[1]["scan"] for row in rows[5:])

    nifti_map = nib.load(tmp_path / volumes[0]["map"])
    assert nifti_map.shape == nib.load(inputs["nifti"]).shape
    np.testing.assert_allclose(nifti_map.affine, AFFINE)
    record = json.loads((tmp_path / "predict.json").read_text())
    assert record["status"] == "complete" and record["scan_rule"] == "mean-top-3"
    assert not (tmp_path / ".partial").exists() and not (tmp_path / "skipped.csv").exists()


def test_derived_dicom_series_in_geometric_order(tmp_path: Path, inputs: dict, model_and_ckpt) -> None:
    _, ckpt, _ = model_and_ckpt
    _run(ckpt, [inputs["series"]], tmp_path)
    (volume,) = _rows(tmp_path / "volumes.csv")
    derived = sorted((tmp_path / volume["map"]).glob("*.dcm"))
    assert len(derived) == 3
    sources = [pydicom.dcmread(p) for p in inputs["series_files"]]  # true geometric order
    datasets = sorted((pydicom.dcmread(p) for p in derived), key=lambda ds: int(ds.InstanceNumber))
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert datasets[0].SeriesInstanceUID != sources[0].SeriesInstanceUID
    for ds, src in zip(datasets, sources):
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert list(ds.ImagePositionPatient) == list(src.ImagePositionPatient)
        assert (ds.Rows, ds.Columns) == (src.Rows, src.Columns)


def test_checkpoint_without_threshold_writes_scores_without_decisions(
    tmp_path: Path, inputs: dict, model_and_ckpt
) -> None:
    model, _, _ = model_and_ckpt
    bare = checkpoint.save(tmp_path / "bare.ckpt", model)
    result = _run(bare, [inputs["png"], inputs["nifti"]], tmp_path / "out")
    assert result.threshold is None
    rows = _rows(tmp_path / "out" / "scores.csv")
    assert [row["decision"] for row in rows] == [""] * 4
    assert rows[0]["heatmap"] == ""  # no stored colour scale: no overlay
    assert _rows(tmp_path / "out" / "volumes.csv")[0]["decision"] == ""


def test_used_output_folder_is_refused(tmp_path: Path, inputs: dict, model_and_ckpt) -> None:
    _, ckpt, _ = model_and_ckpt
    _run(ckpt, [inputs["png"]], tmp_path / "out")
    with pytest.raises(PDDError, match="--resume"):
        _run(ckpt, [inputs["png"]], tmp_path / "out")
    with pytest.raises(PDDError, match="already complete"):
        resume(tmp_path / "out")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("someone's file")
    with pytest.raises(PDDError, match="not empty"):
        _run(ckpt, [inputs["png"]], tmp_path / "other")


def test_output_inside_the_input_is_never_read(tmp_path: Path, inputs: dict, model_and_ckpt) -> None:
    """Kills: dropping the output-folder filter (the second run would score the first's PNGs)."""
    _, ckpt, _ = model_and_ckpt
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(inputs["png"].read_bytes())
    _run(ckpt, [folder], folder / "results")
    result = _run(ckpt, [folder], folder / "results2")
    assert [Path(r["path"]).name for r in _rows(folder / "results2" / "scores.csv")] == ["a.png"]
    (note,) = _rows(folder / "results2" / "notes.csv")  # the first run's overlay, left out
    assert note["scan"] == str(folder / "results") and result.notes == 1


def test_duplicate_inputs_are_scored_once(tmp_path: Path, inputs: dict, model_and_ckpt) -> None:
    _, ckpt, _ = model_and_ckpt
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(inputs["png"].read_bytes())
    os.symlink(folder / "a.png", tmp_path / "link.png")
    result = _run(ckpt, [folder / "a.png", folder, folder / "a.png", tmp_path / "link.png"], tmp_path / "out")
    assert result.scored == 1 and len(_rows(tmp_path / "out" / "scores.csv")) == 1


def test_file_name_that_is_not_utf8_is_kept_exactly(tmp_path: Path, inputs: dict, model_and_ckpt) -> None:
    """Kills: writing with errors='replace' or 'strict' (the first loses the name, the second the run)."""
    _, ckpt, _ = model_and_ckpt
    folder = tmp_path / "in"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.png"
    with open(raw, "wb") as handle:
        handle.write(inputs["png"].read_bytes())
    _run(ckpt, [folder], tmp_path / "out")
    assert raw in (tmp_path / "out" / "scores.csv").read_bytes()
    assert _rows(tmp_path / "out" / "scores.csv")[0]["path"] == os.fsdecode(raw)


def test_bad_inputs_are_counted_skips_or_notes(tmp_path: Path, inputs: dict, model_and_ckpt) -> None:
    _, ckpt, _ = model_and_ckpt
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(inputs["png"].read_bytes())
    singular = np.eye(4)
    singular[2, 2] = 0.0
    flat = nib.Nifti1Image(np.ones((10, 10, 2), np.float32), None)
    flat.set_qform(None, code=0)
    flat.set_sform(singular, code=1)  # a scanner export with a zero column: no axial axis
    nib.save(flat, folder / "flat.nii.gz")
    files = write_series(folder / "mixed", [np.full((16, 16), 9, np.int16)] * 3, series_uid="1.2.9")
    ds = pydicom.dcmread(files[0])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.save_as(files[0])
    result = _run(ckpt, [folder], tmp_path / "out")
    assert result.scored == 4 and result.volumes == 0 and result.skipped == 1 and result.notes == 1
    (skip,) = _rows(tmp_path / "out" / "skipped.csv")
    assert skip["path"].endswith("flat.nii.gz") and "affine" in skip["reason"]
    (note,) = _rows(tmp_path / "out" / "notes.csv")
    assert note["scan"] == "1.2.9" and "single images" in note["note"]


def test_nothing_readable(tmp_path: Path, model_and_ckpt) -> None:
    _, ckpt, _ = model_and_ckpt
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="none of the inputs"):
        _run(ckpt, [broken], tmp_path / "out")
    assert (tmp_path / "out" / "skipped.csv").is_file()


def test_scan_score_rules() -> None:
    """Hand-computed: kills a top-K over the lowest scores or a mean over all slices."""
    assert scan_score([1.0, 5.0, 3.0, 4.0], "max") == 5.0
    assert scan_score([1.0, 5.0, 3.0, 4.0], "mean-top-2") == 4.5
    assert scan_score([1.0, 5.0, 3.0, 4.0], "mean-top-9") == 3.25
    for bad in ("min", "mean-top-0", "mean-top-x"):
        with pytest.raises(ConfigError):
            scan_score([1.0], bad)


def test_detector_equals_pdd_predict(tmp_path: Path, inputs: dict, model_and_ckpt) -> None:
    """The in-process API on arrays gives the scores `pdd predict` writes for the same files."""
    _, ckpt, threshold = model_and_ckpt
    rng = np.random.default_rng(5)
    grey = np.round(make_phantom(rng, 44, lesion=True)[0] * 65535).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "deep.png")
    rgb = np.asarray(Image.open(inputs["png"]).convert("RGB"))
    _run(ckpt, [inputs["png"], tmp_path / "deep.png"], tmp_path / "out")
    rows = _rows(tmp_path / "out" / "scores.csv")

    detector = Detector.load(ckpt)
    one = detector.predict(np.asarray(Image.open(inputs["png"])))
    both = detector.predict([rgb[..., :1], grey])
    assert one.score == pytest.approx(float(rows[0]["score"]), abs=1e-5)
    assert both[0].score == pytest.approx(float(rows[0]["score"]), abs=1e-5)
    assert both[1].score == pytest.approx(float(rows[1]["score"]), abs=1e-5)
    assert one.anomaly_map.shape == (48, 48) and both[1].anomaly_map.shape == (44, 44)
    assert one.threshold == threshold and one.is_anomalous == (one.score > threshold)
    assert detector.predict(inputs["png"]).score == pytest.approx(one.score, abs=1e-6)
    with pytest.raises(DataError, match="input 0"):
        detector.predict([np.zeros((2, 2), np.uint8)])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "cuda"], "--device cuda: replaced by --accelerator"),
        (["--accelerator", "gpu"], "no CUDA GPU"),
    ],
)
def test_cli_device_errors_leave_nothing(
    tmp_path: Path, inputs: dict, model_and_ckpt, capsys, argv, message
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _, ckpt, _ = model_and_ckpt
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(ckpt), str(inputs["png"]), "--out", str(out), *argv])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_resume_refuses_a_changed_checkpoint_and_fixed_options(
    tmp_path: Path, inputs: dict, model_and_ckpt, capsys
) -> None:
    """A resumed run must score with the same model and options as the run it continues."""
    _, ckpt, _ = model_and_ckpt
    own = tmp_path / "model.ckpt"
    own.write_bytes(ckpt.read_bytes())
    _run(own, [inputs["png"]], tmp_path / "out")
    code = main(["predict", "--resume", str(tmp_path / "out"), "--scan-score", "mean-top-2"])
    assert code == 1 and "--scan-score cannot be given" in capsys.readouterr().err
    stat = own.stat()
    os.utime(own, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(PDDError, match="changed since the run started"):
        resume(tmp_path / "out")
