"""Hostile input, round three: spreadsheet formulas in our CSVs, NaN models, overflowing arrays,
colliding output names, concurrent predict runs, odd ``Detector`` arguments.

The checkpoints hold the tiny ``fake`` model (engine_fakes); a "NaN checkpoint" is that model with
one trainable weight filled with NaN, saved with ``runs.checkpoint.save`` as a broken training or a
forged file would leave it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dicom_series import write_series
from engine_fakes import create_fake
from PIL import Image

from pdd.cli import main
from pdd.csv_cells import escape_cell, unescape_cell
from pdd.data.synthetic import make_phantom, write_nifti
from pdd.errors import PDDError
from pdd.prediction.predict import PredictOptions, predict
from pdd.runs import checkpoint

FORMULA = '=HYPERLINK("http://evil.example";"x")'


@pytest.fixture(autouse=True)
def _fake(fake_model: None) -> None:
    """Every test here uses the fake preset."""


def _raw_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def _png(path: Path, seed: int = 0, size: int = 40) -> Path:
    image, _ = make_phantom(np.random.default_rng(seed), size)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("good") / "model.ckpt"
    checkpoint.save(
        path, create_fake().eval(), threshold=0.5, map_stats={"vmin": 0.0, "vmax": 1.0}
    )
    return path


# --------------------------------------------------------------------------- 1. CSV injection


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (FORMULA, "'" + FORMULA),
        ("+cmd1", "'+cmd1"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(1)", "'@SUM(1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        (
            "'quoted",
            "''quoted",
        ),  # a leading quote is escaped too: the rule is reversible
        ("-0.5", "-0.5"),  # numbers stay numbers
        ("+1e-3", "+1e-3"),
        ("-inf", "-inf"),
        ("nan", "nan"),
        ("-", "'-"),
        ("plain/name.png", "plain/name.png"),
        ("", ""),
    ],
)
def test_csv_cell_escaping_is_owasp_and_reversible(value: str, written: str) -> None:
    assert escape_cell(value) == written
    assert unescape_cell(written) == value
    assert escape_cell(-0.5) == -0.5  # numbers as numbers are never text cells


def test_scores_csv_round_trip(tmp_path: Path) -> None:
    from pdd.runs.folder import read_scores, write_scores

    rows = [
        {"path": "a.png", "label": "1", "score": "-0.25", "kind": FORMULA, "class_name": "+cmd1",
         "heatmap": "'h.png"},
    ]  # fmt: skip
    write_scores(tmp_path / "scores.csv", rows)
    raw = _raw_rows(tmp_path / "scores.csv")[1][:6]
    assert raw == ["a.png", "1", "-0.25", "'" + FORMULA, "'+cmd1", "''h.png"]
    back = read_scores(tmp_path / "scores.csv")
    assert [{key: row[key] for key in rows[0]} for row in back] == rows
    from pdd.report.run_files import read_scores as report_reads

    shown = report_reads(tmp_path / "scores.csv")[0]
    assert (shown.kind, shown.class_name, shown.heatmap) == (FORMULA, "+cmd1", "'h.png")


def test_split_manifest_round_trip(tmp_path: Path) -> None:
    from pdd.data.sample import Sample
    from pdd.data.splits import read_manifest, write_manifest

    root = tmp_path / "data"
    train = [
        Sample(str(_png(root / f"t{k}.png", k)), 0, "good", group=f"g{k}")
        for k in range(2)
    ]
    holdout = [Sample(str(_png(root / "h.png", 5)), 0, "good", group="h")]
    test = [
        Sample(str(_png(root / FORMULA / "x.png", 7)), 1, FORMULA, group="+cmd1"),
        Sample(str(_png(root / "n.png", 8)), 0, "good", group="@n"),
    ]
    write_manifest(
        tmp_path / "split.csv", {"train": train, "holdout": holdout, "test": test}, root
    )
    raw = _raw_rows(tmp_path / "split.csv")
    cells = [cell for row in raw for cell in row]
    assert "'" + FORMULA in cells and "'+cmd1" in cells and "'@n" in cells
    assert not any(cell.startswith(("=", "+", "@")) for cell in cells)
    back = read_manifest(tmp_path / "split.csv", root)
    assert [(s.kind, s.group) for s in back["test"]] == [
        (FORMULA, "+cmd1"),
        ("good", "@n"),
    ]


def test_benchmark_results_csv_escapes_names() -> None:
    from pdd.benchmark.tables import ResultRow, results_csv

    row = ResultRow(
        dataset=FORMULA,
        preset="pdd",
        over="-x",
        teachers="random",
        seeds=(0,),
        mean={"image_auroc": 0.5},
        std={},
    )
    line = list(csv.reader(results_csv([row]).splitlines()))[1]
    assert line[0] == "'" + FORMULA and line[2] == "'-x"


def test_predict_csvs_escape_patient_id_and_paths(
    tmp_path: Path, good_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(3)
    slices = [
        np.round(make_phantom(rng, 32)[0] * 1000).astype(np.int16) for _ in range(2)
    ]
    write_series(tmp_path / "in" / "series", slices, patient_id=FORMULA[:60])
    _png(tmp_path / "in" / "+cmd.png")
    (tmp_path / "in" / "@bad.png").write_bytes(b"not a png")
    monkeypatch.chdir(tmp_path / "in")
    predict(
        PredictOptions(checkpoint=good_ckpt, inputs=(Path("."),), out=tmp_path / "out")
    )
    volumes = _raw_rows(tmp_path / "out" / "volumes.csv")
    assert volumes[1][2] == "'" + FORMULA[:60]
    for name in ("scores.csv", "volumes.csv", "skipped.csv"):
        for row in _raw_rows(tmp_path / "out" / name)[1:]:
            for cell in row:
                assert not cell.startswith(("=", "+", "@", "\t", "\r")), (name, cell)
                assert (
                    not cell.startswith("-")
                    or cell.lstrip("-").replace(".", "").replace("e", "").isdigit()
                )
    skipped = [
        unescape_cell(row[0]) for row in _raw_rows(tmp_path / "out" / "skipped.csv")[1:]
    ]
    assert any(Path(p).name == "@bad.png" for p in skipped)


# --------------------------------------------------------------------------- 2. unsafe pickles


class _RunsCode:
    """Unpickling this would call os.system: what a hostile checkpoint carries."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("loader", ["released", "ours"])
