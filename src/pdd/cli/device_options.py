"""The options that say where a model runs, shared by `pdd fit`, `pdd test` and `pdd predict`:
Lightning's own names and values, so multi-GPU and multi-node runs need no new words."""

from __future__ import annotations

import argparse

from pdd.cli._common import positive_int
from pdd.config.schema import ACCELERATORS, PRECISIONS, STRATEGIES
from pdd.errors import ConfigError

__all__ = ["ACCELERATORS", "PRECISIONS", "STRATEGIES", "add_device_options", "parse_devices"]


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """``--accelerator --devices --num-nodes --strategy --precision`` (all default to None, so a
    command can tell an option given from one left at its default)."""
    parser.add_argument("--accelerator", choices=ACCELERATORS, help="default: auto")
    parser.add_argument("--devices", help="devices per node: a number or auto (default: 1)")
    parser.add_argument("--num-nodes", type=positive_int, help="machines for DDP (default: 1)")
    parser.add_argument("--strategy", choices=STRATEGIES, help="default: auto")
    parser.add_argument("--precision", choices=PRECISIONS, help="default: 32-true")


def parse_devices(text: str | None) -> int | str | None:
    """``--devices``: a number >= 1 or ``auto``; None when not given."""
    if text is None or text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"--devices: expected a number or auto, got {text!r}") from None
    if value < 1:
        raise ConfigError(f"--devices: expected a number >= 1, got {value}")
    return value
