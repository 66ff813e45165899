"""Atomic writes for every result file.

A run folder is read by people and by later commands (``pdd report``, ``pdd test``). A crash or a
full disk must never leave a half-written ``metrics.json`` or checkpoint behind, so each file is
written to a temporary file in the same folder, flushed and fsynced, then moved over the target
with ``os.replace`` (atomic on POSIX and Windows within one file system).

Text is UTF-8 with Python's ``surrogateescape``: a file name that is not valid UTF-8 (POSIX allows
any bytes) is written as its original bytes, and reading the file back with
``errors="surrogateescape"`` (:data:`TEXT_ERRORS`) gives the very same path, so ``split.csv`` and
``scores.csv`` stay lossless instead of failing.

Every failure is a one-line ``PDDError`` naming the file; a full disk says "No space left on
device", also when torch's zip writer hides the errno behind its own ``RuntimeError``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from pdd.errors import PDDError

__all__ = ["TEXT_ERRORS", "atomic_torch_save", "atomic_write_bytes", "atomic_write_text"]

TEXT_ERRORS = "surrogateescape"
"""How text files encode (and must be decoded): undecodable file-name bytes survive the round trip."""


@contextlib.contextmanager
def _atomic_file(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces ``path`` only if the block finishes without error."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise PDDError(f"{folder}: cannot write {target.name}: folder does not exist")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise PDDError(f"{folder}: cannot write {target.name}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file 0600; keep the replaced file's mode, else the usual 0644.
        try:
            mode = target.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _write_with(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    try:
        with _atomic_file(path) as handle:
            write(handle)
    except OSError as exc:
        raise PDDError(f"{path}: cannot write: {exc.strerror or exc}") from exc
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    return _write_with(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8 by default, :data:`TEXT_ERRORS`); returns the path."""
    return atomic_write_bytes(path, text.encode(encoding, TEXT_ERRORS))


def atomic_torch_save(obj: object, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; returns the path."""
    import torch  # imported here so light users of this module (reports) need not load torch

    try:
        return _write_with(path, lambda handle: torch.save(obj, handle))
    except RuntimeError as exc:
        if not _is_stream_write_failure(exc):
            raise
        raise PDDError(
            f"{path}: cannot write: the write failed (No space left on device, or the file "
            "system refused it)"
        ) from exc


def _is_stream_write_failure(exc: RuntimeError) -> bool:
    """torch's zip writer reports a failed write (a full disk) as ``[enforce fail at
    inline_container.cc...] PytorchStreamWriter failed writing file ...``, without the errno."""
    text = str(exc)
    return "PytorchStreamWriter" in text or "inline_container" in text
