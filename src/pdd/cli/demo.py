"""`pdd demo`: the whole pipeline on built-in synthetic brain phantoms, offline, in minutes.

It writes phantoms (normal slices for training, normal and lesioned slices for testing) into
``<out>/data``, trains preset ``pdd`` with RANDOM teachers (pretrained weights may be absent and
the demo must run offline), evaluates, and writes a complete run folder with report.html to
``<out>/run`` (the data stays beside it, so ``pdd test`` and ``pdd predict`` can be tried on it). The numbers show the pipeline works; they say nothing about the method's accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pdd.cli._common import positive_int, prepare_output_folder, user_path
from pdd.errors import PDDError

__all__ = ["DEMO_DEFAULTS", "register"]

# The full `pdd` preset (both full-size teachers). Random teachers limit image-level ranking; the
# heatmaps keep improving with training (pixel AUROC and AUPRO rose from 10 to 20 epochs), so the
# demo spends its budget on 20 epochs. What these defaults print, and how long they take, is in the
# README, written by benchmarks/demo_table.py.
DEMO_DEFAULTS = {
    "image_size": 64,
    "epochs": 20,
    "batch_size": 8,
    "n_train": 40,
    "n_test_normal": 12,
    "n_test_abnormal": 12,
    "phantom_size": 128,
}
DATA_FOLDER = "data"
RUN_FOLDER = "run"
_BANNER = (
    "NOTE: the demo uses RANDOMLY initialised teachers (--teachers random) and synthetic phantoms;\n"
    "      its metrics are a smoke test of the pipeline, not the accuracy of PDD."
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `demo` to the `pdd` command table."""
    parser = sub.add_parser(
        "demo",
        help="train and evaluate on built-in synthetic scans (offline, a few minutes)",
        description="Generate synthetic brain phantoms, fit preset pdd with random teachers, "
        "evaluate and write a run folder with report.html. " + " ".join(_BANNER.split()),
    )
    parser.add_argument(
        "--out", type=user_path, default=Path("pdd-demo"), help="run folder (default: ./pdd-demo)"
    )
    parser.add_argument(
        "--epochs", type=positive_int, default=DEMO_DEFAULTS["epochs"], help="training epochs"
    )
    parser.add_argument(
        "--image-size", type=positive_int, default=DEMO_DEFAULTS["image_size"], help="input size S"
    )
    parser.add_argument(
        "--train-images",
        type=positive_int,
        default=DEMO_DEFAULTS["n_train"],
        help="normal phantoms to train on",
    )
    parser.add_argument(
        "--test-images",
        type=positive_int,
        default=DEMO_DEFAULTS["n_test_abnormal"],
        help="test phantoms of each kind (normal and lesioned)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of phantoms and training")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model override as in `pdd fit`, e.g. students=shared (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress output")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from pdd.cli.fit import check_model_config, parse_overrides
    from pdd.data.synthetic import make_phantom_dataset
    from pdd.training.runner import FitOptions, fit

    out: Path = args.out
    if out.is_dir() and any(out.iterdir()):
        raise PDDError(f"{out}: output folder is not empty; choose a new --out folder")
    prepare_output_folder(out)
    overrides = parse_overrides(args.overrides)
    settings = {"preset": "pdd", "teachers": "random", "image_size": args.image_size, "epochs": args.epochs}
    check_model_config(settings, overrides)
    data = out / DATA_FOLDER
    print(_BANNER)
    started = time.monotonic()
    make_phantom_dataset(
        data,
        layout="folder",
        n_train=args.train_images,
        n_test_normal=args.test_images,
        n_test_abnormal=args.test_images,
        size=DEMO_DEFAULTS["phantom_size"],
        seed=args.seed,
    )
    print(
        f"wrote {args.train_images} normal training phantoms and {2 * args.test_images} test "
        f"phantoms (half with lesions) to {data}"
    )
    options = FitOptions(
        data=data.resolve(),  # absolute, so the saved config.yaml works from any folder
        out=out / RUN_FOLDER,
        format="folder",
        preset="pdd",
        teachers="random",
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=DEMO_DEFAULTS["batch_size"],
        seeds=[args.seed],
        model_overrides=overrides,
        accelerator="auto",
        progress=not args.no_progress,
    )
    run_dir = fit(options)
    print(_summary(run_dir))
    print(f"run folder: {run_dir}")
    print(f"report: {run_dir / 'report.html'}")
    print(f"took {time.monotonic() - started:.0f} s")
    print(_BANNER)
    return 0


def _summary(run_dir: Path) -> str:
    """The metrics line; random teachers are named again next to the numbers."""
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    shown = [
        f"{key} {metrics[key]:.3f}"
        for key in ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_aupro")
        if isinstance(metrics.get(key), (int, float))
    ]
    return "demo metrics (random teachers, synthetic data): " + ", ".join(shown)
