"""Getting a weight file into the cache: download with checksum, or import of a local copy.

A missing or altered weight file is always an error, never a silent switch to random weights; a
good cached file is never replaced by a bad or partial one (temporary file, check, then rename).
"""

from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import urllib.error
from pathlib import Path

import torch

from pdd.errors import WeightsError
from pdd.teachers.weight_files import sha256_file
from pdd.teachers.weights.cache import cached_path
from pdd.teachers.weights.manifest import (
    basis_text,
    expected_hash,
    manifest_entry,
    record_hash,
)
from pdd.teachers.weights.registry import WeightSpec, get_spec, upstream_name

__all__ = ["download", "import_file"]


def download(
    name: str,
    *,
    progress: bool = True,
    cache: Path | None = None,
    url: str | None = None,
    force: bool = False,
) -> Path:
    """Fetch ``name`` into the cache, check its SHA-256, and return the cached path.

    An already cached file that still has the right hash is kept (``force`` fetches anyway). The
    download goes to a temporary file beside the target and only replaces it after the checksum
    passes, so a good cached file is never overwritten by a bad or partial one. ``url`` points at a
    mirror; the registry hash still applies.
    """
    spec = get_spec(name)
    target = cached_path(name, cache)
    expected, basis = expected_hash(spec, manifest_entry(name, cache))
    if not force and expected is not None and target.is_file() and sha256_file(target) == expected:
        return target
    source = url or spec.url
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(target, ".download")
    try:
        try:
            torch.hub.download_url_to_file(source, str(tmp), progress=progress)
        except urllib.error.HTTPError as exc:
            raise _fetch_error(spec, source, f"HTTP {exc.code} {exc.reason}") from exc
        except urllib.error.URLError as exc:
            raise _fetch_error(spec, source, str(exc.reason)) from exc
        except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            raise _fetch_error(spec, source, f"{type(exc).__name__}: {exc}") from exc
        actual = sha256_file(tmp)
        if expected is None:
            _check_download(spec, source, tmp)
        elif actual != expected:
            raise WeightsError(
                f"{source}: checksum mismatch for '{name}': expected SHA-256 {expected} "
                f"({basis_text(basis)}), got {actual}; the download was discarded"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    record_hash(name, cache, actual, basis if expected is not None else "first-use", f"download {source}")
    return target


def _check_download(spec: WeightSpec, source: str, tmp: Path) -> None:
    """With no hash to hold it to, a first download must at least build the teacher strictly
    (this also catches a transfer cut short, which urllib does not report)."""
    try:
        _check_architecture(spec, tmp)
    except WeightsError as exc:
        reason = str(exc).removeprefix(f"{tmp}: ")
        raise WeightsError(
            f"{source}: the download is not usable {spec.teacher} weights ({reason}); "
            "it was discarded"
        ) from exc


def _fetch_error(spec: WeightSpec, source: str, reason: str) -> WeightsError:
    upstream = upstream_name(spec)
    return WeightsError(
        f"{source}: could not be fetched ({reason}); without network access, get {upstream} "
        f"from {spec.url} elsewhere and run `pdd weights import {spec.name} /path/to/{upstream}`"
    )


def import_file(
    name: str,
    path: str | os.PathLike[str],
    *,
    allow_checksum_mismatch: bool = False,
    cache: Path | None = None,
) -> Path:
    """Validate a local copy of ``name`` and copy it atomically into the cache.

    The file must load safely and build the teacher strictly (keys and shapes). Its SHA-256 must
    match the registry (or the hash trusted on first use); ``allow_checksum_mismatch`` accepts a
    different file that still fits the architecture, and the manifest records that it is not the
    official one.
    """
    spec = get_spec(name)
    source = Path(path).expanduser()
    if not source.is_file():
        raise WeightsError(f"{source}: no such weights file")
    actual = sha256_file(source)
    _check_architecture(spec, source)
    expected, basis = expected_hash(spec, manifest_entry(name, cache))
    if expected is None:
        basis = "first-use"
    elif actual != expected:
        if not allow_checksum_mismatch:
            raise WeightsError(
                f"{source}: checksum mismatch for '{name}': expected SHA-256 {expected} "
                f"({basis_text(basis)}), got {actual}; pass --allow-checksum-mismatch "
                f"(allow_checksum_mismatch=True) to use this file anyway"
            )
        basis = "accepted-mismatch"
    target = cached_path(name, cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not (target.exists() and target.samefile(source)):
        _atomic_copy(source, target, actual)
    record_hash(name, cache, actual, basis, f"import {source.resolve()}")
    return target


def _atomic_copy(source: Path, target: Path, sha256: str) -> None:
    """Copy to a temporary file beside ``target``, re-check the hash, fsync, then rename."""
    tmp = _temp_path(target, ".import")
    try:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        copied = sha256_file(tmp)
        if copied != sha256:
            raise WeightsError(
                f"{source}: file changed while being imported (SHA-256 {sha256} became {copied})"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _temp_path(target: Path, suffix: str) -> Path:
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(handle)
    return Path(name)


def _check_architecture(spec: WeightSpec, path: Path) -> None:
    """Strict key and shape check: the teacher must build from this file (errors name the file)."""
    from pdd.teachers import (
        build,  # lazy: no import cycle whatever pdd.teachers imports
    )

    build(spec.teacher, weights=path)
