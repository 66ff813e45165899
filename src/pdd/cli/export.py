"""`pdd export`: the whole model (teachers, students, map, score) as one ONNX file."""

from __future__ import annotations

import argparse

from pdd.cli._common import existing_file, prepare_output_file, user_path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add `export` to the `pdd` command table."""
    from pdd.export import DEFAULT_OPSET, MIN_OPSET

    parser = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (image in; anomaly map and score out)",
        description="Export a checkpoint to ONNX. Input 'images': float32 [N,3,S,S], resized and "
        "ImageNet-normalised (S fixed by the checkpoint; N dynamic). Outputs 'maps' [N,S,S] and "
        "'scores' [N]. The file is checked against PyTorch with onnxruntime before it is written.",
    )
    parser.add_argument("--checkpoint", type=user_path, required=True, help="model.ckpt from fit")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="only onnx so far")
    parser.add_argument("--out", type=user_path, required=True, help="file to write, e.g. model.onnx")
    parser.add_argument(
        "--opset",
        type=_opset,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {MIN_OPSET} or newer (default: {DEFAULT_OPSET})",
    )
    parser.set_defaults(handler=_run)


def _opset(text: str) -> int:
    """argparse type: an opset the exporter really writes (the upper bound is checked on export,
    where the optional onnx package is known to be installed)."""
    from pdd.export import MIN_OPSET

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < MIN_OPSET:
        raise argparse.ArgumentTypeError(f"the exporter writes opset {MIN_OPSET} or newer, got {value}")
    return value


def _run(args: argparse.Namespace) -> int:
    from pdd.export import export_onnx

    existing_file(args.checkpoint, "checkpoint")
    prepare_output_file(args.out)
    print(f"exporting {args.checkpoint} to ONNX (opset {args.opset}) ...")
    result = export_onnx(args.checkpoint, args.out, opset=args.opset)
    print(
        f"wrote {', '.join(str(f) for f in result.files)}: input 'images' float32 "
        f"[N,3,{result.image_size},{result.image_size}] (ImageNet-normalised), outputs 'maps' "
        f"[N,{result.image_size},{result.image_size}] and 'scores' [N]; opset {result.opset}"
    )
    print(
        f"checked with onnxruntime: max relative difference to PyTorch: maps "
        f"{result.max_map_error:.1e}, scores {result.max_score_error:.1e}"
    )
    return 0
