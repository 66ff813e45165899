"""`pdd calibrate`: a trained model's threshold and colour scale re-estimated on a new site's normal
scans, written to a new checkpoint (the model itself is unchanged; the original file untouched)."""

from __future__ import annotations

import argparse

from pdd.cli._common import existing_file, positive_int, prepare_output_file, user_path

__all__ = ["register"]


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a rate in (0, 1), got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add `calibrate` to the `pdd` command table."""
    parser = sub.add_parser(
        "calibrate",
        help="re-estimate a model's threshold and colour scale on a new site's normal scans",
        description="Score normal images or scans (NIfTI volumes, DICOM series: each scan is one "
        "unit, scored by the scan rule over its slices) of a new site with the checkpoint's "
        "model, and write a new checkpoint whose threshold promises at most --fpr false alarms "
        "for normals like these, with their scores for p-values and their colour scale. The "
        "model is not retrained; the original checkpoint is not changed.",
    )
    parser.add_argument("--checkpoint", type=user_path, required=True, help="model.ckpt to calibrate")
    parser.add_argument(
        "--normals", type=user_path, nargs="+", required=True, metavar="PATH",
        help="normal images, volumes, series or folders of the new site",
    )
    parser.add_argument("--out", type=user_path, required=True, help="new checkpoint to write")
    parser.add_argument(
        "--fpr", type=_rate, default=0.05, metavar="ALPHA",
        help="false-alarm rate the threshold promises (default 0.05)",
    )
    parser.add_argument("--name", default=None, metavar="SITE", help="site name to record")
    parser.add_argument(
        "--accelerator", choices=("auto", "cpu", "gpu"), default="auto",
        help="where to score (default: a GPU when torch sees one)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per batch")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from pdd.errors import ConfigError
    from pdd.evaluation.calibration import calibrate_site

    existing_file(args.checkpoint, "checkpoint")
    prepare_output_file(args.out)
    cuda = torch.cuda.is_available()
    if args.accelerator == "gpu" and not cuda:
        raise ConfigError("--accelerator gpu: no CUDA GPU is available to torch")
    device = "cuda" if args.accelerator == "gpu" or (args.accelerator == "auto" and cuda) else "cpu"
    result = calibrate_site(
        args.checkpoint, args.normals, args.out, alpha=args.fpr, site=args.name,
        device=device, batch_size=args.batch_size,
    )

    def shown(value: float | None) -> str:
        return "none" if value is None else f"{value:.6g}"

    print(
        f"wrote {result.out}: calibrated on {result.promised.n} normal {result.units} "
        f"({result.files} file(s)){f' of site {args.name}' if args.name else ''}"
    )
    print(f"threshold: before {shown(result.threshold_before)}, after {shown(result.threshold_after)}")
    if result.units == "scans":
        print(
            f"scan threshold: before {shown(result.scan_threshold_before)}, "
            f"after {shown(result.promised.threshold)}"
        )
    print(f"promise: {result.promised.guarantee}")
    return 0