def test_unsafe_pickle_refusal_never_advises_weights_only_false(
    tmp_path: Path, loader: str
) -> None:
    from pdd.errors import CheckpointError
    from pdd.models.released import read_released

    path = tmp_path / "evil.pth"
    payload = (
        {"decoder": {"x": _RunsCode()}}
        if loader == "released"
        else {"format": "pdd-model", "x": _RunsCode()}
    )
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as err:
        read_released(path) if loader == "released" else checkpoint.load(path)
    message = str(err.value)
    assert (
        "\n" not in message and "weights_only" not in message and "False" not in message
    )
    assert "system" in message  # what was refused is still named


# --------------------------------------------------------------------------- NaN models (3, 11)


def _nan_ckpt(folder: Path, **meta: object) -> Path:
    """The fake model with one trainable weight filled with NaN, saved as ``pdd fit`` saves."""
    model = create_fake().eval()
    with torch.no_grad():
        model.student[0].weight.fill_(float("nan"))
    folder.mkdir(parents=True, exist_ok=True)
    return checkpoint.save(folder / "nan.ckpt", model, **meta)


def test_detector_refuses_nan_output_naming_input_and_checkpoint(
    tmp_path: Path,
) -> None:
    from pdd import Detector
    from pdd.finite_output import NonFiniteOutput

    ckpt = _nan_ckpt(tmp_path)
    image = _png(tmp_path / "scan.png")
    detector = Detector.load(ckpt)
    with pytest.raises(
        NonFiniteOutput,
        match=r"scan\.png: .*NaN or infinite with checkpoint .*nan\.ckpt",
    ):
        detector.predict(image)
    with pytest.raises(NonFiniteOutput, match="^input 0: "):
        detector.predict([np.zeros((8, 8)), np.ones((8, 8))])


# --------------------------------------------------------------------------- 4, Also: Detector


