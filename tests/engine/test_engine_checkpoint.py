"""model.ckpt: a round trip rebuilds the same model from the file alone; every bad file is a
one-line CheckpointError naming it."""

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
    "provenance": {"seed": 3, "dataset": Path("/data/headct"), "epochs": 2},
}


def trained_fake() -> Any:
    model = create_fake()
    with torch.no_grad():
        for parameter in model.student.parameters():
            parameter.add_(torch.randn_like(parameter))
    model.student[1].running_mean.fill_(0.5)  # buffers are part of the trainable state
    return model.eval()


def saved(tmp_path: Path, fake_model: None, **changes: Any) -> Path:
    path = tmp_path / "model.ckpt"
    checkpoint.save(path, trained_fake(), **META)
    if changes:
        payload = torch.load(path, weights_only=True)
        payload.update(changes)
        torch.save(payload, path)
    return path


def test_round_trip_rebuilds_the_same_model(fake_model: None, tmp_path: Path) -> None:
    model = trained_fake()
    path = checkpoint.save(tmp_path / "model.ckpt", model, **META)
    assert [p.name for p in tmp_path.iterdir()] == [
        "model.ckpt"
    ]  # no temporary file left
    loaded, meta = checkpoint.load(path)
    assert not loaded.training
    images = torch.randn(2, 3, 32, 32)
    expected, got = model(images), loaded(images)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    assert meta["threshold"] == 0.25 and meta["map_stats"] == {"vmin": 0.1, "vmax": 0.9}
    assert meta["provenance"] == {"seed": 3, "dataset": "/data/headct", "epochs": 2}
    assert meta["preset"] == "fake" and meta["config"] == model.config
    assert meta["format_version"] == checkpoint.FORMAT_VERSION
    payload = torch.load(path, weights_only=True)
    assert not [key for key in payload["state_dict"] if key.startswith("teachers.")]


def test_real_pdd_round_trip_with_random_teachers(tmp_path: Path) -> None:
    """The real preset: teachers rebuilt from their seed and verified, weights restored; a config
    edited to a different architecture no longer fits the stored weights."""
    from pdd import create_model

    model = create_model("pdd", teachers="random", image_size=32, teacher_seed=5).eval()
    path = checkpoint.save(
        tmp_path / "model.ckpt",
        model,
        threshold=1.0,
        map_stats={"vmin": 0.0, "vmax": 1.0},
    )
    loaded, meta = checkpoint.load(path)
    assert meta["teachers"] == model.teacher_identity()
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images)[1], loaded(images)[1])

    payload = torch.load(path, weights_only=True)
    payload["config"]["students"] = "shared"  # one decoder fewer than the weights hold
    torch.save(payload, path)
    with pytest.raises(
        CheckpointError, match="model.ckpt: trainable weights do not fit"
    ):
        checkpoint.load(path)


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_truncated_file(fake_model: None, tmp_path: Path, keep: float) -> None:
    path = saved(tmp_path, fake_model)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(
        CheckpointError, match=r"model\.ckpt: .*(truncated or corrupted|not a)"
    ) as error:
        checkpoint.load(path)
    assert "\n" not in str(error.value)


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    garbage = tmp_path / "noise.ckpt"
    garbage.write_bytes(b"\x80\x04not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="noise.ckpt"):
        checkpoint.load(garbage)
    with pytest.raises(CheckpointError, match="missing.ckpt: checkpoint not found"):
        checkpoint.load(tmp_path / "missing.ckpt")
    other = tmp_path / "tensor.ckpt"
    torch.save(torch.zeros(3), other)
    with pytest.raises(CheckpointError, match="tensor.ckpt: not a PDD checkpoint"):
        checkpoint.load(other)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"format": checkpoint.FORMAT, "payload": Path("/etc/passwd")}, path)
    with pytest.raises(CheckpointError, match="evil.ckpt: not a safe PDD checkpoint"):
        checkpoint.load(path)


def test_newer_format_version(fake_model: None, tmp_path: Path) -> None:
    path = saved(
        tmp_path,
        fake_model,
        format_version=checkpoint.FORMAT_VERSION + 1,
        pdd_version="9.0",
    )
    with pytest.raises(CheckpointError, match="newer pdd.*upgrade"):
        checkpoint.load(path)


def test_config_that_does_not_match_the_weights(
    fake_model: None, tmp_path: Path
) -> None:
    payload_config = {
        **create_fake().config,
        "norm": "none",
    }  # no BatchNorm: weights do not fit
    path = saved(tmp_path, fake_model, config=payload_config)
    with pytest.raises(
        CheckpointError, match="model.ckpt: trainable weights do not fit"
    ):
        checkpoint.load(path)


def test_teachers_that_differ_from_the_stored_identity(
    fake_model: None, tmp_path: Path
) -> None:
    path = saved(tmp_path, fake_model)
    payload = torch.load(path, weights_only=True)
    payload["teachers"]["fake"]["fingerprint"] = [123.0]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="model.ckpt: teacher fake differs"):
        checkpoint.load(path)


def test_training_state_file_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "training_state.ckpt"
    torch.save({"pytorch-lightning_version": "2.6", "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="Lightning training-state file"):
        checkpoint.load(path)


def test_meta_must_be_plain_data(fake_model: None, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="meta.provenance.when"):
        checkpoint.save(
            tmp_path / "model.ckpt", create_fake(), provenance={"when": object()}
        )
    assert not list(tmp_path.iterdir())
