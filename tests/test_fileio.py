"""Atomic writes: a failure never leaves a half-written file or a temporary file behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pdd import fileio
from pdd.errors import PDDError


def test_text_bytes_and_torch_round_trip(tmp_path: Path) -> None:
    assert fileio.atomic_write_text(tmp_path / "a.txt", "héllo\n") == tmp_path / "a.txt"
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    fileio.atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    fileio.atomic_torch_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    assert torch.equal(loaded["w"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.pt"]


def test_replacing_keeps_nothing_of_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    fileio.atomic_write_text(target, "x" * 1000)
    fileio.atomic_write_text(target, "{}")
    assert target.read_text() == "{}"


def test_new_files_are_readable_by_others(tmp_path: Path) -> None:
    fileio.atomic_write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


class _Unpicklable:
    def __reduce__(self) -> tuple:
        raise RuntimeError("boom while serialising")


def test_failure_mid_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.ckpt"
    fileio.atomic_torch_save({"version": 1}, target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        # torch.save has written its header into the temporary file when pickling fails
        fileio.atomic_torch_save({"version": 2, "bad": _Unpicklable()}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]


def test_failure_inside_replace_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "scores.csv"
    fileio.atomic_write_text(target, "old")

    def failing_replace(source: str, destination: object) -> None:
        assert Path(source).read_text() == "new"  # fully written before the move
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(PDDError, match=r"scores\.csv: cannot write: No space left on device"):
        fileio.atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(PDDError, match=f"{tmp_path / 'missing'}: cannot write a.txt"):
        fileio.atomic_write_text(tmp_path / "missing" / "a.txt", "x")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_folder_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PDDError, match=f"{folder}: cannot write a.txt"):
            fileio.atomic_write_text(folder / "a.txt", "x")
    finally:
        folder.chmod(0o700)


def test_permission_denied_is_named(tmp_path: Path, monkeypatch) -> None:
    def denied(**kwargs: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fileio.tempfile, "mkstemp", denied)
    with pytest.raises(PDDError, match=f"{tmp_path}: cannot write a.txt: Permission denied"):
        fileio.atomic_write_text(tmp_path / "a.txt", "x")
