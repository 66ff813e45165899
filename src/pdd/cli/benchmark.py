"""`pdd benchmark`: run a suite (datasets x presets x seeds) and write its results tables.

Progress goes to stderr, one line per grid cell (``[3/8] headct / rd4ad``); the paths of the
results go to stdout. Rerunning with the same ``--out`` skips finished cells and resumes an
interrupted one; a different suite in the same folder is refused.
"""

from __future__ import annotations

import argparse
import sys

from pdd.cli._common import positive_int, user_path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add `benchmark` to the `pdd` command table."""
    parser = sub.add_parser(
        "benchmark",
        help="run a grid of datasets x presets x seeds; writes results tables",
        description="Run every dataset x preset of a suite (each one `pdd fit` over the suite's "
        "seeds) and write DIR/results.csv, DIR/results.md and DIR/report.html. SUITE is a YAML "
        "file or a built-in suite: paper, ablation (these need --data-root). A suite may list "
        "anomalib's models beside our presets (anomalib:Patchcore, ...; the anomalib extra): "
        "trained by anomalib on the same split, evaluated by the same code.",
    )
    parser.add_argument("--suite", required=True, help="suite YAML file, or paper / ablation")
    parser.add_argument("--out", type=user_path, required=True, help="benchmark folder to write")
    parser.add_argument(
        "--data-root",
        type=user_path,
        help="folder holding the datasets (relative `data:` paths are taken under it)",
    )
    parser.add_argument(
        "--teachers",
        choices=("pretrained", "random"),
        help="override the suite's teachers (random: tests and demos; marked in the tables)",
    )
    parser.add_argument("--accelerator", choices=("cpu", "gpu", "auto"), default="auto")
    parser.add_argument(
        "--num-workers", type=positive_int, help="data loader processes (default: 0)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no per-run progress output")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from pdd.benchmark.grid import RunSettings, run_benchmark
    from pdd.benchmark.suite import load_suite

    suite = load_suite(args.suite, data_root=args.data_root, teachers=args.teachers)
    if suite.teachers == "random":
        print(
            "WARNING: teachers are RANDOMLY initialised: results are a smoke test, "
            "not the method's accuracy",
            file=sys.stderr,
        )
    settings = RunSettings(
        accelerator=args.accelerator,
        num_workers=args.num_workers or 0,
        progress=not args.no_progress,
    )
    run_benchmark(
        suite,
        args.out,
        settings=settings,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    for name in ("results.csv", "results.md", "report.html"):
        print(args.out / name)
    return 0
