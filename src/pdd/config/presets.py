"""Named presets (YAML files shipped in ``pdd/configs``), overrides and the resolved model config.

A preset file holds a complete configuration, or ``extends: <preset>`` plus the keys it changes.
``resolve_config(preset, overrides)`` merges overrides into the preset (nested mappings merge key by
key; ``"train.lr"``-style dotted keys work too), checks the result against the family's schema
(``schema.PDDConfig`` / ``RD4ADConfig``) and returns a plain, YAML-serialisable dict that includes
``preset``, so ``create_model(**config)`` rebuilds the model.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from pdd.config.messages import validate
from pdd.config.schema import MODEL_SCHEMAS
from pdd.config.yaml_io import plain, read_mapping
from pdd.errors import ConfigError

__all__ = [
    "list_presets",
    "load_config_file",
    "load_preset",
    "merge",
    "resolve_config",
    "validate_config",
]

_MAX_EXTENDS = 8


def _preset_dir() -> Path:
    return Path(str(resources.files("pdd") / "configs"))


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(path.stem for path in _preset_dir().glob("*.yaml"))


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A checked, normalised copy of a complete config; ``ConfigError`` names the first bad key."""
    family = config.get("family")
    if family not in MODEL_SCHEMAS:
        raise ConfigError(
            f"config key 'family': must be one of {', '.join(MODEL_SCHEMAS)}, got {family!r}"
        )
    checked = validate(MODEL_SCHEMAS[family], plain(config))
    return checked.model_dump(exclude_none=True, exclude_unset=True)


def load_preset(name: str) -> dict[str, Any]:
    """The preset's complete config (``extends`` chains resolved), not yet validated."""
    chain: list[dict[str, Any]] = []
    current: str | None = name
    while current is not None:
        path = _preset_dir() / f"{current}.yaml"
        if not path.is_file():
            known = ", ".join(list_presets())
            raise ConfigError(f"unknown preset '{current}' (known: {known})")
        data = read_mapping(path)
        chain.append(data)
        current = data.pop("extends", None)
        if len(chain) > _MAX_EXTENDS:
            raise ConfigError(f"{path}: 'extends' chain is longer than {_MAX_EXTENDS} (a cycle?)")
    config: dict[str, Any] = {}
    for layer in reversed(chain):
        config = merge(config, layer)
    config["preset"] = name
    return config


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Nested merge: mappings merge key by key, anything else replaces; inputs are not changed."""
    result = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _undot(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 1e-3}`` -> ``{"train": {"lr": 1e-3}}``."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{key}': conflicts with another override")
        existing = node.get(parts[-1])
        if isinstance(value, Mapping) and isinstance(existing, Mapping):
            value = merge(existing, value)
        node[parts[-1]] = value
    return nested


def resolve_config(preset: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Preset + overrides -> a validated, complete config dict (the one models and checkpoints keep)."""
    config = load_preset(preset)
    family = config.get("family")
    overrides = _undot(overrides or {})
    if "family" in overrides and overrides["family"] != family:
        raise ConfigError(
            f"config key 'family': preset '{preset}' is a {family} model, got {overrides['family']!r}"
        )
    if "preset" in overrides and overrides["preset"] != preset:
        raise ConfigError(f"config key 'preset': is '{preset}', got {overrides['preset']!r}")
    return validate_config(merge(config, overrides))


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A resolved config written by ``config_to_yaml``, re-resolved against its preset."""
    path = Path(path)
    data = read_mapping(path)
    preset = data.pop("preset", None)
    if not isinstance(preset, str):
        raise ConfigError(f"{path}: config has no 'preset' name")
    try:
        return resolve_config(preset, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
