"""`pdd presets`: the named model configurations, one line each."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add `presets` to the `pdd` command table."""
    parser = sub.add_parser("presets", help="list the model presets")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from pdd.config import list_presets, load_preset

    names = list_presets()
    width = max(len(name) for name in names)
    for name in names:
        description = " ".join(str(load_preset(name).get("description", "")).split())
        print(f"{name.ljust(width)}  {description}")
    return 0
