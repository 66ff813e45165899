"""The strict YAML reader refuses what a hostile file could hide: an alias bomb ("billion
laughs") or a self-referencing alias, which are cheap to parse but expand without end when the
config is merged, copied or validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdd.config import parse_yaml, read_yaml_file
from pdd.errors import ConfigError

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)
)  # 10**9 strings once expanded


def test_an_alias_bomb_is_refused_in_one_line(tmp_path: Path) -> None:
    """Kills: removing the expanded-size count in ``yaml_io.parse_yaml`` (the fit path then
    spends hours expanding the aliases)."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    with pytest.raises(ConfigError, match=rf"^{path}: more than 100000 values once its aliases are expanded"):
        read_yaml_file(path)
    with pytest.raises(ConfigError, match="once its aliases are expanded"):
        parse_yaml("&a [*a]", "--set 'x=&a [*a]'")


def test_ordinary_aliases_and_merge_keys_still_work() -> None:
    text = "base: &base {lr: 0.001, epochs: 3}\ntrain:\n  <<: *base\n  epochs: 5\n"
    assert parse_yaml(text, "x")["train"] == {"lr": 0.001, "epochs": 5}


def test_nesting_too_deep_for_the_parser_is_a_config_error() -> None:
    """PyYAML's composer recurses once per level: 500 nested lists were a RecursionError."""
    with pytest.raises(ConfigError, match=r"^--set 'x=\[\[\[': not valid YAML \(nested too deeply\)$"):
        parse_yaml("[" * 500 + "]" * 500, "--set 'x=[[['")


def test_only_regular_files_of_sane_size_are_read(tmp_path: Path) -> None:
    """A FIFO or /dev/zero given as a YAML file would block or fill memory."""
    import os

    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=rf"^{fifo}: cannot read config file \(not a regular file\)$"):
        read_yaml_file(fifo)
    big = tmp_path / "big.yaml"
    big.write_text("x: " + "a" * (17 * 2**20))
    with pytest.raises(ConfigError, match=r"big\.yaml: cannot read suite file \(17\.0 MiB; a YAML file"):
        read_yaml_file(big, "suite file")
