"""`pdd report`: (re)build report.html of a run folder."""

from __future__ import annotations

import argparse

from pdd.cli._common import user_path
from pdd.errors import DataError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add `report` to the `pdd` command table."""
    parser = sub.add_parser(
        "report",
        help="write report.html for a run folder",
        description="Build a self-contained report.html from a run folder's metrics, scores and "
        "heatmaps.",
    )
    parser.add_argument("run_dir", type=user_path, metavar="RUN_DIR", help="run folder of fit/test")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    if not args.run_dir.is_dir():
        raise DataError(f"{args.run_dir}: run folder does not exist")
    from pdd.report.html import write_report

    print(f"report: {write_report(args.run_dir)}")
    return 0
