"""One writer per run folder: an exclusive lock held for the whole run.

Two `pdd fit` into the same ``--out`` would both pass the empty-folder check and end with a mixed
folder (the config of one, the metrics of the other). Each run therefore holds ``fcntl.flock`` on
``<folder>/.pdd.lock`` (POSIX), a file holding the holder's pid. The kernel drops the lock when its
process dies however it dies, so a lock file left by a killed run is simply taken over; a finished
run removes the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from pdd.errors import ConfigError, PDDError

__all__ = ["LOCK_NAME", "run_lock"]

LOCK_NAME = ".pdd.lock"


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[Path]:
    """Create ``folder`` if needed and hold its lock for the block; yields the lock file's path.

    Another live process holding it is a one-line ``ConfigError`` naming the folder and its pid.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: output folder is a file")
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path)
    except OSError as exc:
        raise PDDError(f"{folder}: cannot lock the run folder: {exc.strerror or exc}") from exc
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)  # releases the lock


def _acquire(path: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive lock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ConfigError(
                f"{path.parent}: another pdd run (pid {holder}) is writing this folder; "
                "wait for it to finish or choose another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # The previous holder may have removed the file between our open and our lock; then we
        # locked a file nobody else will see, and must start over with the current one.
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            return fd
        os.close(fd)


def _holder(fd: int) -> str:
    """The pid written by the process holding the lock ("unknown" while it is still writing it)."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"
