"""The fused CPU kernel's build folder is keyed by everything the binary depends on, so two
environments (two virtualenvs, two checkouts, another compiler flag) never share, and rebuild, one
folder; the same environment always finds its own. Nothing is compiled here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pdd.teachers import cross_scan

FLAGS = ["-O3", "-fopenmp"]


def _folder() -> Path:
    return cross_scan.build_folder(cross_scan.build_inputs(FLAGS))[1]


def test_the_same_environment_gets_the_same_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PDD_CACHE_DIR", str(tmp_path))
    first = _folder()
    assert first == _folder()
    assert first.parent == tmp_path / "kernels"
    name, folder = cross_scan.build_folder(cross_scan.build_inputs(FLAGS))
    assert folder.name.startswith(name) and torch.__version__ in folder.name


@pytest.mark.parametrize(
    "change",
    [
        "source",
        "torch_path",
        "abi",
        "torch_version",
        "torch_git",
        "flags",
        "cpu",
        "python",
    ],
)
def test_each_build_input_changes_the_folder(
    change: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PDD_CACHE_DIR", str(tmp_path))
    before = _folder()
    flags = FLAGS
    if change == "source":
        edited = tmp_path / "cross_scan.cpp"
        edited.write_bytes(cross_scan._SOURCE.read_bytes() + b"\n// edited\n")
        monkeypatch.setattr(cross_scan, "_SOURCE", edited)
    elif change == "torch_path":
        monkeypatch.setattr(
            torch, "__file__", str(tmp_path / "other-venv" / "torch" / "__init__.py")
        )
    elif change == "abi":
        abi = getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)
        monkeypatch.setattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", not abi, raising=False)
    elif change == "torch_version":
        monkeypatch.setattr(torch, "__version__", "0.0.1")
    elif change == "torch_git":
        monkeypatch.setattr(torch.version, "git_version", "0" * 40)
    elif change == "flags":
        flags = [*FLAGS, "-march=native"]
    elif change == "cpu":
        monkeypatch.setattr(cross_scan, "_cpu_flags", lambda: "x86_64 flags: sse2")
    elif change == "python":
        monkeypatch.setattr(cross_scan.platform, "python_version", lambda: "3.99.0")
    after = cross_scan.build_folder(cross_scan.build_inputs(flags))[1]
    assert after != before
    assert after.parent == before.parent
