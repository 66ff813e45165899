"""What the cache holds: the file a teacher loads (``resolve``), re-checking a file (``verify``),
and the table ``pdd weights list`` prints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdd.errors import WeightsError
from pdd.teachers.weight_files import sha256_file
from pdd.teachers.weights.cache import cached_path
from pdd.teachers.weights.manifest import (
    Basis,
    basis_text,
    expected_hash,
    manifest_entry,
    read_manifest,
)
from pdd.teachers.weights.registry import DEFAULT_WEIGHTS, WEIGHTS, fetch_hint, get_spec

__all__ = ["VerifyResult", "list_weights", "resolve", "verify"]


@dataclass(frozen=True)
class VerifyResult:
    """A cached file that hashed to what it must: ``basis`` says where that hash came from."""

    name: str
    path: Path
    sha256: str
    basis: Basis


def verify(name: str, cache: Path | None = None) -> VerifyResult:
    """Re-hash the cached file of ``name`` against the hash it must have."""
    spec = get_spec(name)
    target = cached_path(name, cache)
    if not target.is_file():
        raise WeightsError(f"{target}: '{name}' is not cached; {fetch_hint(spec)}")
    expected, basis = expected_hash(spec, manifest_entry(name, cache), cached_copy=True)
    if expected is None:
        raise WeightsError(
            f"{target}: no hash is known for '{name}' (none published, none recorded); "
            f"re-import it with `pdd weights import {name} {target}` to record one"
        )
    actual = sha256_file(target)
    if actual != expected:
        raise WeightsError(
            f"{target}: checksum mismatch for '{name}': expected SHA-256 {expected} "
            f"({basis_text(basis)}), got {actual}; the file was modified or is damaged, "
            f"run `pdd weights download {name} --force` or import it again"
        )
    return VerifyResult(name=name, path=target, sha256=actual, basis=basis)


def resolve(teacher: str, name: str | None = None, cache: Path | None = None) -> Path:
    """The cached file of the named (default: the teacher's default) weights, or a clear error."""
    if teacher not in DEFAULT_WEIGHTS:
        raise WeightsError(
            f"unknown teacher '{teacher}'; known: {', '.join(sorted(DEFAULT_WEIGHTS))}"
        )
    spec = get_spec(name if name is not None else DEFAULT_WEIGHTS[teacher])
    if spec.teacher != teacher:
        raise WeightsError(f"weights '{spec.name}' are for {spec.teacher}, not {teacher}")
    target = cached_path(spec.name, cache)
    if not target.is_file():
        raise WeightsError(
            f"{target}: pretrained {teacher} weights '{spec.name}' not found; "
            f"{fetch_hint(spec)}, or pass `--teachers random` for a demo without pretrained weights"
        )
    return target


def list_weights(cache: Path | None = None) -> list[dict[str, Any]]:
    """One row per registry entry for ``pdd weights list`` (no hashing: it must be instant)."""
    manifest = read_manifest(cache)
    rows = []
    for spec in WEIGHTS.values():
        target = cached_path(spec.name, cache)
        entry = manifest.get(spec.name)
        cached = target.is_file()
        if spec.sha256 is not None:
            checksum = "registry"
        elif entry is not None:
            checksum = "first-use"
        else:
            checksum = "none yet (trusted on first use)"
        if cached and entry is not None and entry.get("basis") == "accepted-mismatch":
            checksum = "accepted-mismatch"
        rows.append(
            {
                "name": spec.name,
                "teacher": spec.teacher,
                "default": DEFAULT_WEIGHTS[spec.teacher] == spec.name,
                "cached": cached,
                "path": str(target),
                "sha256": spec.sha256 or (entry or {}).get("sha256"),
                "checksum": checksum,
                "url": spec.url,
            }
        )
    return rows
