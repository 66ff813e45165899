"""The frame around a command that writes a run folder (`pdd fit`, `pdd fit --resume`, `pdd test`).

It holds the folder's lock for the whole run (``pdd.runs.lock``), turns Ctrl-C / SIGTERM into
exit 130 / 143 with a message naming the folder and the resume command (``pdd.cli.signals``), and
keeps a failed new run from blocking its own corrected rerun: when a run into a new or empty folder
fails before it saved anything that can be resumed (a training state, a model, metrics), what it
wrote there (``config.yaml``, ``split.csv``, ...) is removed again.

Under DDP every process runs the command; only the one that writes the folder (global rank 0)
takes the lock and cleans up, the others only get the signal handling.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from pdd.cli.signals import interruptible
from pdd.errors import ConfigError
from pdd.runs.lock import LOCK_NAME, run_lock

__all__ = ["guarded_run"]

# Files whose presence means a run can continue (or has finished): never removed.
_PROGRESS = ("training_state.ckpt", "model.ckpt", "metrics.json")


@contextlib.contextmanager
def guarded_run(folder: Path, command: str, *, resume_command: str | None) -> Iterator[None]:
    """Run the block as ``command`` writing ``folder``.

    ``resume_command``: how an interrupted run continues (``None``: it cannot; rerun it). A new run
    must find ``folder`` absent or empty (the engine refuses anything else), so all it holds is ours.
    """
    folder = Path(folder)
    if not _writes_files():
        with interruptible(command, lambda: f"see the message of the first process about {folder}"):
            yield
        return
    fresh = not folder.exists() or not any(folder.iterdir())
    created = not folder.exists()
    cleared = False

    def advice() -> str:
        if cleared:
            return f"nothing that can be resumed had been saved, so {folder} was emptied; run the same command again"
        if resume_command is not None:
            return f"the run folder {folder} is incomplete; continue with `{resume_command}`"
        return f"the results in {folder} are incomplete; run the command again into an empty folder"

    try:
        with run_lock(folder), interruptible(command, advice):
            try:
                yield
            except BaseException as exc:
                if fresh and not _has_progress(folder):
                    _clear(folder)
                    cleared = True
                if _is_misconfiguration(exc):
                    raise ConfigError(f"{command}: {_first_line(exc)}") from exc
                raise
    finally:
        if cleared and created:
            with contextlib.suppress(OSError):
                folder.rmdir()


def _writes_files() -> bool:
    """Whether this process is the run's global rank 0, the only one writing the folder."""
    # The runner's own rule (launcher variables), not a copy of it.
    from pdd.runs.ranks import is_global_zero_from_env

    return is_global_zero_from_env()


def _has_progress(folder: Path) -> bool:
    return any(any(folder.rglob(name)) for name in _PROGRESS)


def _clear(folder: Path) -> None:
    """Everything in ``folder`` but the lock we hold."""
    for entry in folder.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _is_misconfiguration(exc: BaseException) -> bool:
    """Lightning's refusal of an accelerator / device / strategy setting: the user's input."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return isinstance(exc, MisconfigurationException)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
