"""The weights manifest (``manifest.json`` beside the files): how each file got into the cache and
the SHA-256 it had, and so which hash a file must have.

The manifest lets ``verify`` re-check files whose publisher gives no hash (trust on first use: the
first download or import must build the teacher strictly, then its hash is recorded and every
later ``verify``, re-download and import is checked against it) or that a user imported knowingly
despite a checksum mismatch.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pdd.errors import WeightsError
from pdd.fileio import atomic_write_text
from pdd.teachers.weights.cache import weights_dir
from pdd.teachers.weights.registry import WeightSpec, get_spec

__all__ = ["Basis", "basis_text", "expected_hash", "manifest_entry", "read_manifest", "record_hash"]

Basis = Literal["registry", "first-use", "accepted-mismatch"]
_MANIFEST = "manifest.json"


def read_manifest(cache: Path | None) -> dict[str, dict[str, Any]]:
    path = weights_dir(cache) / _MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: unreadable weights manifest ({exc}); delete it") from exc
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise WeightsError(f"{path}: weights manifest has no 'files' table; delete it")
    return files


def manifest_entry(name: str, cache: Path | None) -> dict[str, Any] | None:
    return read_manifest(cache).get(name)


def record_hash(name: str, cache: Path | None, sha256: str, basis: Basis, origin: str) -> None:
    """Write the manifest entry of ``name`` (atomic replace, so readers never see half a file)."""
    files = read_manifest(cache)
    files[name] = {
        "filename": get_spec(name).filename,
        "sha256": sha256,
        "basis": basis,
        "origin": origin,
        "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps({"version": 1, "files": files}, indent=2) + "\n"
    atomic_write_text(weights_dir(cache) / _MANIFEST, text)


def expected_hash(
    spec: WeightSpec, entry: Mapping[str, Any] | None, *, cached_copy: bool = False
) -> tuple[str | None, Basis]:
    """The hash a file must have and why: registry, first use, or (``cached_copy``: checking the
    file already in the cache) the hash of a non-official file the user accepted on import.

    Downloads and imports are held to the official hash even after a mismatch was accepted, so the
    official file can always replace a stand-in.
    """
    if entry is not None and entry.get("basis") == "accepted-mismatch":
        if cached_copy:
            return str(entry["sha256"]), "accepted-mismatch"
        entry = None
    if spec.sha256 is not None:
        return spec.sha256, "registry"
    if entry is not None:
        return str(entry["sha256"]), "first-use"
    return None, "first-use"


def basis_text(basis: Basis) -> str:
    return {
        "registry": "from the weights registry",
        "first-use": "recorded on first use",
        "accepted-mismatch": "recorded when a non-official file was imported",
    }[basis]
