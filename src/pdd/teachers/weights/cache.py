"""Where pdd keeps what it downloads or builds: the cache root and its weights/ folder."""

from __future__ import annotations

from pathlib import Path

from pdd.cache_root import cache_dir
from pdd.teachers.weights.registry import get_spec

__all__ = ["cache_dir", "cached_path", "weights_dir"]


def weights_dir(cache: Path | None = None) -> Path:
    """Folder holding the weight files and their manifest."""
    return (cache if cache is not None else cache_dir()) / "weights"


def cached_path(name: str, cache: Path | None = None) -> Path:
    """Where the file of ``name`` lives in the cache (whether or not it is there)."""
    return weights_dir(cache) / get_spec(name).filename
