"""`pdd cache list|clear`: what pdd keeps in its cache folder besides the weights, and emptying it.

Two kinds: ``features`` (the teachers' features of training images, ``pdd fit --feature-cache``)
and ``kernels`` (the compiled fused CPU scan kernel, one folder per build environment). The weights
have their own command (``pdd weights``). Parsing stays free of torch: handlers import when they run.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pdd.cli._common import check_cache_dir

__all__ = ["register"]

KINDS = ("features", "kernels")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``cache`` command group to the main parser's sub-commands."""
    parser = subparsers.add_parser(
        "cache",
        help="list or clear cached teacher features and compiled kernels",
        description=(
            "pdd's cache folder ($PDD_CACHE_DIR, default $XDG_CACHE_HOME/pdd or ~/.cache/pdd): "
            "teacher features of training images (features/, bounded by $PDD_FEATURE_CACHE_GB, "
            "default 20 GiB) and compiled CPU kernels (kernels/)."
        ),
    )
    commands = parser.add_subparsers(
        dest="cache_command", required=True, metavar="ACTION"
    )
    listing = commands.add_parser(
        "list", help="show each kind's folder, entries and size"
    )
    listing.set_defaults(handler=_list)
    clear = commands.add_parser("clear", help="delete cached features, kernels or both")
    clear.add_argument(
        "kind",
        choices=(*KINDS, "all"),
        help="what to delete (features, kernels or all)",
    )
    clear.set_defaults(handler=_clear)


def _folders() -> dict[str, Path]:
    from pdd.cache_root import cache_dir
    from pdd.training.feature_cache import features_dir

    root = cache_dir()
    return {"features": features_dir(root), "kernels": root / "kernels"}


def _usage(kind: str, folder: Path) -> tuple[int, int]:
    """(entries, bytes): feature files, or kernel build folders and all their files."""
    if not folder.is_dir():
        return 0, 0
    if kind == "features":
        files = list(folder.glob("*/*.pddf"))
        return len(files), sum(_size(path) for path in files)
    builds = [path for path in folder.iterdir() if path.is_dir()]
    return len(builds), sum(_size(path) for path in folder.rglob("*") if path.is_file())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # removed by another process meanwhile
        return 0


def _list(args: argparse.Namespace) -> None:
    check_cache_dir()
    rows = [("KIND", "ENTRIES", "SIZE", "FOLDER")]
    for kind, folder in _folders().items():
        entries, size = _usage(kind, folder)
        rows.append((kind, str(entries), _human(size), str(folder)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths))
            + "  "
            + row[3]
        )


def _clear(args: argparse.Namespace) -> None:
    check_cache_dir()
    kinds = KINDS if args.kind == "all" else (args.kind,)
    for kind in kinds:
        folder = _folders()[kind]
        entries, size = _usage(kind, folder)
        if folder.is_dir():
            # A fit reading an entry meanwhile sees it missing and recomputes it.
            shutil.rmtree(folder, ignore_errors=True)
        print(f"cleared {kind}: {entries} entries, {_human(size)} ({folder})")


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