def test_detector_scales_overflowing_float_ranges_like_their_reduced_copy(
    good_ckpt: Path,
) -> None:
    from pdd import Detector

    phantom = make_phantom(np.random.default_rng(4), 32)[0].astype(np.float64)
    pattern = (phantom - phantom.min()) / (
        phantom.max() - phantom.min()
    ) * 2 - 1  # spans [-1, 1]
    detector = Detector.load(good_ckpt)
    expected = detector.predict(pattern)
    huge = detector.predict(pattern * 1e308)  # finite, but max - min overflows float64
    assert np.isfinite(huge.score) and huge.score == pytest.approx(
        expected.score, rel=1e-5
    )
    np.testing.assert_allclose(
        huge.anomaly_map, expected.anomaly_map, rtol=1e-4, atol=1e-6
    )
    if np.finfo(np.longdouble).max > 1e400:
        beyond = detector.predict(
            pattern.astype(np.longdouble) * np.longdouble("1e400")
        )
        assert beyond.score == pytest.approx(expected.score, rel=1e-5)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda d: d.predict(np.zeros((8, 8)), batch_size=0),
            "batch_size: expected a whole number >= 1, got 0",
        ),
        (
            lambda d: d.predict([np.zeros((8, 8))], batch_size=2.5),
            "batch_size: expected a whole number >= 1",
        ),
        (
            lambda d: d.predict(None),
            "expected a NumPy array, a file path or a list of them, got NoneType",
        ),
        (lambda d: d.predict(3), "got int"),
    ],
)
def test_detector_bad_arguments_are_one_line_errors(
    good_ckpt: Path, call, message: str
) -> None:
    from pdd import Detector

    with pytest.raises(PDDError, match=message) as err:
        call(Detector.load(good_ckpt))
    assert "\n" not in str(err.value)


