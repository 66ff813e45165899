"""pydantic's ``ValidationError`` -> the project's one-line ``ConfigError`` that names the key.

Written once for every schema: model configs name ``config key 'train.lr'``, fit options name the
file and option (``fit.yaml: epochs``) or the flag (``--holdout-fraction``). The first error wins,
as a user fixes one value at a time and a list of ten would hide the one that matters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from pdd.errors import ConfigError

__all__ = ["MODEL_KEYS", "Subject", "config_error", "key_path", "rule", "validate", "value_problem"]

NUMBER_HINT = (
    "must be a number (YAML 1.1 reads an exponent only with a dot and a sign: write 2.0e-3 or "
    "1.0e+3, not 2e-3)"
)
_RULE = "pdd_rule"  # a check over several keys; ctx names the key
_VALUE = "pdd_value"  # a check of one value with its own wording
_PROBLEMS: dict[str, str] = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": NUMBER_HINT,
    "float_parsing": NUMBER_HINT,
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "string_too_short": "must not be empty",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "too_short": "must have at least {min_length} item(s)",
    "too_long": "must have at most {max_length} item(s)",
    "multiple_of": "must be a multiple of {multiple_of}",
}
Model = TypeVar("Model", bound=BaseModel)


@dataclass(frozen=True)
class Subject:
    """How a message names what is wrong: a prefix (``"fit.yaml: "``), a key and an unknown key."""

    where: str = ""
    name: Callable[[str], str] = lambda key: f"config key '{key}'"
    unknown: Callable[[str], str] = lambda key: f"unknown config key '{key}'"


MODEL_KEYS = Subject()


def key_path(loc: Sequence[int | str]) -> str:
    """``("datasets", 1, "format")`` -> ``datasets[1].format``. Dict-key markers and union tags
    (``<...>``, see ``schema``) are pydantic's bookkeeping, not keys a user wrote."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part != "[key]" and not (part.startswith("<") and part.endswith(">")):
            text += f".{part}" if text else part
    return text


def rule(key: str, problem: str) -> PydanticCustomError:
    """The error a model validator raises when a combination of keys is wrong; names ``key``."""
    return PydanticCustomError(_RULE, "{problem}", {"key": key, "problem": problem})


def value_problem(problem: str, *value: Any) -> PydanticCustomError:
    """The error a field validator raises for a value in its own words; the value (or the one
    item of it that is wrong, when given) is appended."""
    return PydanticCustomError(_VALUE, "{problem}", {"problem": problem, "value": value})


def _known(model: type[BaseModel], loc: Sequence[int | str]) -> list[str] | None:
    """The keys the model accepts at ``loc`` (for "unknown key" messages), when it can tell."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
        for candidate in getattr(current, "__args__", ()):  # Optional[Section]
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                current = candidate
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def config_error(exc: ValidationError, model: type[BaseModel], subject: Subject = MODEL_KEYS) -> ConfigError:
    """The first problem in ``exc`` as one line: ``<where><key>: <problem>, got <value>``."""
    error = exc.errors(include_url=False)[0]
    kind, loc, ctx = error["type"], error["loc"], error.get("ctx") or {}
    if kind == _RULE:
        path = key_path((*loc, ctx["key"]))
        return ConfigError(f"{subject.where}{subject.name(path)}: {ctx['problem']}")
    path = key_path(loc)
    if kind == "extra_forbidden":
        parent = key_path(loc[:-1])
        known = _known(model, loc[:-1])
        listed = "" if known is None else " (known: " + ", ".join(
            f"{parent}.{key}" if parent else key for key in known
        ) + ")"
        return ConfigError(f"{subject.where}{subject.unknown(path)}{listed}")
    if kind == "missing":
        return ConfigError(f"{subject.where}{subject.name(path)} is missing")
    value = error["input"]
    if kind == _VALUE:
        problem = ctx["problem"]
        value = ctx["value"][0] if ctx["value"] else value
    elif kind == "literal_error":  # pydantic writes "'a', 'b' or 'c'"
        problem = "must be one of " + ctx["expected"].replace(" or ", ", ").replace("'", "")
    elif kind in _PROBLEMS:
        problem = _PROBLEMS[kind].format(**ctx)
    else:
        problem = error["msg"].removeprefix("Value error, ")
    return ConfigError(f"{subject.where}{subject.name(path)}: {problem}, got {value!r}")


def validate(model: type[Model], data: Mapping[str, Any], subject: Subject = MODEL_KEYS) -> Model:
    """``model`` checked from plain data; any problem is one ``ConfigError`` (see ``config_error``)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, model, subject) from exc
