"""`pdd fit` option resolution: preset < --config file < command line, and early failures.

Nothing here trains: resolve_fit_options must reject bad input before the runner is called.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pdd.cli import build_parser, main
from pdd.cli.fit import parse_overrides, resolve_fit_options
from pdd.errors import ConfigError, DataError, PDDError


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    (folder / "train" / "good").mkdir(parents=True)
    return folder


def _resolve(*argv: str):
    args = build_parser().parse_args(["fit", *argv])
    return resolve_fit_options(args)


def test_config_file_then_command_line(tmp_path: Path, data_dir: Path) -> None:
    config = tmp_path / "cfg" / "fit.yaml"
    config.parent.mkdir()
    config.write_text(
        "data: ../data\n"  # relative to the config file
        "out: ../runs/a\n"
        "teachers: random\n"
        "image-size: 64\n"
        "epochs: 3\n"
        "seeds: [0, 1]\n"
        "precision: bf16-mixed\n"
        "model:\n"
        "  students: shared\n"
        "  train: {lr: 0.001}\n"
        "sigma: 2.0\n"  # a preset key at top level is a model override too
    )
    options = _resolve("--config", str(config), "--epochs", "5", "--set", "train.lr=0.0005")
    assert options.data == data_dir.resolve()
    assert options.out == (tmp_path / "runs" / "a").resolve()
    assert options.out.is_dir()
    assert options.preset == "pdd"
    assert options.teachers == "random"
    assert options.image_size == 64  # from the file
    assert options.epochs == 5  # the command line wins
    assert options.seeds == [0, 1]
    assert options.precision == "bf16-mixed"
    assert options.model_overrides == {"students": "shared", "train": {"lr": 0.0005}, "sigma": 2.0}


def test_seed_and_seeds(tmp_path: Path, data_dir: Path) -> None:
    out = str(tmp_path / "o")
    assert _resolve("--data", str(data_dir), "--out", out, "--seed", "7").seeds == [7]
    assert _resolve("--data", str(data_dir), "--out", out, "--seeds", "0,1,2").seeds == [0, 1, 2]
    with pytest.raises(ConfigError, match="repeat"):
        _resolve("--data", str(data_dir), "--out", out, "--seeds", "1,1")
    with pytest.raises(ConfigError, match="--seeds"):
        _resolve("--data", str(data_dir), "--out", out, "--seeds", "1,,2")


def test_parse_overrides_nests_and_types() -> None:
    assert parse_overrides(["train.lr=0.001", "students=shared", "mpa=false", "train.betas=[0.9, 0.99]"]) == {
        "train": {"lr": 0.001, "betas": [0.9, 0.99]},
        "students": "shared",
        "mpa": False,
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["students"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["train..lr=1"])


def test_unknown_preset(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*pdd"):
        _resolve("--data", str(data_dir), "--out", str(tmp_path / "o"), "--preset", "nope")


def test_bad_set_key_and_value(tmp_path: Path, data_dir: Path) -> None:
    base = ("--data", str(data_dir), "--out", str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="studnets"):
        _resolve(*base, "--set", "studnets=shared")
    with pytest.raises(ConfigError, match="train.lrr"):
        _resolve(*base, "--set", "train.lrr=0.1")
    with pytest.raises(ConfigError, match="students"):
        _resolve(*base, "--set", "students=three")
    with pytest.raises(ConfigError, match="image_size"):
        _resolve(*base, "--image-size", "48")  # not a multiple of 32: fails now, not after loading


def test_missing_data_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data folder does not exist"):
        _resolve("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))


def test_missing_required(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="--out is required"):
        _resolve("--data", str(data_dir))


def test_unwritable_output_folder(tmp_path: Path, data_dir: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PDDError, match="cannot write to output folder"):
        _resolve("--data", str(data_dir), "--out", str(blocker / "run"))
    with pytest.raises(PDDError, match="output folder is a file"):
        _resolve("--data", str(data_dir), "--out", str(blocker))


def test_bad_config_file(tmp_path: Path, data_dir: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        _resolve("--config", str(config))
    config.write_text("epochs: 0\n")
    with pytest.raises(ConfigError, match="epochs"):
        _resolve("--config", str(config))
    config.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        _resolve("--config", str(config))
    with pytest.raises(DataError, match="config file does not exist"):
        _resolve("--config", str(tmp_path / "none.yaml"))


def test_resume_rejects_other_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--resume", str(tmp_path), "--epochs", "3"]) == 1
    assert "--epochs" in capsys.readouterr().err


def test_fit_failure_through_main_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["fit", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'missing'}: data folder does not exist"]


def test_protocol_options_from_the_command_line_and_a_config_file(
    tmp_path: Path, data_dir: Path
) -> None:
    """--joint, --holdout-fraction, --group-by and --logger reach FitOptions; a config file may
    hold them too (the command line wins)."""
    options = _resolve(
        "--data", str(data_dir), "--out", str(tmp_path / "a"), "--joint",
        "--holdout-fraction", "0", "--group-by", r"TCGA_[A-Z0-9]+", "--logger", "csv",
    )  # fmt: skip
    assert (options.joint, options.holdout_fraction) == (True, 0.0)
    assert (options.group_by, options.logger) == (r"TCGA_[A-Z0-9]+", "csv")
    default = _resolve("--data", str(data_dir), "--out", str(tmp_path / "b"))
    assert (default.joint, default.holdout_fraction, default.group_by) == (False, 0.1, None)
    config = tmp_path / "protocol.yaml"
    config.write_text("joint: true\nholdout_fraction: 0.2\ngroup_by: '^\\d+'\n")
    from_file = _resolve("--config", str(config), "--data", str(data_dir), "--out",
                         str(tmp_path / "c"), "--holdout-fraction", "0.05")  # fmt: skip
    assert (from_file.joint, from_file.holdout_fraction, from_file.group_by) == (
        True, 0.05, r"^\d+",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--holdout-fraction", "1", "holdout-fraction"),
        ("--holdout-fraction", "-0.1", "holdout-fraction"),
        ("--group-by", "TCGA_(", "group-by"),
    ],
)
def test_bad_protocol_options_fail_before_anything_is_written(
    tmp_path: Path, data_dir: Path, flag: str, value: str, message: str
) -> None:
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message):
        _resolve("--data", str(data_dir), "--out", str(out), flag, value)
    assert not out.exists()


def test_fpr_and_feature_cache_from_the_command_line_and_a_config_file(
    tmp_path: Path, data_dir: Path
) -> None:
    base = ("--data", str(data_dir), "--out", str(tmp_path / "a"))
    options = _resolve(*base, "--fpr", "0.01", "--feature-cache", "disk")
    assert (options.fpr, options.feature_cache) == (0.01, "disk")
    assert (_resolve(*base).fpr, _resolve(*base).feature_cache) == (0.05, "auto")
    config = tmp_path / "fit.yaml"
    config.write_text("fpr: 0.1\nfeature-cache: memory\n")
    from_file = _resolve("--config", str(config), *base)
    assert (from_file.fpr, from_file.feature_cache) == (0.1, "memory")


@pytest.mark.parametrize(
    ("argv", "text", "message"),
    [
        (["--fpr", "0"], None, r"^--fpr: must be > 0\.0, got 0\.0$"),
        (["--fpr", "1"], None, r"^--fpr: must be < 1\.0, got 1\.0$"),
        (["--num-workers", "-1"], None, r"^--num-workers: must be >= 0, got -1$"),
        ([], "fpr: 1.5\n", r"fit\.yaml: fpr: must be < 1\.0, got 1\.5$"),
        ([], "feature_cache: gpu\n", r"fit\.yaml: feature_cache: must be one of auto, memory, disk, off, got 'gpu'$"),
        ([], "image_size: 6.4e+1\n", r"fit\.yaml: image_size: must be an integer, got 64\.0$"),
        ([], "seeds: x\n", r"fit\.yaml: seeds: must be comma-separated whole numbers, got 'x'$"),
        ([], "options: {epochz: 3}\n", r"fit\.yaml: unknown option 'options\.epochz' \(known: .*epochs"),
        ([], "teachers: pretrained\nmodel: {teachers: imagenet}\n", r"config key 'teachers': must be one of pretrained, random"),
    ],
)  # fmt: skip
def test_bad_option_values_name_the_option_and_the_file(
    tmp_path: Path, data_dir: Path, argv: list[str], text: str | None, message: str
) -> None:
    """One schema checks options from either place; the message names the flag or the file."""
    extra = list(argv)
    if text is not None:
        config = tmp_path / "fit.yaml"
        config.write_text(text)
        extra += ["--config", str(config)]
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message):
        _resolve("--data", str(data_dir), "--out", str(out), *extra)
    assert not out.exists()


def test_the_schema_knows_every_fit_option_and_dataset_format() -> None:
    """A field added to FitOptions (or a layout added to pdd.data) without the schema would make
    saved run configurations unreadable; this catches the drift."""
    import dataclasses

    from pdd.config.schema import DATASET_FORMATS, FitSettings
    from pdd.data import FORMATS
    from pdd.training.options import FitOptions

    fields = {field.name for field in dataclasses.fields(FitOptions)} - {"model_overrides", "progress"}
    assert set(FitSettings.model_fields) == fields
    assert DATASET_FORMATS == ("auto", *FORMATS)


def test_a_forged_saved_option_stops_resume_naming_config_yaml(tmp_path: Path) -> None:
    """`pdd fit --resume` reads the run folder's options through the same schema: a hand-edited
    ``fpr: 7`` used to be taken as is."""
    from pdd.training import runner

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"options: {{data: {tmp_path}, out: {run}, fpr: 7.0}}\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: cannot read the saved fit options \(options\.fpr: must be < 1\.0, got 7\.0\)"):
        runner.resume(run, progress=False)