def test_detector_unknown_device_is_a_one_line_error(good_ckpt: Path) -> None:
    from pdd import Detector
    from pdd.errors import ConfigError

    with pytest.raises(ConfigError, match="device 'foo': not a torch device") as err:
        Detector.load(good_ckpt, device="foo")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "colour_scale", [False, True], ids=["no-threshold", "with-colour-scale"]
)
def test_predict_with_a_nan_model_fails_naming_input_and_checkpoint(
    tmp_path: Path, colour_scale: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = (
        {"threshold": 0.5, "map_stats": {"vmin": 0.0, "vmax": 1.0}}
        if colour_scale
        else {}
    )
    ckpt = _nan_ckpt(tmp_path / "ckpt", **meta)
    inputs = tmp_path / "in"
    volume = np.stack(
        [make_phantom(np.random.default_rng(k), 32)[0] for k in range(3)], axis=2
    )
    write_nifti(inputs / "a_volume.nii.gz", volume.astype(np.float32))
    _png(inputs / "b_image.png")
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--checkpoint",
            str(ckpt),
            "--out",
            str(out),
            "--no-progress",
            str(inputs),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err, err
    assert str(ckpt) in err and ("a_volume.nii.gz#" in err or "b_image.png" in err), err
    assert "NaN or infinite" in err and "overlay" not in err
    record = json.loads((out / "predict.json").read_text())
    assert record["status"] == "failed" and record["error"] in err
    assert not (out / "scores.csv").exists()  # no result file pretends to hold scores


def test_pdd_test_with_a_nan_checkpoint_fails_naming_image_and_checkpoint(
    tmp_path: Path, phantoms: Path
) -> None:
    from pdd.evaluation.scoring_loop import Devices
    from pdd.finite_output import NonFiniteOutput
    from pdd.training.runner import test

    ckpt = _nan_ckpt(tmp_path, threshold=0.5, map_stats={"vmin": 0.0, "vmax": 1.0})
    with pytest.raises(
        NonFiniteOutput, match=rf"{phantoms}/.*\.png: .*with checkpoint {ckpt}"
    ):
        test(
            ckpt,
            phantoms,
            tmp_path / "out",
            devices=Devices(accelerator="cpu"),
            progress=False,
        )
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_fit_whose_model_outputs_nan_fails_naming_image_and_run(
    tmp_path: Path, phantoms: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine_fakes

    from pdd.finite_output import NonFiniteOutput
    from pdd.training.runner import FitOptions, fit

    forward = engine_fakes.FakeModel.forward

    def diverged(self, images):  # type: ignore[no-untyped-def]
        maps, scores = forward(self, images)
        return maps * float("nan"), scores * float("nan")  # what NaN weights give

    monkeypatch.setattr(engine_fakes.FakeModel, "forward", diverged)
    out = tmp_path / "run"
    options = FitOptions(
        data=phantoms,
        out=out,
        preset="fake",
        teachers="random",
        accelerator="cpu",
        progress=False,
        epochs=1,
    )
    with pytest.raises(
        NonFiniteOutput, match=rf"{phantoms}/.*\.png: .*with the model trained in {out}"
    ):
        fit(options)
    assert not (out / "metrics.json").exists()


# --------------------------------------------------------------------------- 13. predict lock


def test_second_predict_on_a_locked_folder_is_refused_naming_the_holder(
    tmp_path: Path, good_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    from pdd.errors import ConfigError
    from pdd.prediction.predict import resume
    from pdd.runs.lock import run_lock

    image = _png(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    options = PredictOptions(checkpoint=good_ckpt, inputs=(image,), out=out)
    holder = rf"{out}: another pdd run \(pid {os.getpid()}\)"
    with (
        run_lock(out),
        pytest.raises(ConfigError, match=holder),
    ):  # another predict is writing
        predict(options)
    assert [p.name for p in out.iterdir()] == []  # the refused run wrote nothing
    predict(options)
    record = (out / "predict.json").read_text()
    with run_lock(out):
        with pytest.raises(
            ConfigError, match=rf"another pdd run \(pid {os.getpid()}\)"
        ):
            resume(out)
        assert main(["predict", "--resume", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"pid {os.getpid()}" in err
    assert (
        out / "predict.json"
    ).read_text() == record  # nothing the holder wrote was touched
    assert not (out / ".pdd.lock").exists()


# --------------------------------------------------------------------------- 12. output names


def test_plan_output_names_are_unique_by_construction() -> None:
    from pdd.data.sample import Sample
    from pdd.data.scans import Scan
    from pdd.prediction.plan import Plan

    def scan(key: str, kind: str, n: int = 1) -> Scan:
        path = key if kind != "dicom" else f"/s/{len(key)}.dcm"
        return Scan(
            key,
            kind,
            [Sample(path, 0, "", slice_index=k) for k in range(n)],
            geometry=True,
        )

    scans = [
        scan("1.2.999.1", "dicom"), scan("1.2.999.1.", "dicom"), scan("...", "dicom"), scan("", "dicom"),
        scan("/a/x-6.nii.gz", "nifti"), scan("/b/x.nii.gz", "nifti"), scan("/c/x.nii.gz", "nifti"),
        scan("/d/X.nii.gz", "nifti"),
    ]  # fmt: skip
    outputs = [entry.output for entry in Plan.build(scans, overlays=True).scans]
    assert len({name.lower() for name in outputs}) == len(outputs), outputs
    assert all(
        name not in ("dicom/", "dicom//") and "//" not in name for name in outputs
    ), outputs


def test_series_uids_differing_by_a_trailing_dot_get_their_own_folders(
    tmp_path: Path, good_ckpt: Path
) -> None:
    import pydicom

    rng = np.random.default_rng(5)
    uids = ["1.2.999.1", "1.2.999.1."]
    for number, uid in enumerate(uids):
        slices = [
            np.round(make_phantom(rng, 32)[0] * 1000).astype(np.int16) for _ in range(2)
        ]
        write_series(
            tmp_path / "in" / f"s{number}", slices, series_uid=uid, seed=number
        )
    out = tmp_path / "out"
    predict(PredictOptions(checkpoint=good_ckpt, inputs=(tmp_path / "in",), out=out))
    with (out / "volumes.csv").open(newline="", encoding="utf-8") as handle:
        volumes = list(csv.DictReader(handle))
    assert sorted(row["scan"] for row in volumes) == sorted(uids)
    folders = [row["map"] for row in volumes]
    assert len(set(folders)) == 2, folders
    for (
        row
    ) in volumes:  # each folder holds its own series' two derived slices, nothing else
        files = sorted((out / row["map"]).glob("*.dcm"))
        assert len(files) == 2, (row, files)
        sources = {
            pydicom.dcmread(f).SourceImageSequence[0].ReferencedSOPInstanceUID
            for f in files
        }
        own = {pydicom.dcmread(f).SOPInstanceUID for f in (tmp_path / "in").rglob("*.dcm")
               if pydicom.dcmread(f).SeriesInstanceUID == row["scan"]}  # fmt: skip
        assert sources == own


def test_fit_heatmap_names_stay_within_file_name_limits(tmp_path: Path) -> None:
    from pdd.data.sample import Sample
    from pdd.evaluation.evaluate import write_heatmaps

    kind, stem = (
        "k" * 200,
        "p" * 200,
    )  # each a legal folder / file name, together too long
    path = _png(tmp_path / kind / f"{stem}.png")
    samples = [Sample(str(path), 1, kind)]
    extremes = {0: (np.zeros((32, 32, 3), np.float32), np.zeros((32, 32), np.float32))}
    written = write_heatmaps(
        samples, extremes, {"vmin": 0.0, "vmax": 1.0}, tmp_path / "run"
    )
    assert (tmp_path / "run" / written[0]).is_file()
    assert len(Path(written[0]).name.encode()) <= 255


# --------------------------------------------------------------------------- 10. joint classes


@pytest.mark.parametrize(
    "removed", ["test", "test/lesion"], ids=["no-test-images", "no-anomalies"]
)
def test_joint_fit_checks_every_class_test_set_before_training(
    tmp_path: Path, removed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from pdd.data.synthetic import make_phantom_dataset
    from pdd.errors import DataError
    from pdd.training import runner

    data = make_phantom_dataset(
        tmp_path / "data",
        n_train=6,
        n_test_normal=2,
        n_test_abnormal=2,
        size=32,
        classes=["a", "b"],
    )
    shutil.rmtree(data / "b" / removed)
    if removed.endswith("lesion"):
        shutil.rmtree(data / "b" / "ground_truth")

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started before the test sets were checked")

    monkeypatch.setattr(runner, "build_trainer", no_training)
    options = runner.FitOptions(
        data=data, out=tmp_path / "run", preset="fake", teachers="random", accelerator="cpu",
        progress=False, joint=True, epochs=1,
    )  # fmt: skip
    with pytest.raises(
        DataError, match=r"class 'b'.* (no test images|no anomalous test images)"
    ) as err:
        runner.fit(options)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- beyond the list


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("seeds: [-1]", r"seeds\[0\]: a seed must be between 0 and 4294967295"),
        ("seeds: [4294967296]", r"seeds\[0\]: a seed must be between 0 and 4294967295"),
        (
            'datasets: [{name: "a\\0b", data: data}]',
            r"datasets\[0\]\.name: 'a\\x00b' cannot be a folder name",
        ),
        (
            'datasets: [{name: "a\\nb", data: data}]',
            r"datasets\[0\]\.name: 'a\\nb' cannot be a folder name",
        ),
    ],
)
def test_benchmark_suite_refuses_seeds_and_names_nothing_downstream_can_use(
    tmp_path: Path, line: str, message: str
) -> None:
    from pdd.benchmark.suite import load_suite
    from pdd.errors import ConfigError

    (tmp_path / "data").mkdir()
    base = {"seeds": "seeds: [0]", "datasets": "datasets: [{name: a, data: data}]"}
    base[line.split(":")[0]] = line
    suite = tmp_path / "suite.yaml"
    suite.write_text("presets: [pdd]\n" + "\n".join(base.values()) + "\n")
    with pytest.raises(ConfigError, match=message) as err:
        load_suite(suite)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("uri", ["bogus://nowhere", "http://127.0.0.1:1"])
def test_fit_with_an_unusable_mlflow_tracking_uri_fails_before_training(
    tmp_path: Path, uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    from pdd.data.synthetic import make_phantom_dataset
    from pdd.errors import ConfigError
    from pdd.training import runner

    data = make_phantom_dataset(
        tmp_path / "data", n_train=6, n_test_normal=2, n_test_abnormal=2, size=32
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    options = runner.FitOptions(
        data=data, out=tmp_path / "run", preset="fake", teachers="random", accelerator="cpu",
        progress=False, epochs=1, logger="mlflow",
    )  # fmt: skip
    with pytest.raises(
        ConfigError, match=rf"--logger mlflow: tracking URI '{uri}' is unusable"
    ) as err:
        runner.fit(options)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "model.ckpt").exists()


@pytest.mark.parametrize("mode", ["disk"])  # auto: test_engine_feature_cache_storage.py
def test_feature_cache_under_a_regular_file_is_a_one_line_error(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pdd.errors import ConfigError
    from pdd.training.feature_cache import FeatureCache

    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("PDD_CACHE_DIR", str(tmp_path / "file" / "cache"))
    with pytest.raises(
        ConfigError,
        match=r"feature cache .*/file/cache/features.* (Not a directory|is a file)",
    ) as err:
        FeatureCache(mode, 1000)
    assert "\n" not in str(err.value) and "PDD_CACHE_DIR" in str(err.value)
