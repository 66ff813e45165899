"""Where pdd keeps what it downloads or builds: the cache root and its weights/ folder."""

from __future__ import annotations

import os
from pathlib import Path

from pdd.teachers.weights.registry import get_spec

__all__ = ["cache_dir", "cached_path", "weights_dir"]


def cache_dir() -> Path:
    """Root of pdd's cache: ``$PDD_CACHE_DIR``, else ``$XDG_CACHE_HOME/pdd``, else ``~/.cache/pdd``."""
    explicit = os.environ.get("PDD_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pdd"


def weights_dir(cache: Path | None = None) -> Path:
    """Folder holding the weight files and their manifest."""
    return (cache if cache is not None else cache_dir()) / "weights"


def cached_path(name: str, cache: Path | None = None) -> Path:
    """Where the file of ``name`` lives in the cache (whether or not it is there)."""
    return weights_dir(cache) / get_spec(name).filename
