"""Our model checkpoint (``model.ckpt``): everything needed to score new scans, and nothing unsafe.

A checkpoint holds the resolved config (so ``create_model(**config)`` rebuilds the architecture),
the teachers' identity (random teachers: seed and fingerprint; pretrained: file SHA-256), the
trainable weights only, the decision threshold and heatmap scale chosen on held-out normal images,
and how the model was trained. Frozen teachers are rebuilt and verified on load, never stored.

It is read with ``torch.load(weights_only=True)`` (no pickled code), written atomically, and every
way a user can hand us a bad file ends in a one-line ``CheckpointError`` naming it.
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pdd import __version__
from pdd.errors import CheckpointError, PDDError, WeightsError
from pdd.fileio import atomic_torch_save
from pdd.runs.checkpoint_check import check_stored_values, check_weights_fit
from pdd.pickle_refusal import refusal_reason

__all__ = ["FORMAT", "FORMAT_VERSION", "load", "save"]

FORMAT = "pdd-model"
FORMAT_VERSION = 1
_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _plain(value: Any, where: str) -> Any:
    """Meta values as types ``weights_only`` loading accepts (paths become strings)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (*_PLAIN_SCALARS, torch.Tensor)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"checkpoint meta {where}: {value} is not finite")
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalars
        return _plain(value.item(), where)
    raise TypeError(f"checkpoint meta {where}: cannot store a {type(value).__name__}")


def save(path: str | os.PathLike[str], model: nn.Module, **meta: Any) -> Path:
    """Write ``model`` (an ``AnomalyModel``) and ``meta`` to ``path`` atomically; returns the path.

    ``meta`` is free-form plain data; the runner stores ``threshold`` (float), ``map_stats``
    (``{"vmin", "vmax"}``) and ``provenance`` (how the model was trained).
    """
    config = dict(model.config)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pdd_version": __version__,
        "preset": config.get("preset"),
        "config": _plain(config, "config"),
        "teachers": _plain(model.teacher_identity(), "teachers"),
        "state_dict": {
            k: v.detach().cpu().clone() for k, v in model.trainable_state_dict().items()
        },
        "meta": _plain(meta, "meta"),
    }
    return atomic_torch_save(payload, path)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    with path.open("rb") as handle:  # torch.save writes a zip archive; anything else is not ours
        magic = handle.read(4)
    if magic and magic != b"PK\x03\x04":
        raise CheckpointError(f"{path}: not a PDD checkpoint (not a file written by torch.save)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: not a safe PDD checkpoint: it holds Python objects that safe loading refuses "
            f"({refusal_reason(exc)})"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"{path}: checkpoint is truncated or corrupted ({type(exc).__name__})"
        ) from exc
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"{path}: not a PDD checkpoint (holds a {type(payload).__name__})"
        )
    if payload.get("format") != FORMAT:
        if "pytorch-lightning_version" in payload:
            raise CheckpointError(
                f"{path}: this is a Lightning training-state file, not a model; use the run's model.ckpt"
            )
        raise CheckpointError(
            f"{path}: not a PDD model checkpoint (no '{FORMAT}' format marker)"
        )
    version = payload.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: checkpoint has no valid format version")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer pdd ({payload.get('pdd_version')}, checkpoint format "
            f"{version}); this pdd {__version__} reads format {FORMAT_VERSION}: upgrade pdd"
        )
    for key, kind in (
        ("config", dict),
        ("teachers", dict),
        ("state_dict", dict),
        ("meta", dict),
    ):
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(
                f"{path}: checkpoint is incomplete ('{key}' missing or malformed)"
            )
    return payload


def load(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from the checkpoint alone; returns ``(model in eval mode, meta)``.

    ``meta`` holds what ``save`` was given (``threshold``, ``map_stats``, ``provenance``) plus
    ``format_version``, ``pdd_version``, ``preset``, ``config`` and ``teachers``.
    Teachers are rebuilt (random: from their seed; pretrained: from the weight cache) and must match
    the stored identity; the weights must fit the stored config exactly.
    """
    from pdd import create_model

    path = Path(path)
    payload = _read(path)
    config = payload["config"]
    if payload.get("preset") != config.get("preset"):
        raise CheckpointError(
            f"{path}: stored preset {payload.get('preset')!r} disagrees with its config's "
            f"{config.get('preset')!r}"
        )
    check_stored_values(path, payload)  # forged values fail here, before anything is built
    check_weights_fit(path, config, payload["state_dict"])
    try:
        model = create_model(**config)
    except (CheckpointError, WeightsError):
        raise  # missing teacher weights: the message already names the file and the fix
    except PDDError as exc:
        raise CheckpointError(
            f"{path}: stored configuration cannot be built: {exc}"
        ) from exc
    try:
        model.check_teacher_identity(payload["teachers"])
        model.load_trainable_state_dict(payload["state_dict"])
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    model.eval()
    meta = dict(payload["meta"])
    for key in ("format_version", "pdd_version", "preset", "config", "teachers"):
        meta[key] = payload[key]
    return model, meta
