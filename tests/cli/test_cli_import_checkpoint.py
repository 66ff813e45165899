"""`pdd import-checkpoint`: a released training file becomes a loadable pdd-reference checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from pdd.cli import main
from pdd.models.released import released_key_map
from pdd.runs import checkpoint


@pytest.fixture(scope="module")
def released_file(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> Path:
    """A file as the released training script saves it, with random weights in the released names."""
    keys = json.loads((fixtures_dir / "pdd_reference" / "keys.json").read_text())
    generator = torch.Generator().manual_seed(1)
    decoder = {}
    for key, shape, _, kind in keys["state_dict"]:
        if kind == "num_batches_tracked":
            decoder[key] = torch.tensor(5, dtype=torch.int64)
        elif kind == "bn_running_var":
            decoder[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            decoder[key] = torch.randn(shape, generator=generator) * 0.02
    path = tmp_path_factory.mktemp("released") / "epoch_100_auc=0.9.pth"
    torch.save({"decoder": decoder, "optimizer": {"state": {}, "param_groups": []}, "epoch": 99}, path)
    return path


def test_import_writes_a_loadable_checkpoint_without_threshold(
    released_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every released tensor lands in the checkpoint under our name; provenance names the file."""
    out = tmp_path / "model.ckpt"
    status = main(
        ["import-checkpoint", "--released", str(released_file), "--out", str(out),
         "--teachers", "random", "--image-size", "64"]  # fmt: skip
    )
    assert status == 0, capsys.readouterr().err
    model, meta = checkpoint.load(out)
    assert meta["preset"] == "pdd-reference" and model.config["image_size"] == 64
    assert "threshold" not in meta and "map_stats" not in meta
    imported = meta["provenance"]["imported"]
    assert imported["file"] == str(released_file.resolve())
    assert imported["sha256"] == hashlib.sha256(released_file.read_bytes()).hexdigest()
    released = torch.load(released_file, weights_only=True)["decoder"]
    own = model.trainable_state_dict()
    for key, ours in released_key_map(model).items():
        assert torch.equal(own[ours], released[key]), key
    with torch.no_grad():
        maps, scores = model(torch.zeros(1, 3, 64, 64))
    assert maps.shape == (1, 64, 64) and torch.isfinite(scores).all()


def test_import_refuses_an_unsafe_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = tmp_path / "evil.pth"
    torch.save({"decoder": {}, "path": Path("/etc/passwd")}, evil)
    out = tmp_path / "model.ckpt"
    assert main(["import-checkpoint", "--released", str(evil), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {evil}: not a safe checkpoint (refused by weights-only loading")
    assert "\n" not in err and "weights_only=False" not in err
    assert not out.exists()


def test_import_names_the_first_missing_key(
    released_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = torch.load(released_file, weights_only=True)
    del payload["decoder"]["layer3.1.bn3.bias"]
    partial = tmp_path / "partial.pth"
    torch.save(payload, partial)
    out = tmp_path / "model.ckpt"
    status = main(
        ["import-checkpoint", "--released", str(partial), "--out", str(out), "--teachers", "random"]
    )
    assert status == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {partial}: not a released PDD decoder: missing keys layer3.1.bn3.bias"
    )
    assert not out.exists()
