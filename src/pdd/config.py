"""Named presets (YAML files shipped in ``pdd/configs``), overrides and validation.

A preset file holds a complete configuration, or ``extends: <preset>`` plus the keys it changes.
``resolve_config(preset, overrides)`` merges overrides into the preset (nested mappings merge key by
key; ``"train.lr"``-style dotted keys work too), checks every key against the family's schema
(an unknown key is a ``ConfigError`` that names it) and every value, and returns a plain,
YAML-serialisable dict that includes ``preset``, so ``create_model(**config)`` rebuilds the model.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pdd.errors import ConfigError

__all__ = [
    "MAX_IMAGE_SIZE",
    "TEACHER_NAMES",
    "config_to_yaml",
    "list_presets",
    "load_config_file",
    "load_preset",
    "parse_yaml",
    "read_yaml_file",
    "resolve_config",
    "validate_config",
]

TEACHER_NAMES = ("wide_resnet50_2", "vmamba_tiny_v0")
_MAX_EXTENDS = 8
MAX_IMAGE_SIZE = 1024
"""Largest accepted input size S. Activations grow with S squared: at S = 1024 one image already
needs several GB in the teachers (16x the paper's 256); 8192 would need hundreds. Checked before
any model is built, so a typo fails in a second instead of exhausting memory."""

Check = Callable[[str, Any], Any]


# --------------------------------------------------------------------------- value checks
def _fail(key: str, problem: str, value: Any) -> ConfigError:
    return ConfigError(f"config key '{key}': {problem}, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int(minimum: int | None = None) -> Check:
    def check(key: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(key, "must be an integer", value)
        if minimum is not None and value < minimum:
            raise _fail(key, f"must be >= {minimum}", value)
        return int(value)

    return check


def _float(
    low: float | None = None, high: float | None = None, *, open_low: bool = False
) -> Check:
    def check(key: str, value: Any) -> float:
        if not _is_number(value):
            raise _fail(
                key, "must be a number (write exponents with a dot, e.g. 2.0e-3)", value
            )
        value = float(value)
        if not math.isfinite(value):
            raise _fail(key, "must be a finite number", value)
        if low is not None and (value <= low if open_low else value < low):
            raise _fail(key, f"must be {'>' if open_low else '>='} {low}", value)
        if high is not None and value > high:
            raise _fail(key, f"must be <= {high}", value)
        return value

    return check


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, "must be true or false", value)
    return value


def _choice(*options: Any) -> Check:
    def check(key: str, value: Any) -> Any:
        if value not in options:
            raise _fail(key, f"must be one of {', '.join(map(str, options))}", value)
        return value

    return check


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(key, "must be a string", value)
    return value


def _image_size(key: str, value: Any) -> int:
    value = _int(32)(key, value)
    if value > MAX_IMAGE_SIZE:
        raise _fail(
            key,
            f"must be at most {MAX_IMAGE_SIZE} (activation memory grows with the size squared)",
            value,
        )
    if value % 32:
        raise _fail(
            key, "must be a multiple of 32 (the teachers downsample by 32)", value
        )
    return value


def _int_list(length: int, minimum: int) -> Check:
    def check(key: str, value: Any) -> list[int]:
        if not isinstance(value, (list, tuple)) or len(value) != length:
            raise _fail(key, f"must be a list of {length} integers", value)
        return [_int(minimum)(f"{key}[{i}]", item) for i, item in enumerate(value)]

    return check


def _betas(key: str, value: Any) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _fail(key, "must be a list of two numbers in [0, 1)", value)
    betas = [_float(0.0, 1.0)(f"{key}[{i}]", beta) for i, beta in enumerate(value)]
    if max(betas) >= 1.0:
        raise _fail(key, "must be a list of two numbers in [0, 1)", value)
    return betas


def _teacher_weights(key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise _fail(key, "must map teacher names to weight file paths", value)
    result = {}
    for name, path in value.items():
        _choice(*TEACHER_NAMES)(f"{key}.{name}", name)
        if path is None:
            continue
        if not isinstance(path, (str, os.PathLike)):
            raise _fail(f"{key}.{name}", "must be a file path", path)
        result[name] = os.fspath(path)
    return result


def _teacher_options(key: str, value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, Mapping):
        raise _fail(key, "must map teacher names to architecture options", value)
    result = {}
    for name, options in value.items():
        _choice(*TEACHER_NAMES)(f"{key}.{name}", name)
        if not isinstance(options, Mapping):
            raise _fail(
                f"{key}.{name}", "must be a mapping of architecture options", options
            )
        for option, option_value in options.items():
            check = _TEACHER_OPTION_TYPES.get(name, {}).get(str(option))
            if check is not None:
                check(f"{key}.{name}.{option}", option_value)
        if options:
            result[name] = _plain(dict(options))
    return result


def _int_or_int_list(key: str, value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_int(1)(f"{key}[{i}]", item) for i, item in enumerate(value)]
    return _int(1)(key, value)


def _auto_or_int(key: str, value: Any) -> Any:
    return value if value == "auto" else _int(1)(key, value)


def _count_list(key: str, value: Any) -> list[int]:
    if not isinstance(value, (list, tuple)) or not value:
        raise _fail(key, "must be a non-empty list of integers", value)
    return [_int(0)(f"{key}[{i}]", item) for i, item in enumerate(value)]


# Value types of the numeric architecture options (the teacher checks names and fixed values);
# a wrong type fails here with the key's full name instead of deep inside the model constructor.
_TEACHER_OPTION_TYPES: dict[str, dict[str, Check]] = {
    "vmamba_tiny_v0": {
        "depths": _count_list,
        "dims": _int_or_int_list,
        "patch_size": _int(1),
        "in_chans": _int(1),
        "ssm_d_state": _int(1),
        "ssm_ratio": _float(0.0, open_low=True),
        "ssm_dt_rank": _auto_or_int,
        "ssm_conv": _int(1),
        "ssm_conv_bias": _bool,
        "mlp_ratio": _float(0.0),
        "patch_norm": _bool,
    },
}


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so the config stays YAML/JSON-serialisable."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- schemas
_TRAIN: dict[str, Any] = {
    "optimizer": _choice("adam"),
    "lr": _float(0.0, open_low=True),
    "betas": _betas,
    "weight_decay": _float(0.0),
    "epochs": _int(1),
    "batch_size": _int(1),
    "accumulate_grad_batches": _int(1),
    "scheduler": {
        "name": _choice("cosine", "none"),
        "t_max": _int(1),
        "eta_min_ratio": _float(0.0, 1.0),
    },
}

_COMMON: dict[str, Any] = {
    "preset": _text,
    "family": _choice("pdd", "rd4ad"),
    "description": _text,
    "image_size": _image_size,
    "teachers": _choice("pretrained", "random"),
    "teacher_weights": _teacher_weights,
    "teacher_seed": _int(0),
    "teacher_options": _teacher_options,
    "sigma": _float(0.0, open_low=True),
    "decoder_blocks": _int_list(3, 1),
    "train": _TRAIN,
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "pdd": {
        **_COMMON,
        "dual_teacher": _bool,
        "ina": _bool,
        "mpa": _bool,
        "num_students": _choice(1, 2),
        "students": _choice("separate", "shared"),
        "cos_term": _choice("one_minus", "plus"),
        "diversity": _bool,
        "loss": {
            "a": _float(0.0),
            "b": _float(0.0),
            "w": _float(0.0),
            "tau_low": _float(-1.0, 1.0),
            "tau_high": _float(-1.0, 1.0),
        },
    },
    "rd4ad": {**_COMMON, "bottleneck_blocks": _int(1)},
}
# Keys a config may leave out (the cosine schedule's parameters when there is no scheduler).
# `train.accumulate_grad_batches` (default 1) is optional so that configs saved before it existed load.
_OPTIONAL = frozenset(
    {"train.scheduler.t_max", "train.scheduler.eta_min_ratio", "train.accumulate_grad_batches"}
)


def _check_section(
    schema: Mapping[str, Any], values: Mapping[str, Any], prefix: str
) -> dict[str, Any]:
    unknown = [key for key in values if key not in schema]
    if unknown:
        known = ", ".join(prefix + key for key in schema)
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (known: {known})")
    result: dict[str, Any] = {}
    for key, check in schema.items():
        path = prefix + key
        if key not in values:
            if path in _OPTIONAL:
                continue
            raise ConfigError(f"config key '{path}' is missing")
        value = values[key]
        if isinstance(check, Mapping):
            if not isinstance(value, Mapping):
                raise _fail(path, "must be a mapping", value)
            result[key] = _check_section(check, value, path + ".")
        else:
            result[key] = check(path, value)
    return result


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A checked, normalised copy of a complete config; ``ConfigError`` names the first bad key."""
    family = config.get("family")
    if family not in SCHEMAS:
        raise ConfigError(
            f"config key 'family': must be one of {', '.join(SCHEMAS)}, got {family!r}"
        )
    result = _check_section(SCHEMAS[family], config, "")
    _check_scheduler(result["train"]["scheduler"])
    if family == "pdd":
        _check_pdd(result)
    return result


def _check_scheduler(scheduler: dict[str, Any]) -> None:
    if scheduler["name"] == "cosine":
        for key in ("t_max", "eta_min_ratio"):
            if scheduler.get(key) is None:
                raise ConfigError(
                    f"config key 'train.scheduler.{key}' is required by the cosine scheduler"
                )
    else:
        # A constant rate has no schedule parameters; drop any left over from a merged preset.
        scheduler.pop("t_max", None)
        scheduler.pop("eta_min_ratio", None)


def _check_pdd(config: dict[str, Any]) -> None:
    """Combinations that would silently not do what they say."""
    if config["ina"] and not config["dual_teacher"]:
        raise ConfigError(
            "config key 'ina': InA adapts VMamba features, so it needs dual_teacher: true"
        )
    if config["diversity"] and config["num_students"] != 2:
        raise ConfigError(
            "config key 'diversity': the diversity loss needs num_students: 2"
        )
    if (
        config["num_students"] == 2
        and config["students"] == "shared"
        and not config["mpa"]
    ):
        raise ConfigError(
            "config key 'students': shared students without the MPA prior compute the same "
            "features twice; use num_students: 1"
        )


# --------------------------------------------------------------------------- presets
def _preset_dir() -> Path:
    return Path(str(resources.files("pdd") / "configs"))


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(path.stem for path in _preset_dir().glob("*.yaml"))


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error.

    Plain PyYAML keeps the last value without a word, so a config file that sets ``lr`` twice
    would silently run with whichever came last.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first_line.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            line = key_node.start_mark.line + 1
            if earlier is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {earlier})",
                    key_node.start_mark,
                )
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML a user wrote; any problem (a duplicate key too) is one ``ConfigError`` naming
    ``where`` and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or type(exc).__name__
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{where}: not valid YAML ({line}{problem})") from exc


