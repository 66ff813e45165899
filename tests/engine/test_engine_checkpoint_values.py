"""Forged checkpoint values (issue 20, cases 7-9): every value a model.ckpt carries is checked as
strictly as a config file's, and before the real model is built; a forged one is a one-line
CheckpointError naming the file, never an internal error or a machine out of memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from engine_fakes import create_fake

from pdd.errors import CheckpointError
from pdd.runs import checkpoint

META = {
    "threshold": 0.25,
    "map_stats": {"vmin": 0.1, "vmax": 0.9},
    "provenance": {"seed": 3, "dataset": "/data/headct", "epochs": 2, "batch_size": 4},
}


def _forge(path: Path, change: dict[str, Any]) -> None:
    payload = torch.load(path, weights_only=True)
    for dotted, value in change.items():
        *parents, last = dotted.split("/")
        node = payload
        for part in parents:
            node = node[part]
        node[last] = value
    torch.save(payload, path)


def _fails(path: Path, message: str) -> None:
    with pytest.raises(CheckpointError) as caught:
        checkpoint.load(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and "\n" not in text, text
    assert message in text, text


@pytest.fixture
def fake_ckpt(fake_model: None, tmp_path: Path) -> Path:
    return checkpoint.save(tmp_path / "model.ckpt", create_fake(), **META)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"meta/threshold": "0.5"}, "threshold: must be a number"),
        ({"meta/threshold": float("nan")}, "threshold: must be a finite number"),
        ({"meta/map_stats": [0.1, 0.9]}, "map_stats: must be a mapping"),
        ({"meta/map_stats": {"vmin": 0.1}}, "map_stats.vmax is missing"),
        ({"meta/map_stats": {"vmin": 0.9, "vmax": 0.1}}, "map_stats.vmax: must be above vmin"),
        ({"meta/class_thresholds": {"a": "x"}}, "class_thresholds.a: must be a number"),
        ({"meta/provenance": [1]}, "provenance: must be a mapping"),
        ({"meta/provenance": {"seed": -1}}, "provenance.seed: must be >= 0"),
        ({"meta/provenance": {"holdout_fraction": 5.0}}, "provenance.holdout_fraction: must be < 1.0"),
        ({"meta/provenance": {"group_by": "("}}, "provenance.group_by: not a valid regular expression"),
        ({"meta/provenance": {"batch_size": "ten"}}, "provenance.batch_size: must be an integer"),
        ({"meta/provenance": {"joint": "yes"}}, "provenance.joint: must be true or false"),
        ({"meta/normal_scores": [0.1, "x"]}, "normal_scores[1]: must be a number"),
        ({"meta/fpr": 2.0}, "fpr: must be < 1.0"),
        ({"teachers": {"fake": 5}}, "teachers.fake: must be a mapping"),
        ({"teachers": {"fake": {"fingerprint": "x"}}}, "teachers.fake.fingerprint: must be a list"),
        ({"state_dict/student.0.weight": 5}, "student.0.weight: not a tensor"),
        ({"state_dict/student.0.weight": torch.zeros(10**3, 3, 3, 3)}, "wrong shape"),
        ({"state_dict/student.0.weight": torch.zeros(16, 3, 3, 3, dtype=torch.complex64)}, "dtype"),
        ({"config": {**create_fake().config, 7: 1}}, "stored config[7]: must be a string"),
        ({"pdd_version": 7}, "pdd_version: must be a string"),
    ],
)  # fmt: skip
def test_forged_values_are_one_line_errors_naming_the_file(
    fake_ckpt: Path, change: dict[str, Any], message: str
) -> None:
    """Kills: dropping ``CheckpointMeta``, the teacher-identity schema or the weight comparison
    against the meta-device skeleton in ``runs.checkpoint.load``."""
    _forge(fake_ckpt, change)
    _fails(fake_ckpt, message)


def test_values_a_newer_writer_adds_are_kept(fake_ckpt: Path) -> None:
    """``save(**meta)`` stays open: the calibration keys are type-checked and returned as stored."""
    _forge(fake_ckpt, {"meta/normal_scores": [0.1, 0.3], "meta/fpr": 0.05, "meta/calibration": {"rule": "x"}})
    _, meta = checkpoint.load(fake_ckpt)
    assert (meta["normal_scores"], meta["fpr"], meta["calibration"]) == ([0.1, 0.3], 0.05, {"rule": "x"})
    assert meta["threshold"] == 0.25 and meta["provenance"]["seed"] == 3


@pytest.fixture(scope="module")
def rd4ad_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pdd import create_model

    model = create_model("rd4ad", teachers="random", image_size=32, decoder_blocks=[1, 1, 1], bottleneck_blocks=1)
    return checkpoint.save(tmp_path_factory.mktemp("rd4ad") / "model.ckpt", model.eval(), **META)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"config/decoder_blocks": [100000, 1, 1]}, "config key 'decoder_blocks[0]': must be <= 16"),
        ({"config/bottleneck_blocks": 10**9}, "config key 'bottleneck_blocks': must be <= 16"),
        ({"config/sigma": 1.0e300}, "config key 'sigma': must be <= 256.0"),
        ({"config/teacher_options": {"vmamba_tiny_v0": {"dims": 100000}}}, "config key 'teacher_options.vmamba_tiny_v0.dims': must be <= 4096"),
        ({"config/image_size": 8192}, "config key 'image_size': must be at most 1024"),
        ({"config/teacher_seed": 2**70}, "config key 'teacher_seed'"),
        ({"config/train": 5}, "config key 'train': must be a mapping"),
        ({"state_dict/decoder.0.0.body.0.weight": torch.zeros(1, 1, 1, 1)}, "wrong shape keys decoder.0.0.body.0.weight"),
        ({"state_dict/extra.weight": torch.zeros(1)}, "unexpected keys extra.weight"),
    ],
)  # fmt: skip
def test_stored_config_and_shapes_are_checked_before_building(
    rd4ad_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any], message: str
) -> None:
    """Cases 7-9: a forged config (huge sizes, sigma 1e300) or weights of the wrong shape fail
    before any teacher is built. Kills: loading without the schema or without the skeleton check."""
    path = tmp_path / "model.ckpt"
    path.write_bytes(rd4ad_ckpt.read_bytes())
    _forge(path, change)
    from pdd.models import base

    def build_teachers(config: Any, names: Any) -> Any:
        if any(parameter.device.type != "meta" for parameter in torch.nn.Linear(1, 1).parameters()):
            raise AssertionError("a real model was built before the checkpoint was checked")
        return real_build(config, names)

    real_build = base.build_teachers
    monkeypatch.setattr(base, "build_teachers", build_teachers)
    _fails(path, message)


def test_a_sound_real_checkpoint_still_loads(rd4ad_ckpt: Path) -> None:
    model, meta = checkpoint.load(rd4ad_ckpt)
    assert meta["config"]["decoder_blocks"] == [1, 1, 1] and not model.training
