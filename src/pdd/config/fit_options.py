"""`pdd fit` settings from a ``--config`` file, the command line and ``--set``, checked by
``schema.FitSettings`` (options) and the preset's schema (model overrides).

Precedence, lowest first: the preset, the ``--config`` YAML file, the command line (options and
``--set``). A ``--config`` file holds any fit option under its long name (``image_size: 64``,
``seeds: [0, 1]``, ``class: liver``) and model overrides, either under ``model:`` or as top-level
keys of the preset (so a preset file is itself a valid config file). Relative paths in it are
relative to the file. A run folder's ``config.yaml`` (``options:`` + ``model:``) is accepted as is,
so ``pdd fit --config RUN/config.yaml --out NEW`` repeats a run.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pdd.config.messages import MODEL_KEYS, Subject, validate
from pdd.config.presets import list_presets, resolve_config
from pdd.config.schema import FitSettings
from pdd.config.yaml_io import parse_yaml, read_yaml_file
from pdd.errors import ConfigError

__all__ = [
    "COMMAND_LINE",
    "check_model_config",
    "check_preset",
    "deep_merge",
    "flag",
    "gather_fit_settings",
    "parse_overrides",
    "read_config_file",
]

_ALIASES = {"seed": "seeds", "split": "split_file", "class": "class_name"}
_FLAGS = {"class_name": "class", "checkpoint_every_n_steps": "checkpoint-every", "split_file": "split"}
_PATH_FIELDS = ("data", "out", "split_file")
_MODEL_SECTION = "model"
_OPTIONS_SECTION = "options"  # a run folder's config.yaml: {options, model, provenance}
_RECORDS = ("pdd_version", "global_batch_size")  # provenance of a saved run configuration
_NOT_COMPUTED = ("progress",)  # how a run is watched, not what it computes


def flag(field: str) -> str:
    """The command-line spelling of a FitSettings field: ``class_name`` -> ``--class``."""
    return "--" + _FLAGS.get(field, field).replace("_", "-")


COMMAND_LINE = Subject(name=flag, unknown=lambda key: f"unknown option {flag(key)}")


def _in_file(path: Path, section: str = "") -> Subject:
    return Subject(
        where=f"{path}: ",
        name=lambda key: section + key,
        unknown=lambda key: f"unknown option '{section}{key}'",
    )


def _option_name(key: Any) -> str:
    name = str(key).replace("-", "_")
    return _ALIASES.get(name, name)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping")
    return value


def read_config_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a --config YAML file into checked fit options and model overrides (checked later,
    against the preset)."""
    loaded = read_yaml_file(path)  # a duplicate key is an error naming the file and line
    if loaded is None:
        return {}, {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value at the top level")
    top: dict[str, Any] = {}
    saved: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for raw_key, value in loaded.items():
        key = _option_name(raw_key)
        if key == _MODEL_SECTION:
            deep_merge(overrides, _mapping(value, f"{path}: {raw_key}"))
        elif key == _OPTIONS_SECTION:
            for option, option_value in _mapping(value, f"{path}: {raw_key}").items():
                name = _option_name(option)
                if name == "model_overrides":
                    deep_merge(overrides, _mapping(option_value, f"{path}: {raw_key}.{option}"))
                elif name not in _NOT_COMPUTED:
                    saved[name] = option_value
        elif key in _RECORDS:
            continue
        elif key in FitSettings.model_fields:
            top[key] = value
        else:
            overrides[key] = value  # a preset key; checked against the preset later
    values = validate(FitSettings, saved, _in_file(path, f"{_OPTIONS_SECTION}.")).given()
    values.update(validate(FitSettings, top, _in_file(path)).given())
    for field in _PATH_FIELDS:
        if field in values and not values[field].is_absolute():
            values[field] = (path.parent / values[field]).resolve()
    return values, overrides


def gather_fit_settings(
    config_file: Path | None, command_line: Mapping[str, Any], set_items: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(options, model overrides)`` from the config file < the command line < ``--set``.

    ``command_line`` maps FitSettings fields to values (None: not given); a wrong value is
    named by its flag.
    """
    values: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    if config_file is not None:
        values, overrides = read_config_file(config_file)
    given = {key: value for key, value in command_line.items() if value is not None}
    values.update(validate(FitSettings, given, COMMAND_LINE).given())
    deep_merge(overrides, parse_overrides(set_items))
    if "teachers" in overrides:
        # The runner sets the model's teachers from the fit option; a `teachers` model override
        # (from --set or a model: section) must not be silently replaced by its default.
        teachers = validate(FitSettings, {"teachers": overrides.pop("teachers")}, MODEL_KEYS).teachers
        values.setdefault("teachers", teachers)
    return values, overrides


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=0.001", "students=shared"]`` -> nested dict; values are parsed as YAML."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. students=shared")
        value: Any = parse_yaml(text, f"--set {item!r}") if text else ""
        for part in reversed(key.split(".")):
            value = {part: value}
        deep_merge(result, value)
    return result


def deep_merge(target: dict[str, Any], update: Mapping[str, Any]) -> None:
    """Merge ``update`` into ``target`` in place; nested mappings merge, anything else replaces."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_merge(target[key], value)
        else:
            target[key] = value


def check_preset(name: str) -> None:
    """Unknown presets fail here with the list of known ones."""
    known = list_presets()
    if name not in known:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(known)}")


def check_model_config(values: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
    """Resolve the model configuration now, so a bad key or value fails before any training.

    The fit options that are also model settings (image size, teachers, epochs, batch size) are
    checked together with the overrides, as the runner will combine them.
    """
    combined = copy.deepcopy(dict(overrides))
    for key in ("image_size", "teachers"):
        if values.get(key) is not None:
            combined[key] = values[key]
    if not isinstance(combined.get("train", {}), dict):
        raise ConfigError(f"config key 'train': must be a mapping, got {combined['train']!r}")
    for key in ("epochs", "batch_size"):
        if values.get(key) is not None:
            combined.setdefault("train", {})[key] = values[key]
    resolve_config(values["preset"], combined)
