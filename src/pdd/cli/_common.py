"""Checks and helpers shared by the command modules.

Inputs are checked before any model is built, so a typo in a path fails in a second with one line
instead of after minutes of loading weights.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from pdd.errors import ConfigError, DataError, PDDError, WeightsError

__all__ = [
    "MAX_SEED",
    "Progress",
    "check_cache_dir",
    "check_hardware",
    "check_seed",
    "existing_file",
    "existing_path",
    "parse_window",
    "positive_int",
    "prepare_output_file",
    "prepare_output_folder",
    "seed_int",
    "user_path",
]

MAX_SEED = 2**32 - 1
"""Seeds go to numpy, which accepts 0 .. 2**32 - 1."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a usage error otherwise)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def check_seed(value: int, where: str) -> int:
    """``value`` if numpy can be seeded with it, else a ``ConfigError`` naming ``where``."""
    if not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{where}: a seed must be between 0 and {MAX_SEED} (2**32 - 1), got {value}")
    return value


def seed_int(text: str) -> int:
    """argparse type: a seed (a usage error otherwise)."""
    import argparse

    try:
        return check_seed(int(text), "seed")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("seed: ")) from None


def check_hardware(accelerator: str, precision: str) -> None:
    """Refuse, before anything is written, what Lightning would refuse or silently change.

    ``--accelerator gpu`` without a visible GPU fails deep inside Lightning; ``16-mixed`` on a CPU
    is quietly run as ``bf16-mixed`` while our records would say 16-mixed.
    """
    import torch

    has_gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    if accelerator == "gpu" and not has_gpu:
        raise ConfigError(
            "--accelerator gpu: this process sees no GPU (torch.cuda.is_available() is False); "
            "use --accelerator cpu or auto"
        )
    if precision == "16-mixed" and (accelerator == "cpu" or not has_gpu):
        raise ConfigError(
            "--precision 16-mixed: float16 mixed precision needs a GPU; on a CPU use "
            "bf16-mixed or 32-true"
        )


def check_cache_dir() -> None:
    """The weight cache must be (or be creatable as) a folder; a ``PDD_CACHE_DIR`` pointing at a
    file used to surface as an internal ``NotADirectoryError`` deep inside a download."""
    from pdd.teachers.weights import weights_dir

    cache = weights_dir()
    nearest = cache
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        cause = (
            f" (from PDD_CACHE_DIR={os.environ['PDD_CACHE_DIR']}; point it at a folder)"
            if os.environ.get("PDD_CACHE_DIR")
            else ""
        )
        raise WeightsError(f"{nearest}: is a file, so the weight cache {cache} cannot be a folder{cause}")


def existing_path(path: Path, what: str) -> Path:
    """``path`` if it exists (file or folder), else a ``DataError`` naming it."""
    if not path.exists():
        raise DataError(f"{path}: {what} does not exist")
    return path


def existing_file(path: Path, what: str) -> Path:
    """``path`` if it is a readable file, else a one-line error naming it."""
    if not path.exists():
        raise DataError(f"{path}: {what} does not exist")
    if not path.is_file():
        raise DataError(f"{path}: {what} is not a file")
    return path


def prepare_output_folder(path: Path) -> Path:
    """Create ``path`` (with parents) and prove it is writable before any work starts."""
    if path.exists() and not path.is_dir():
        raise PDDError(f"{path}: output folder is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise PDDError(f"{path}: cannot write to output folder: {exc.strerror or exc}") from exc
    return path


def prepare_output_file(path: Path) -> Path:
    """Make sure the folder of an output file exists and is writable."""
    if path.is_dir():
        raise PDDError(f"{path}: output file is a folder")
    prepare_output_folder(path.parent if str(path.parent) else Path("."))
    return path


def parse_window(text: str | None) -> tuple[float, float] | None:
    """``"C,W"`` (DICOM window centre and width) -> ``(C, W)``; ``None`` keeps the file's own."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        centre, width = (float(part) for part in parts)
    except ValueError:
        raise ConfigError(f"--window: expected CENTRE,WIDTH such as 40,80, got {text!r}") from None
    if width <= 0:
        raise ConfigError(f"--window: width must be > 0, got {width:g}")
    return centre, width


class Progress:
    """A one-line counter on stderr: redrawn in place on a terminal, every ~10% otherwise.

    Why not tqdm: it is not a dependency, and logs of batch jobs stay short this way.
    Its ``update(done, total)`` is the ``on_progress`` callback of the engine functions.
    """

    def __init__(self, label: str, *, enabled: bool = True) -> None:
        self.label = label
        self.enabled = enabled
        self.interactive = sys.stderr.isatty()
        self._last_decile = -1

    def update(self, done: int, total: int) -> None:
        """Report that ``done`` of ``total`` items are finished."""
        if not self.enabled or total <= 0:
            return
        percent = 100 * done // total
        line = f"{self.label}: {done}/{total} ({percent}%)"
        if self.interactive:
            print("\r" + line, end="\n" if done >= total else "", file=sys.stderr, flush=True)
        elif percent // 10 > self._last_decile or done >= total:
            self._last_decile = percent // 10
            print(line, file=sys.stderr, flush=True)


def user_path(text: str) -> Path:
    """argparse type for paths: expands ``~`` so quoted paths behave like unquoted ones."""
    return Path(os.path.expanduser(text))
