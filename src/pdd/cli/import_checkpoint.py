"""`pdd import-checkpoint`: a decoder trained with the authors' released scripts -> our model.ckpt.

The result is a ``pdd-reference`` checkpoint like one from ``pdd fit``, except that it has no
decision threshold or heatmap range (no held-out normals were scored), so ``pdd predict`` writes
scores without decisions. Its ``provenance`` records the imported file and its SHA-256.
"""

from __future__ import annotations

import argparse

from pdd.cli._common import existing_file, positive_int, prepare_output_file, user_path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add `import-checkpoint` to the `pdd` command table."""
    parser = sub.add_parser(
        "import-checkpoint",
        help="turn a checkpoint of the authors' released code into a pdd model.ckpt",
        description="Map a decoder trained with the released PDD code (OxygenLu/PDD: a training "
        "file with a 'decoder' entry, or the decoder's state dict) onto the pdd-reference preset "
        "and write a pdd checkpoint. The file is read without running code from it; every key "
        "and shape must match. The frozen teachers come from the pretrained weight cache.",
    )
    parser.add_argument(
        "--released", type=user_path, required=True, metavar="FILE", help="released checkpoint"
    )
    parser.add_argument("--out", type=user_path, required=True, help="checkpoint to write")
    parser.add_argument(
        "--teachers",
        choices=("pretrained", "random"),
        default="pretrained",
        help="teacher weights (default: pretrained; random: tests only, scores are meaningless)",
    )
    parser.add_argument("--image-size", type=positive_int, help="input size S (default: 256)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from pdd import create_model
    from pdd.models.released import (
        PRESET,
        RELEASED_COMMIT,
        RELEASED_REPO,
        load_released_state_dict,
        read_released,
    )
    from pdd.runs import checkpoint
    from pdd.teachers.weights import sha256_file

    existing_file(args.released, "released checkpoint")
    prepare_output_file(args.out)
    released = read_released(args.released)
    overrides = {"teachers": args.teachers}
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    model = create_model(PRESET, **overrides)
    load_released_state_dict(model, released, args.released)
    provenance = {
        "imported": {
            "file": args.released.resolve(),
            "sha256": sha256_file(args.released),
            "code": f"{RELEASED_REPO}@{RELEASED_COMMIT}",
        }
    }
    path = checkpoint.save(args.out, model, provenance=provenance)
    print(
        f"wrote {path}: {PRESET} with the released decoder from {args.released} "
        f"({len(released)} tensors; teachers {args.teachers}); it has no decision threshold "
        "(no held-out normals were scored), so predictions come without decisions"
    )
    return 0
