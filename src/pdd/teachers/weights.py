"""The teachers' official weight files: registry, cache, download with checksum, import, verify.

Pretrained teachers are the method, so a missing or altered weight file is always an error, never
a silent switch to random weights. Files live in ``cache_dir()/weights/``; a small manifest
(``manifest.json`` beside them) records how each file got there and the SHA-256 it had, so that
``verify`` can re-check files whose publisher gives no hash (trust on first use) or that a user
imported knowingly despite a checksum mismatch.

Where each registry hash comes from (all are full SHA-256 digests of the published file):

- ``wide_resnet50_2.racm_in1k``: the Git LFS object id of ``model.safetensors`` on the Hugging
  Face hub (revision pinned in the URL), as recorded by several independent public projects.
- ``wide_resnet50_2.tv_in1k`` / ``tv2_in1k``: torchvision's file names carry the first 8 hex
  digits of the SHA-256; the full digests, which start with those digits, are recorded by several
  public projects that verified the download.
- ``vmamba_tiny_v0.in1k``: the VMamba release gives no hash; the digest is the one a public
  project recorded for its verified download (size 91,649,482 bytes, which fits the 22.9 M float32
  parameters of the documented state dict).

A spec with ``sha256=None`` is trusted on first use: the first download or import must build the
teacher strictly, then its hash is recorded in the manifest and every later ``verify``,
re-download and import is checked against that.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import json
import os
import pickle
import shutil
import struct
import tempfile
import urllib.error
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from pdd.errors import WeightsError
from pdd.fileio import atomic_write_text

TeacherName = Literal["wide_resnet50_2", "vmamba_tiny_v0"]
WeightFormat = Literal["pth", "safetensors"]
Basis = Literal["registry", "first-use", "accepted-mismatch"]

_HEX = frozenset("0123456789abcdef")
_CHUNK = 1 << 20
_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class WeightSpec:
    """One published weight file: where it is, what it must hash to, which teacher it fits."""

    name: str
    teacher: TeacherName
    url: str
    filename: str
    sha256: str | None
    source: str
    format: WeightFormat
    # Where ``sha256`` was read, so a reviewer can check it (torchvision: also the file name's prefix).
    digest_source: str = ""

    def __post_init__(self) -> None:
        if self.sha256 is not None and (len(self.sha256) != 64 or not set(self.sha256) <= _HEX):
            raise ValueError(f"{self.name}: sha256 must be 64 lower-case hex digits or None")


WEIGHTS: dict[str, WeightSpec] = {
    spec.name: spec
    for spec in (
        WeightSpec(
            name="wide_resnet50_2.racm_in1k",
            teacher="wide_resnet50_2",
            url=(
                "https://huggingface.co/timm/wide_resnet50_2.racm_in1k/resolve/"
                "30f73aceaaa1911830a9795b83ab1908dba18719/model.safetensors"
            ),
            filename="wide_resnet50_2.racm_in1k.safetensors",
            sha256="03b71d65fb2c73bb0de079a1781009f27a782ec481d2f64ab3bde9b1cdec3000",
            source=(
                "timm (Ross Wightman), ImageNet-1k, RandAugment + cosine recipe; the PDD authors' "
                "teacher; Apache-2.0; hash = Hugging Face LFS oid of model.safetensors "
                "(275,835,296 bytes)"
            ),
            format="safetensors",
            digest_source=(
                "the Git LFS pointer of model.safetensors on the Hugging Face hub at the pinned "
                "revision (shown as 'SHA256' on huggingface.co/timm/wide_resnet50_2.racm_in1k/blob/"
                "30f73aceaaa1911830a9795b83ab1908dba18719/model.safetensors); the same digest is "
                "recorded in several independent public projects' weight manifests"
            ),
        ),
        WeightSpec(
            name="wide_resnet50_2.tv_in1k",
            teacher="wide_resnet50_2",
            url="https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth",
            filename="wide_resnet50_2-95faca4d.pth",
            sha256="95faca4d11227dddf8633dbb5ff6c8a9003c1aa5b8945c73834b8007b10950b8",
            source=(
                "torchvision Wide_ResNet50_2_Weights.IMAGENET1K_V1, BSD-3-Clause; hash prefix "
                "95faca4d from the file name, full digest as publicly recorded (138,223,492 bytes)"
            ),
            format="pth",
            digest_source=(
                "prefix 95faca4d: torchvision's file name (checked by the test suite); full "
                "digest: as recorded by several independent public projects that hashed this "
                "download (PyTorch publishes only the prefix)"
            ),
        ),
        WeightSpec(
            name="wide_resnet50_2.tv2_in1k",
            teacher="wide_resnet50_2",
            url="https://download.pytorch.org/models/wide_resnet50_2-9ba9bcbe.pth",
            filename="wide_resnet50_2-9ba9bcbe.pth",
            sha256="9ba9bcbebc349d733a72eb7608143fd754e4689ac8d8ce2916ca0bdff6443950",
            source=(
                "torchvision Wide_ResNet50_2_Weights.IMAGENET1K_V2, BSD-3-Clause; hash prefix "
                "9ba9bcbe from the file name, full digest as publicly recorded"
            ),
            format="pth",
            digest_source=(
                "prefix 9ba9bcbe: torchvision's file name (checked by the test suite); full "
                "digest: as recorded by several independent public projects that hashed this "
                "download (PyTorch publishes only the prefix)"
            ),
        ),
        WeightSpec(
            name="vmamba_tiny_v0.in1k",
            teacher="vmamba_tiny_v0",
            url=(
                "https://github.com/MzeroMiko/VMamba/releases/download/%23v0cls/"
                "vssmtiny_dp01_ckpt_epoch_292.pth"
            ),
            filename="vssmtiny_dp01_ckpt_epoch_292.pth",
            sha256="dbc0cc4f5ec0e45db5fba7c939d2c7d9b617e891ac10766912a8d604c37c5e47",
            source=(
                "VMamba release #v0cls (Vanilla-VMamba-T, 82.2% top-1), MIT; the release publishes "
                "no hash, digest as publicly recorded (91,649,482 bytes); state dict under 'model'"
            ),
            format="pth",
            digest_source=(
                "the VMamba release page publishes no hash; digest as recorded by independent "
                "public projects for their verified download of this URL (91,649,482 bytes); "
                "it cannot be checked against the publisher"
            ),
        ),
    )
}

DEFAULT_WEIGHTS: dict[str, str] = {
    "wide_resnet50_2": "wide_resnet50_2.racm_in1k",
    "vmamba_tiny_v0": "vmamba_tiny_v0.in1k",
}


@dataclass(frozen=True)
class VerifyResult:
    """A cached file that hashed to what it must: ``basis`` says where that hash came from."""

    name: str
    path: Path
    sha256: str
    basis: Basis


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


def get_spec(name: str) -> WeightSpec:
    """The registry entry ``name``, or a one-line error listing the known names."""
    try:
        return WEIGHTS[name]
    except KeyError:
        known = ", ".join(sorted(WEIGHTS))
        raise WeightsError(f"unknown weights '{name}'; known: {known}") from None


def cached_path(name: str, cache: Path | None = None) -> Path:
    """Where the file of ``name`` lives in the cache (whether or not it is there)."""
    return weights_dir(cache) / get_spec(name).filename


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, streamed so a 300 MB checkpoint never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Load a state dict without ever running code from the file.

    The format is read from the file's first bytes, not its name (a ``.bin`` may be a torch zip);
    torch files go through ``torch.load(weights_only=True)``. A ``{"model": ...}`` or
    ``{"state_dict": ...}`` wrapper (VMamba, Lightning) is unwrapped.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read weights file ({exc.strerror or exc})") from exc
    if size == 0:
        raise WeightsError(f"{path}: weights file is empty (0 bytes)")
    if _looks_like_safetensors(head, size):
        payload = _load_safetensors(path)
    elif head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        payload = _load_torch(path)
    else:
        raise WeightsError(f"{path}: not a PyTorch or safetensors weights file")
    return _as_state_dict(payload, path)


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """safetensors starts with a little-endian u64 header length and then a JSON object."""
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 0 < header_len <= size - 8 and head[8:9] == b"{"


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: corrupt or truncated safetensors file ({exc})") from exc


def _load_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _first_line(exc)
        raise WeightsError(
            f"{path}: refused, the file holds objects that would run code when loaded "
            f"(torch.load weights_only=True): {reason}"
        ) from exc
    except Exception as exc:  # torch.load reports corruption as RuntimeError, EOFError, ...
        reason = _first_line(exc)
        raise WeightsError(
            f"{path}: corrupt or truncated PyTorch file ({type(exc).__name__}: {reason})"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _as_state_dict(payload: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(payload, Mapping):
        for wrapper in ("model", "state_dict"):
            if isinstance(payload.get(wrapper), Mapping):
                payload = payload[wrapper]
                break
    if not isinstance(payload, Mapping):
        raise WeightsError(f"{path}: holds a {type(payload).__name__}, not a state dict")
    if not payload:
        raise WeightsError(f"{path}: the state dict is empty")
    for key, value in payload.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise WeightsError(
                f"{path}: not a state dict: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
    return dict(payload)


def _check_architecture(spec: WeightSpec, path: Path) -> None:
    """Strict key and shape check: the teacher must build from this file (errors name the file)."""
    from pdd.teachers import (
        build,  # lazy: no import cycle whatever pdd.teachers imports
    )

    build(spec.teacher, weights=path)


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
    expected, basis = _expected_hash(spec, _manifest_entry(name, cache))
    if not force and target.is_file() and expected is not None:
        if sha256_file(target) == expected:
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
                f"({_basis_text(basis)}), got {actual}; the download was discarded"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _record(name, cache, actual, basis if expected is not None else "first-use", f"download {source}")
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
    upstream = _upstream_name(spec)
    return WeightsError(
        f"{source}: could not be fetched ({reason}); without network access, get {upstream} "
        f"from {spec.url} elsewhere and run `pdd weights import {spec.name} /path/to/{upstream}`"
    )


def _upstream_name(spec: WeightSpec) -> str:
    """The file name the publisher uses (what a user who fetched it by hand will have)."""
    return urllib.parse.unquote(urllib.parse.urlsplit(spec.url).path.rsplit("/", 1)[-1])


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
    expected, basis = _expected_hash(spec, _manifest_entry(name, cache))
    if expected is None:
        basis = "first-use"
    elif actual != expected:
        if not allow_checksum_mismatch:
            raise WeightsError(
                f"{source}: checksum mismatch for '{name}': expected SHA-256 {expected} "
                f"({_basis_text(basis)}), got {actual}; pass --allow-checksum-mismatch "
                f"(allow_checksum_mismatch=True) to use this file anyway"
            )
        basis = "accepted-mismatch"
    target = cached_path(name, cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not (target.exists() and target.samefile(source)):
        _atomic_copy(source, target, actual)
    _record(name, cache, actual, basis, f"import {source.resolve()}")
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


def verify(name: str, cache: Path | None = None) -> VerifyResult:
    """Re-hash the cached file of ``name`` against the hash it must have."""
    spec = get_spec(name)
    target = cached_path(name, cache)
    if not target.is_file():
        raise WeightsError(f"{target}: '{name}' is not cached; {_fetch_hint(spec)}")
    expected, basis = _expected_hash(spec, _manifest_entry(name, cache), cached_copy=True)
    if expected is None:
        raise WeightsError(
            f"{target}: no hash is known for '{name}' (none published, none recorded); "
            f"re-import it with `pdd weights import {name} {target}` to record one"
        )
    actual = sha256_file(target)
    if actual != expected:
        raise WeightsError(
            f"{target}: checksum mismatch for '{name}': expected SHA-256 {expected} "
            f"({_basis_text(basis)}), got {actual}; the file was modified or is damaged, "
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
            f"{_fetch_hint(spec)}, or pass `--teachers random` for a demo without pretrained weights"
        )
    return target


def _fetch_hint(spec: WeightSpec) -> str:
    return (
        f"run `pdd weights download {spec.name}` (online) or "
        f"`pdd weights import {spec.name} /path/to/{_upstream_name(spec)}` (offline)"
    )


def list_weights(cache: Path | None = None) -> list[dict[str, Any]]:
    """One row per registry entry for ``pdd weights list`` (no hashing: it must be instant)."""
    manifest = _read_manifest(cache)
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


def _expected_hash(
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


def _basis_text(basis: Basis) -> str:
    return {
        "registry": "from the weights registry",
        "first-use": "recorded on first use",
        "accepted-mismatch": "recorded when a non-official file was imported",
    }[basis]


def _temp_path(target: Path, suffix: str) -> Path:
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(handle)
    return Path(name)


def _read_manifest(cache: Path | None) -> dict[str, dict[str, Any]]:
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


def _manifest_entry(name: str, cache: Path | None) -> dict[str, Any] | None:
    return _read_manifest(cache).get(name)


def _record(name: str, cache: Path | None, sha256: str, basis: Basis, origin: str) -> None:
    """Write the manifest entry of ``name`` (atomic replace, so readers never see half a file)."""
    files = _read_manifest(cache)
    files[name] = {
        "filename": get_spec(name).filename,
        "sha256": sha256,
        "basis": basis,
        "origin": origin,
        "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps({"version": 1, "files": files}, indent=2) + "\n"
    atomic_write_text(weights_dir(cache) / _MANIFEST, text)
