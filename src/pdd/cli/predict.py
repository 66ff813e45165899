"""`pdd predict`: score new scans with a saved model and write heatmap overlays."""

from __future__ import annotations

import argparse

from pdd.cli._common import (
    Progress,
    existing_file,
    existing_path,
    parse_window,
    positive_int,
    prepare_output_folder,
    user_path,
)
from pdd.errors import DataError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add `predict` to the `pdd` command table."""
    parser = sub.add_parser(
        "predict",
        help="score images, DICOM files or NIfTI volumes with a checkpoint",
        description="Score each input (files, folders searched recursively, DICOM, NIfTI volumes "
        "one axial slice at a time). Writes scores.csv (path, score, decision at the checkpoint's "
        "threshold, heatmap) and one heatmap overlay PNG per image, coloured with the "
        "checkpoint's fixed map range so colours compare across images.",
    )
    parser.add_argument("--checkpoint", type=user_path, required=True, help="model.ckpt from fit")
    parser.add_argument("inputs", type=user_path, nargs="+", metavar="INPUT", help="file or folder")
    parser.add_argument("--out", type=user_path, required=True, help="folder for the results")
    parser.add_argument(
        "--window", metavar="C,W", help="DICOM window centre,width (default: the file's own)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per batch")
    parser.add_argument(
        "--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress output")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from pdd.engine.predict import SKIPPED_FILE, predict

    window = parse_window(args.window)
    existing_file(args.checkpoint, "checkpoint")
    for path in args.inputs:
        existing_path(path, "input")
    prepare_output_folder(args.out)
    result = predict(
        args.checkpoint,
        args.inputs,
        args.out,
        window=window,
        batch_size=args.batch_size,
        device=args.device,
        on_progress=Progress("predict", enabled=not args.no_progress).update,
    )
    flagged = sum(p.decision == "anomalous" for p in result.predictions)
    print(
        f"scored {len(result.predictions)} images: {flagged} anomalous, "
        f"{len(result.predictions) - flagged} normal (threshold {result.threshold:.6g})"
    )
    print(f"scores: {result.scores_csv}")
    print(f"heatmaps: {args.out / 'heatmaps'}")
    if result.skipped:
        raise DataError(
            f"{len(result.skipped)} input(s) could not be read, e.g. {result.skipped[0][0]}; "
            f"see {args.out / SKIPPED_FILE}"
        )
    return 0
