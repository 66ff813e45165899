"""The root folder of everything pdd keeps between runs: weight files, compiled kernels, teacher
features. One function, below every package that keeps something there."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """Root of pdd's cache: ``$PDD_CACHE_DIR``, else ``$XDG_CACHE_HOME/pdd``, else ``~/.cache/pdd``."""
    explicit = os.environ.get("PDD_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pdd"