def read_yaml_file(path: str | os.PathLike[str], what: str = "config file") -> Any:
    """The shared reader of every YAML file users give us (presets, --config, suites)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: cannot read {what} ({reason})") from exc
    return parse_yaml(text, str(path))


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml_file(path)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a config file must hold a mapping, got {type(data).__name__}"
        )
    return data


def load_preset(name: str) -> dict[str, Any]:
    """The preset's complete config (``extends`` chains resolved), not yet validated."""
    chain: list[dict[str, Any]] = []
    current: str | None = name
    while current is not None:
        path = _preset_dir() / f"{current}.yaml"
        if not path.is_file():
            known = ", ".join(list_presets())
            raise ConfigError(f"unknown preset '{current}' (known: {known})")
        data = _read_yaml(path)
        chain.append(data)
        current = data.pop("extends", None)
        if len(chain) > _MAX_EXTENDS:
            raise ConfigError(
                f"{path}: 'extends' chain is longer than {_MAX_EXTENDS} (a cycle?)"
            )
    config: dict[str, Any] = {}
    for layer in reversed(chain):
        config = _merge(config, layer)
    config["preset"] = name
    return config


def _merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Nested merge: mappings merge key by key, anything else replaces."""
    result = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _merge(result[key], value)
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
                raise ConfigError(
                    f"config key '{key}': conflicts with another override"
                )
        existing = node.get(parts[-1])
        if isinstance(value, Mapping) and isinstance(existing, Mapping):
            value = _merge(existing, value)
        node[parts[-1]] = value
    return nested


def resolve_config(
    preset: str, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Preset + overrides -> a validated, complete config dict (the one models and checkpoints keep)."""
    config = load_preset(preset)
    family = config.get("family")
    overrides = _undot(overrides or {})
    if "family" in overrides and overrides["family"] != family:
        raise ConfigError(
            f"config key 'family': preset '{preset}' is a {family} model, got {overrides['family']!r}"
        )
    if "preset" in overrides and overrides["preset"] != preset:
        raise ConfigError(
            f"config key 'preset': is '{preset}', got {overrides['preset']!r}"
        )
    return validate_config(_plain(_merge(config, overrides)))


def config_to_yaml(config: Mapping[str, Any]) -> str:
    """The config as YAML text (key order kept), for ``config.yaml`` in a run folder."""
    return yaml.safe_dump(_plain(dict(config)), sort_keys=False)


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A resolved config written by ``config_to_yaml``, re-resolved against its preset."""
    path = Path(path)
    data = _read_yaml(path)
    preset = data.pop("preset", None)
    if not isinstance(preset, str):
        raise ConfigError(f"{path}: config has no 'preset' name")
    try:
        return resolve_config(preset, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
