"""Strict YAML in and plain YAML out: the one reader of every YAML text a user gives us.

Presets, ``--config`` files, ``--set`` values, saved ``config.yaml`` and benchmark suites are all
read here, so a duplicate key or a syntax error is reported the same way everywhere.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pdd.errors import ConfigError

__all__ = ["config_to_yaml", "parse_yaml", "plain", "read_mapping", "read_yaml_file"]

MAX_BYTES = 16 * 2**20
"""Configs and suites are a few KB; a larger file is a mistake (or /dev/zero)."""
MAX_VALUES = 100_000
"""Far more than any config or suite holds. YAML aliases make a file of a few lines expand to
billions of values ("billion laughs") or to a cycle when the config is merged or validated."""


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
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no Python objects
    except RecursionError:  # the composer recurses once per nesting level
        raise ConfigError(f"{where}: not valid YAML (nested too deeply)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or type(exc).__name__
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{where}: not valid YAML ({line}{problem})") from exc
    _check_expanded_size(data, where)
    return data


def _check_expanded_size(data: Any, where: str) -> None:
    """Count values as the aliases expand them, stopping at ``MAX_VALUES`` (cycles included)."""
    pending, count = [data], 0
    while pending:
        item = pending.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(
                f"{where}: more than {MAX_VALUES} values once its aliases are expanded "
                "(an alias bomb or an alias that contains itself?)"
            )
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def read_yaml_file(path: str | os.PathLike[str], what: str = "config file") -> Any:
    """The shared reader of every YAML file users give us (presets, --config, suites)."""
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO or a device would block or never end
            raise ConfigError(f"{path}: cannot read {what} (not a regular file)")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(
                f"{path}: cannot read {what} ({size / 2**20:.1f} MiB; a YAML file of options "
                f"is at most {MAX_BYTES // 2**20} MiB)"
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: cannot read {what} ({reason})") from exc
    return parse_yaml(text, str(path))


def read_mapping(path: Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping at the top (a preset or a saved config)."""
    data = read_yaml_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def plain(value: Any) -> Any:
    """Tuples -> lists and keys -> str, recursively: the YAML/JSON-serialisable form."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def config_to_yaml(config: Mapping[str, Any]) -> str:
    """The config as YAML text (key order kept), for ``config.yaml`` in a run folder."""
    return yaml.safe_dump(plain(dict(config)), sort_keys=False)
