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


def _temp_on_a_full_disk(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the writer's temporary file /dev/full (every write fails with ENOSPC, as on a full
    disk); returns the temporary names handed out so a test can check they were removed."""
    made: list[str] = []
    real_mkstemp = fileio.tempfile.mkstemp

    def mkstemp(**kwargs: object) -> tuple[int, str]:
        fd, name = real_mkstemp(**kwargs)
        os.close(fd)
        made.append(name)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(fileio.tempfile, "mkstemp", mkstemp)
    return made


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("write", ["text", "torch"])
def test_disk_full_names_the_file_and_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    """Issue 11 case 6: a full disk is one line naming the file and "No space left on device".
    Kills: dropping the OSError -> PDDError translation in ``_write_with``."""
    target = tmp_path / "model.ckpt"
    made = _temp_on_a_full_disk(monkeypatch)
    with pytest.raises(PDDError) as error:
        if write == "text":
            fileio.atomic_write_text(target, "x" * 100_000)
        else:
            fileio.atomic_torch_save({"w": torch.zeros(100_000)}, target)
    message = str(error.value)
    assert message.startswith(f"{target}: cannot write") and "No space left on device" in message
    assert "\n" not in message
    assert made and not any(Path(name).exists() for name in made)
    assert not target.exists()


def test_torch_stream_writer_failure_is_named_as_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's zip writer can hide ENOSPC in ``RuntimeError: [enforce fail at inline_container.cc]``.
    Kills: removing the RuntimeError translation in ``atomic_torch_save``."""

    def failing_save(obj: object, handle: object) -> None:
        raise RuntimeError(
            "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing "
            "file data/0: file write failed"
        )

    monkeypatch.setattr(torch, "save", failing_save)
    target = tmp_path / "training_state.ckpt"
    with pytest.raises(PDDError, match=r"training_state\.ckpt: cannot write: .*No space left on device"):
        fileio.atomic_torch_save({"w": 1}, target)
    assert list(tmp_path.iterdir()) == []


def test_other_torch_runtime_errors_pass_through(tmp_path: Path, monkeypatch) -> None:
    """Only the stream writer's failure is a disk problem; a bug stays a bug."""

    def failing_save(obj: object, handle: object) -> None:
        raise RuntimeError("something else")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="something else"):
        fileio.atomic_torch_save({"w": 1}, tmp_path / "x.pt")


def test_a_file_name_that_is_not_utf8_round_trips(tmp_path: Path) -> None:
    """Issue 11 case 4: a POSIX file name with bytes that are not UTF-8 is written as those bytes
    (surrogateescape) and read back to the same path. Kills: encoding with errors="strict"."""
    raw = b"train/good/caf\xe9.png"  # Latin-1 e-acute: not valid UTF-8
    name = os.fsdecode(raw)
    fileio.atomic_write_text(tmp_path / "split.csv", f"path\n{name}\n")
    assert (tmp_path / "split.csv").read_bytes() == b"path\n" + raw + b"\n"
    text = (tmp_path / "split.csv").read_text(encoding="utf-8", errors=fileio.TEXT_ERRORS)
    assert os.fsencode(text.splitlines()[1]) == raw
