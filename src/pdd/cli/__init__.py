"""`pdd <command>`: the one command-line entry point.

This module only builds the command table and turns failures into one line and an exit status:
``PDDError`` -> ``error: <message>``, exit 1; usage errors -> one line, exit 2; Ctrl-C -> exit 130;
a long command stopped by SIGINT / SIGTERM (``pdd.cli.signals.Interrupted``) -> its message, exit 130 / 143;
anything else is a bug, reported in one line unless ``--debug`` asks for the traceback.
Command modules stay light (argparse only) so ``pdd --help`` does not wait for torch to import.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from pdd import __version__
from pdd.cli.signals import Interrupted
from pdd.errors import PDDError

__all__ = ["ArgumentParser", "main", "run"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit 2) that points at ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see '{self.prog} --help')\n")


def build_parser() -> ArgumentParser:
    """The full `pdd` parser; each command module adds its sub-commands with ``register``."""
    from pdd.cli import (
        benchmark,
        cache,
        calibrate,
        demo,
        export,
        fit,
        import_checkpoint,
        predict,
        presets,
        report,
        weights,
    )

    parser = ArgumentParser(
        prog="pdd",
        description="Unsupervised medical image anomaly detection (PDD and baselines).",
    )
    parser.add_argument("--version", action="version", version=f"pdd {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback when a command fails"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (
        demo, fit, predict, calibrate, export, import_checkpoint, report, presets, weights, benchmark,
        cache,
    ):
        module.register(sub)
    return parser


def run() -> int:
    """The ``pdd`` console script: ``main`` in a process that keeps freed memory for the next batch
    (``pdd.allocator``; ``PDD_KEEP_FREED_MEMORY=0`` turns that off). ``main`` alone, as tests and
    other programs call it, leaves the process's allocator as it is."""
    from pdd import allocator

    if allocator.wanted():
        allocator.keep_freed_memory()
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `pdd` command; returns the exit status (the console script exits with it)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line (before or after the command).
    debug = "--debug" in args_list
    args_list = [arg for arg in args_list if arg != "--debug"]
    try:
        parser = build_parser()
        args = parser.parse_args(args_list)
        status = args.handler(args)
        return int(status or 0)
    except SystemExit as exc:  # argparse --help / usage errors, sys.exit in handlers
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Interrupted as exc:
        print(f"error: {_one_line(exc.message)}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    except PDDError as exc:
        if debug:
            raise
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: one line unless --debug
        if debug:
            raise
        print(
            f"error: internal error: {type(exc).__name__}: {_one_line(str(exc))} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def _one_line(text: str) -> str:
    """Collapse a message to one line so the contract 'one line per failure' holds."""
    return " ".join(text.split()) or "(no message)"
