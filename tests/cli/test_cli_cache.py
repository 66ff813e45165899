"""`pdd cache list|clear`: counts what the feature store and kernel folders hold, empties them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pdd.cli import main
from pdd.training.feature_cache import DiskStore, features_dir


def test_list_then_clear_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PDD_CACHE_DIR", str(tmp_path))
    store = DiskStore(features_dir(tmp_path), limit=1 << 30)
    for key in ("a" * 64, "b" * 64):
        store.put(
            key, {"teacher.1": (torch.ones(4, 2, 2), (0, 1, 2, 3), torch.float32)}
        )
    (tmp_path / "kernels" / "build-1").mkdir(parents=True)
    (tmp_path / "kernels" / "build-1" / "kernel.so").write_bytes(b"x" * 10)

    assert main(["cache", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    features = next(line for line in listed if line.startswith("features"))
    kernels = next(line for line in listed if line.startswith("kernels"))
    assert features.split()[1] == "2" and str(features_dir(tmp_path)) in features
    assert kernels.split()[1] == "1"

    assert main(["cache", "clear", "features"]) == 0
    assert "cleared features: 2 entries" in capsys.readouterr().out
    assert store.entries() == 0
    assert (tmp_path / "kernels" / "build-1" / "kernel.so").exists()

    assert main(["cache", "clear", "all"]) == 0
    assert not (tmp_path / "kernels").exists()
