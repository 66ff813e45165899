"""The commands a user chains, through `pdd`'s main(): fit -> predict / test / report / export,
re-running a saved config, and `pdd demo` in a reduced configuration.

One tiny fit (random teachers, a narrow VMamba, 32 px, 1 epoch) is shared by the module.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pdd.cli import build_parser, main
from pdd.cli.fit import resolve_fit_options
from pdd.data.synthetic import make_phantom, make_phantom_dataset, write_dicom

SMALL_VMAMBA = "teacher_options={vmamba_tiny_v0: {dims: 8, depths: [1, 1, 1, 1], ssm_d_state: 4}}"
CONFIG = """\
teachers: random
image_size: 32
epochs: 1
batch_size: 4
accelerator: cpu
model:
  teacher_options:
    vmamba_tiny_v0: {dims: 8, depths: [1, 1, 1, 1], ssm_d_state: 4}
"""


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("workflow")
    data = make_phantom_dataset(root / "data", n_train=8, n_test_normal=3, n_test_abnormal=3, size=48)
    config = root / "fit.yaml"
    config.write_text(CONFIG)
    run = root / "run"
    status = main(["fit", "--config", str(config), "--data", str(data), "--out", str(run), "--no-progress"])
    assert status == 0
    return {"root": root, "data": data, "run": run}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_fit_writes_run_folder(fitted: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run = fitted["run"]
    for name in ("metrics.json", "scores.csv", "model.ckpt", "config.yaml", "split.csv", "report.html"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["teachers"] == "random" and metrics["image_size"] == 32 and metrics["epochs"] == 1
    assert 0.0 <= metrics["image_auroc"] <= 1.0


def test_saved_config_repeats_the_run(fitted: dict[str, Path], tmp_path: Path) -> None:
    """`pdd fit --config RUN/config.yaml --out NEW` resolves to the same options (not trained here)."""
    args = build_parser().parse_args(["fit", "--config", str(fitted["run"] / "config.yaml"), "--out", str(tmp_path / "again")])
    options = resolve_fit_options(args)
    assert options.data == fitted["data"].resolve()
    assert options.out == tmp_path / "again"
    assert (options.preset, options.teachers, options.image_size, options.epochs, options.batch_size) == (
        "pdd", "random", 32, 1, 4,
    )
    assert options.model_overrides["teacher_options"]["vmamba_tiny_v0"]["dims"] == 8


def test_predict_command(fitted: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dicom = write_dicom(
        tmp_path / "scan.dcm", np.round(make_phantom(np.random.default_rng(1), 40)[0] * 1000).astype(np.int16)
    )
    out = tmp_path / "pred"
    test_dir = fitted["data"] / "test"
    status = main(["predict", "--checkpoint", str(fitted["run"] / "model.ckpt"), str(test_dir), str(dicom),
                   "--out", str(out), "--window", "500,1000"])
    assert status == 0
    rows = _rows(out / "scores.csv")
    assert len(rows) == 7  # 6 test phantoms + the DICOM file
    assert {row["decision"] for row in rows} <= {"anomalous", "normal"}
    assert len(list((out / "heatmaps").glob("*.png"))) == 7
    captured = capsys.readouterr()
    assert "scored 7 images" in captured.out
    assert "predict: 7/7 (100%)" in captured.err  # progress


def test_predict_partial_failure_exits_1(fitted: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.png").write_bytes((fitted["data"] / "test" / "good" / "000.png").read_bytes())
    (folder / "bad.png").write_bytes(b"garbage")
    out = tmp_path / "pred"
    status = main(["predict", "--checkpoint", str(fitted["run"] / "model.ckpt"), str(folder), "--out", str(out), "--no-progress"])
    assert status == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "1 input(s) could not be read" in err[0] and "skipped.csv" in err[0]
    assert len(_rows(out / "scores.csv")) == 1  # the readable image is still scored


def test_test_and_report_commands(fitted: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    status = main(["test", "--checkpoint", str(fitted["run"] / "model.ckpt"), "--data", str(fitted["data"]),
                   "--out", str(out), "--no-progress"])
    assert status == 0
    assert json.loads((out / "metrics.json").read_text())["num_test"] == 6
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file()


def test_export_command(
    fitted: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command's wiring; the export itself is exercised for real in test_engine_export.py."""
    from pdd import export

    seen: dict[str, object] = {}

    def fake_export(checkpoint: Path, out: Path, *, opset: int) -> export.ExportResult:
        seen.update(checkpoint=checkpoint, out=out, opset=opset)
        out.write_bytes(b"onnx")
        return export.ExportResult(out, (out,), 32, opset, 2e-7, 1e-7)

    monkeypatch.setattr(export, "export_onnx", fake_export)
    target = tmp_path / "onnx" / "model.onnx"
    ckpt = fitted["run"] / "model.ckpt"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(target), "--opset", "19"]) == 0
    assert seen == {"checkpoint": ckpt, "out": target, "opset": 19}
    text = capsys.readouterr().out
    assert "[N,3,32,32]" in text and "opset 19" in text and "maps 2.0e-07, scores 1.0e-07" in text


def test_export_to_unwritable_place(fitted: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["export", "--checkpoint", str(fitted["run"] / "model.ckpt"), "--out", str(blocker / "m.onnx")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output folder is a file" in err[0]


def test_demo_reduced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    status = main(["demo", "--out", str(out), "--epochs", "1", "--image-size", "32", "--train-images", "6",
                   "--test-images", "2", "--set", SMALL_VMAMBA, "--no-progress"])
    assert status == 0
    report = out / "run" / "report.html"
    assert report.is_file() and report.stat().st_size > 1000
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["teachers"] == "random" and metrics["num_test"] == 4
    # The user's --set values reach the model.
    saved = yaml.safe_load((out / "run" / "config.yaml").read_text())
    vmamba = saved["model"]["teacher_options"]["vmamba_tiny_v0"]
    assert vmamba["dims"] == 8 and vmamba["depths"] == [1, 1, 1, 1]
    text = capsys.readouterr().out
    assert "RANDOMLY initialised teachers" in text and "demo metrics" in text
    # A second demo into the same folder refuses instead of mixing runs.
    assert main(["demo", "--out", str(out)]) == 1
