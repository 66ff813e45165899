"""`pdd weights list|download|import|verify`: manage the teachers' pretrained weight files.

Parsing stays free of torch (handlers import ``pdd.teachers.weights`` when they run), so
``pdd --help`` is instant; an unknown weights name is reported by the registry with the known names.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pdd.cli._common import check_cache_dir
from pdd.errors import WeightsError

__all__ = ["register"]

_NAME_HELP = "registry name of the weight file (see `pdd weights list`)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``weights`` command group to the main parser's sub-commands."""
    parser = subparsers.add_parser(
        "weights",
        help="list, download, import or verify the teachers' pretrained weights",
        description=(
            "Pretrained teacher weights, cached in $PDD_CACHE_DIR/weights "
            "(default $XDG_CACHE_HOME/pdd/weights or ~/.cache/pdd/weights)."
        ),
    )
    commands = parser.add_subparsers(dest="weights_command", required=True, metavar="ACTION")

    listing = commands.add_parser("list", help="show the known weight files and their cache state")
    listing.set_defaults(handler=_list)

    fetch = commands.add_parser("download", help="download a weight file and check its SHA-256")
    fetch.add_argument("name", metavar="NAME", help=_NAME_HELP)
    fetch.add_argument("--url", help="download from this mirror instead (the same checksum applies)")
    fetch.add_argument("--force", action="store_true", help="download even if a good copy is cached")
    fetch.set_defaults(handler=_download)

    imp = commands.add_parser("import", help="check a local weight file and copy it into the cache")
    imp.add_argument("name", metavar="NAME", help=_NAME_HELP)
    imp.add_argument("file", type=Path, metavar="FILE", help="the local copy of the weight file")
    imp.add_argument(
        "--allow-checksum-mismatch",
        action="store_true",
        help="accept a file that fits the teacher but is not the official one (recorded as such)",
    )
    imp.set_defaults(handler=_import)

    check = commands.add_parser("verify", help="re-hash cached weight files (all, or NAME)")
    check.add_argument("name", nargs="?", metavar="NAME", help=_NAME_HELP)
    check.set_defaults(handler=_verify)


def _list(args: argparse.Namespace) -> None:
    from pdd.teachers import weights

    check_cache_dir()

    rows = weights.list_weights()
    header = ("NAME", "TEACHER", "DEFAULT", "CACHED", "CHECKSUM")
    table = [header] + [
        (
            row["name"],
            row["teacher"],
            "yes" if row["default"] else "",
            "yes" if row["cached"] else "no",
            row["checksum"],
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    print(f"cache: {weights.weights_dir()}")


def _download(args: argparse.Namespace) -> None:
    from pdd.teachers import weights

    check_cache_dir()

    path = weights.download(args.name, url=args.url, force=args.force)
    print(f"{args.name}: {path}")


def _import(args: argparse.Namespace) -> None:
    from pdd.teachers import weights

    check_cache_dir()

    path = weights.import_file(
        args.name, args.file, allow_checksum_mismatch=args.allow_checksum_mismatch
    )
    row = next(row for row in weights.list_weights() if row["name"] == args.name)
    note = " (checksum mismatch accepted: not the official file)"
    print(f"{args.name}: imported {args.file} -> {path}"
          f"{note if row['checksum'] == 'accepted-mismatch' else ''}")


def _verify(args: argparse.Namespace) -> None:
    from pdd.teachers import weights

    check_cache_dir()

    if args.name is not None:
        names = [args.name]
    else:
        names = [row["name"] for row in weights.list_weights() if row["cached"]]
        if not names:
            print(f"no weight files cached in {weights.weights_dir()}")
            return
    failures = 0
    for name in names:
        try:
            result = weights.verify(name)
        except WeightsError as exc:
            if len(names) == 1:
                raise
            failures += 1
            print(f"FAILED  {exc}")
            continue
        print(f"ok      {name}  {result.path}  sha256 {result.sha256} ({result.basis})")
    if failures:
        raise WeightsError(
            f"{failures} of {len(names)} cached weight files failed verification (see above)"
        )
