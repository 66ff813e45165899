"""Weights of the authors' released PDD decoder, mapped onto our ``pdd-reference`` model.

The released code (GitHub ``OxygenLu/PDD``, ``models/mamba_decoder.py``) keeps the whole trainable
part in one ``pdd_decoder()`` module. Its training script saves ``{"decoder": state_dict,
"optimizer": ..., "scheduler": ..., "epoch": ...}``. Our ``pdd-reference`` preset computes the same
thing (bit-equal features with the same weights, pinned by the golden test in
``tests/models/test_models_released.py``) under other module names; this module renames the keys so
that such a checkpoint can be evaluated, exported and used for prediction with ``pdd``.

Loading is strict: every released key must map onto one of ours with the same shape, and every one
of our trainable tensors must be covered. Files are read with ``torch.load(weights_only=True)``, so a
file that would run code when unpickled is refused, as for our own checkpoints.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pdd.errors import CheckpointError
from pdd.models.base import AnomalyModel
from pdd.pickle_refusal import refusal_reason

__all__ = [
    "PRESET",
    "RELEASED_COMMIT",
    "RELEASED_REPO",
    "load_released_state_dict",
    "read_released",
    "released_key_map",
]

RELEASED_REPO = "OxygenLu/PDD"
RELEASED_COMMIT = "573feed091ef67e4482e45dda6c8365c63505937"
PRESET = "pdd-reference"

# A conv/BN inside an adapter (EfficientChannelAdapter) or a de-bottleneck block -> our Sequential.
_BODY = {"conv1": "body.0", "bn1": "body.1", "conv2": "body.3", "bn2": "body.4",
         "conv3": "body.6", "bn3": "body.7"}  # fmt: skip
_ADAPTER_PART = {**_BODY, "residual_proj": "project"}
_BLOCK_PART = {**_BODY, "upsample.0": "shortcut.0", "upsample.1": "shortcut.1"}
# Released adapters r1..r3 are InA's A1..A3, r4 is MMU's A4; layer1..3 decode levels 3, 2, 1.
_ADAPTER = {1: "ina.0", 2: "ina.1", 3: "ina.2", 4: "mmu"}
_LAYER = {1: "level3", 2: "level2", 3: "level1"}
_PRIOR = {"mlp.shared_transform.0": "prior.shared.0", "mlp.shared_transform.1": "prior.shared.1",
          "mlp.branch1": "prior.heads.0", "mlp.branch2": "prior.heads.1"}  # fmt: skip
# The released training file wraps the decoder's state dict; DDP may prefix its keys.
_WRAPPER = "decoder"
_DDP_PREFIX = "module."


def released_key_map(model: AnomalyModel) -> dict[str, str]:
    """Released decoder key -> our key, for every trainable tensor of ``model``.

    ``model`` must have the released architecture (the ``pdd-reference`` preset: both teachers,
    InA, MMU, MPA and one decoder shared by the two students); else ``CheckpointError``.
    """
    modules = {ours: released for released, ours in _PRIOR.items()}  # ours -> released
    for level, ours in _ADAPTER.items():
        for part, our_part in _ADAPTER_PART.items():
            modules[f"{ours}.{our_part}"] = f"up_dim_v_r{level}.{part}"
    for layer, level in _LAYER.items():
        for block in range(model.config["decoder_blocks"][layer - 1]):
            for part, our_part in _BLOCK_PART.items():
                modules[f"students.0.{level}.{block}.{our_part}"] = f"layer{layer}.{block}.{part}"
    mapping: dict[str, str] = {}
    for key in model.trainable_state_dict():
        module, _, tensor = key.rpartition(".")
        if module not in modules:
            raise CheckpointError(
                f"the {model.config['preset']} model has no released counterpart for {key}; "
                f"released checkpoints load into the {PRESET} preset"
            )
        mapping[f"{modules[module]}.{tensor}"] = key
    return mapping


def read_released(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The decoder state dict in a released training file (or a bare state dict), never unpickling
    code: ``torch.load(weights_only=True)``. Every problem is a one-line ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: released checkpoint not found")
    try:
        payload: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: not a safe checkpoint (refused by weights-only loading: {refusal_reason(exc)})"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"{path}: checkpoint is truncated or corrupted ({type(exc).__name__})"
        ) from exc
    if isinstance(payload, Mapping) and isinstance(payload.get(_WRAPPER), Mapping):
        payload = payload[_WRAPPER]
    if not isinstance(payload, Mapping) or not payload:
        raise CheckpointError(
            f"{path}: not a released PDD checkpoint (expected a state dict or a training file "
            f"with a '{_WRAPPER}' entry)"
        )
    state: dict[str, Tensor] = {}
    for key, value in payload.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(
                f"{path}: not a state dict: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        state[key.removeprefix(_DDP_PREFIX)] = value
    return state


def load_released_state_dict(
    model: AnomalyModel, released: Mapping[str, Tensor], source: str | os.PathLike[str]
) -> None:
    """Load a released decoder state dict into ``model`` (a ``pdd-reference`` model), strictly.

    A key with no counterpart, a tensor the released decoder has and the file lacks, or a shape
    that differs is a ``CheckpointError`` naming ``source`` and the first offending (released) keys.
    """
    mapping = released_key_map(model)
    own = model.trainable_state_dict()
    unexpected = [key for key in released if key not in mapping]
    missing = [key for key in mapping if key not in released]
    mismatched = [
        f"{key} {list(value.shape)} (expected {list(own[mapping[key]].shape)})"
        for key, value in released.items()
        if key in mapping and value.shape != own[mapping[key]].shape
    ]
    for problem, keys in (
        ("unexpected", unexpected),
        ("missing", missing),
        ("wrong shape", mismatched),
    ):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            raise CheckpointError(
                f"{source}: not a released PDD decoder: {problem} keys "
                f"{', '.join(keys[:3])}{more}"
            )
    model.load_trainable_state_dict(
        {ours: released[key].to(own[ours].dtype) for key, ours in mapping.items()}
    )
