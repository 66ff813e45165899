"""`pdd predict`: score images, DICOM series and NIfTI volumes with a saved model."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from pdd.cli._common import (
    Progress,
    existing_file,
    existing_path,
    parse_window,
    positive_int,
    user_path,
)
from pdd.cli.device_options import add_device_options, parse_devices
from pdd.errors import ConfigError, DataError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add `predict` to the `pdd` command table."""
    parser = sub.add_parser(
        "predict",
        help="score images, DICOM series or NIfTI volumes with a checkpoint",
        description="Score each input (files, folders searched recursively). NIfTI volumes and "
        "DICOM series are scored as scans: volumes.csv has one row per scan, maps/ holds each "
        "volume's anomaly map as NIfTI in the volume's geometry, dicom/ a derived series per DICOM "
        "series. scores.csv has one row per slice or image; 2-D images get heatmap overlay PNGs "
        "coloured with the checkpoint's fixed map range. Runs through Lightning's predict loop, "
        "on several devices or machines with --devices/--num-nodes/--strategy ddp; an "
        "interrupted run continues with --resume OUT.",
    )
    parser.add_argument("--checkpoint", type=user_path, help="model.ckpt from fit")
    parser.add_argument("inputs", type=user_path, nargs="*", metavar="INPUT", help="file or folder")
    parser.add_argument("--out", type=user_path, help="new or empty folder for the results")
    parser.add_argument(
        "--resume", type=user_path, metavar="OUT",
        help="continue the interrupted run in OUT (only the options below may be given with it)",
    )
    parser.add_argument(
        "--window", metavar="C,W", help="DICOM window centre,width (default: the file's own)"
    )
    parser.add_argument(
        "--scan-score", metavar="RULE",
        help="scan score from its slice scores: mean-top-K (mean of the K highest; default "
        "mean-top-3) or max",
    )
    parser.add_argument("--batch-size", type=positive_int, help="images per batch and device (default: 8)")
    add_device_options(parser)
    parser.add_argument("--num-workers", type=int, help="data loader workers per process (default: 0)")
    parser.add_argument("--device", help=argparse.SUPPRESS)  # replaced by --accelerator/--devices
    parser.add_argument("--no-progress", action="store_true", help="no progress output")
    parser.set_defaults(handler=_run, usage_error=parser.error)


class _Stopped(Exception):
    """A signal while predicting. Not a KeyboardInterrupt: Lightning turns that into exit 1."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped(signum)


def _run(args: argparse.Namespace) -> int:
    """Score, or say how to continue when stopped: Ctrl-C exits 130, SIGTERM 143."""
    out = args.resume if args.resume is not None else args.out
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _predict(args)
    except _Stopped as exc:
        what = "terminated (SIGTERM)" if exc.signum == signal.SIGTERM else "interrupted"
        print(
            f"error: predict {what}; finished scans are kept in {out}; "
            f"continue with `pdd predict --resume {out}`",
            file=sys.stderr,
        )
        return 128 + exc.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _predict(args: argparse.Namespace) -> int:
    from pdd.prediction import predict as engine

    if args.device is not None:
        raise ConfigError(
            f"--device {args.device}: replaced by --accelerator cpu|gpu|auto and --devices N"
        )
    if args.num_workers is not None and args.num_workers < 0:
        raise ConfigError(f"--num-workers: expected a number >= 0, got {args.num_workers}")
    running = {
        "accelerator": args.accelerator,
        "devices": parse_devices(args.devices),
        "num_nodes": args.num_nodes,
        "strategy": args.strategy,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
    }
    progress = Progress("predict", enabled=not args.no_progress).update
    if args.resume is not None:
        fixed = {
            "--checkpoint": args.checkpoint, "--out": args.out, "--window": args.window,
            "--precision": args.precision, "INPUT": args.inputs or None,
        }
        fixed["--scan-score"] = args.scan_score
        given = [name for name, value in fixed.items() if value is not None]
        if given:
            raise ConfigError(f"--resume: {', '.join(given)} cannot be given; the run's own are used")
        existing_path(args.resume, "run folder")
        result = engine.resume(args.resume, overrides=running, on_progress=progress)
        out = args.resume
    else:
        if args.checkpoint is None or args.out is None or not args.inputs:
            args.usage_error("needs --checkpoint FILE, --out DIR and at least one INPUT (or --resume OUT)")
        window = parse_window(args.window)
        existing_file(args.checkpoint, "checkpoint")
        for path in args.inputs:
            existing_path(path, "input")
        rule = args.scan_score or engine.DEFAULT_SCAN_RULE
        engine.parse_scan_rule(rule)
        options = engine.PredictOptions(
            checkpoint=args.checkpoint,
            inputs=tuple(args.inputs),
            out=args.out,
            window=window,
            scan_rule=rule,
            precision=args.precision or "32-true",
            **{k: v for k, v in running.items() if v is not None},
        )
        result = engine.predict(options, on_progress=progress)
        out = args.out
    if result is None:  # another process of a multi-process run: rank 0 reports
        return 0
    _report(result, Path(out))
    return 0


def _report(result, out: Path) -> None:  # result: engine.predict.PredictResult
    from pdd.prediction.predict import NOTES_FILE, SKIPPED_FILE, VOLUMES_FILE

    if result.threshold is None:
        print(f"scored {result.scored} images (the checkpoint has no threshold: no decisions)")
    else:
        print(
            f"scored {result.scored} images: {result.anomalous} anomalous, "
            f"{result.scored - result.anomalous} normal (threshold {result.threshold:.6g})"
        )
    print(f"scores: {result.scores_csv}")
    if result.volumes:
        print(f"scans: {result.volumes} in {out / VOLUMES_FILE}")
    if result.notes:
        print(f"notes: {result.notes} series scored as images or without geometry, see {out / NOTES_FILE}")
    print(
        f"throughput: {result.newly_scored} images in {result.seconds:.1f} s "
        f"({result.images_per_second:.2f} images/s)"
    )
    if result.skipped:
        first = result.first_skip[0] if result.first_skip else "?"
        raise DataError(
            f"{result.skipped} input(s) could not be read, e.g. {first}; see {out / SKIPPED_FILE}"
        )
