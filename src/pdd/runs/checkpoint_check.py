"""Every value a ``model.ckpt`` carries is checked before the real model is built.

A forged or damaged checkpoint must end in a one-line ``CheckpointError`` naming the file, never in
an internal error or in allocating a model of absurd size. The stored values go through the same
schema as a config file (``pdd.config.schema.StoredCheckpoint``); the stored config is resolved
by building the model's skeleton on the ``meta`` device (shapes only, no memory, no weight files
read; ``pdd.models.size`` also counts its parameters against the budget), and the stored weights must have exactly the keys, shapes and dtypes of that skeleton.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pdd.config.messages import Subject, validate
from pdd.config.schema import StoredCheckpoint
from pdd.errors import CheckpointError, ConfigError, PDDError
from pdd.models.size import check_parameter_budget

__all__ = ["check_stored_values", "check_weights_fit"]


def check_stored_values(path: Path, payload: Mapping[str, Any]) -> None:
    """Types and bounds of the stored config keys, teacher identities and meta (threshold,
    colour scale, provenance, calibration ...), and that every weight is a tensor."""
    subject = Subject(where=f"{path}: ", name=lambda key: f"stored {key}")
    try:
        validate(StoredCheckpoint, payload, subject)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    for key, value in payload["state_dict"].items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: stored weight {key}: not a tensor ({type(value).__name__})"
            )


def check_weights_fit(path: Path, config: Mapping[str, Any], state_dict: Mapping[str, Any]) -> None:
    """Build the stored config on the meta device (its schema checks every key and bound) and
    compare the stored weights with the skeleton's, key by key."""
    overrides = {key: value for key, value in config.items() if key != "preset"}
    try:
        skeleton = check_parameter_budget(str(config.get("preset")), overrides)
    except PDDError as exc:
        raise CheckpointError(f"{path}: stored configuration cannot be built: {exc}") from exc
    expected = skeleton.trainable_state_dict()
    problems = {
        "missing": [key for key in expected if key not in state_dict],
        "unexpected": [key for key in state_dict if key not in expected],
        "wrong shape": [
            key for key in expected
            if key in state_dict and tuple(state_dict[key].shape) != tuple(expected[key].shape)
        ],
        "wrong dtype": [
            key for key in expected
            if key in state_dict and state_dict[key].dtype != expected[key].dtype
        ],
    }  # fmt: skip
    for problem, keys in problems.items():
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            raise CheckpointError(
                f"{path}: trainable weights do not fit this {config.get('preset')} model: "
                f"{problem} keys {', '.join(keys[:5])}{more}"
            )
