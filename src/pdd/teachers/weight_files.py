"""Reading a weights file safely (never running code from it) and hashing it."""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pdd.errors import WeightsError

__all__ = ["read_state_dict", "sha256_file"]

_CHUNK = 1 << 20


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
