"""ONNX export of a whole saved model: teachers, students, anomaly map and score in one graph.

The graph takes ``images`` float32 [N, 3, S, S], already resized and ImageNet-normalised exactly as
:func:`pdd.data.to_model_input` does (S is fixed by the checkpoint), and returns ``maps``
[N, S, S] (smoothed anomaly maps) and ``scores`` [N] (their maxima). The batch axis N is dynamic.
Export uses the ``torch.export``-based exporter (``dynamo=True``) at ONNX opset
:data:`DEFAULT_OPSET`. The result is checked against PyTorch with onnxruntime on random inputs
before the file is put in place, so a file that exists is a file that was verified.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pdd.errors import PDDError

if TYPE_CHECKING:  # torch and numpy are imported where used: `pdd --help` must not wait for them
    import numpy as np
    import torch

__all__ = [
    "DEFAULT_OPSET",
    "MAP_TOLERANCE",
    "MIN_OPSET",
    "SCORE_TOLERANCE",
    "ExportError",
    "ExportResult",
    "export_onnx",
]

DEFAULT_OPSET = 18
"""ONNX opset of exported graphs (onnxruntime >= 1.14 runs it)."""
MIN_OPSET = 18
"""Lowest accepted opset: the torch.export-based exporter builds opset-18 graphs and only tries to
convert them down, keeping 18 without an error when it cannot (``--opset 0`` gave an opset-18
file). The highest is the installed onnx package's (``onnx.defs.onnx_opset_version()``)."""

# Largest accepted max|ONNX - PyTorch| / max|PyTorch| for maps and scores: float32 graphs that
# differ only in operation order agree to about 1e-6 here; a wrong graph is far above 1e-3.
MAP_TOLERANCE = 1e-3
SCORE_TOLERANCE = 1e-3

INPUT_NAME = "images"
OUTPUT_NAMES = ("maps", "scores")
_PROTOBUF_LIMIT = 2_000_000_000  # bytes; larger models must store weights in a side file


class ExportError(PDDError):
    """The model could not be exported or the exported graph disagrees with PyTorch."""


@dataclass(frozen=True)
class ExportResult:
    """The exported file(s), their input size, and the measured agreement with PyTorch."""

    path: Path
    files: tuple[Path, ...]
    image_size: int
    opset: int
    max_map_error: float
    max_score_error: float


def export_onnx(
    checkpoint: Path,
    out: Path,
    *,
    opset: int = DEFAULT_OPSET,
    check_batch: int = 2,
) -> ExportResult:
    """Export ``checkpoint`` to ONNX at ``out`` and verify it with onnxruntime.

    Example:
        >>> from pathlib import Path
        >>> from pdd.export import export_onnx
        >>> exported = export_onnx(Path("runs/headct/seed_0/model.ckpt"), Path("model.onnx"))  # doctest: +SKIP
        >>> exported.path, exported.opset, exported.max_score_error  # doctest: +SKIP

    ``check_batch`` random images (plus a single image, to prove the batch axis is dynamic) are
    run through both PyTorch and onnxruntime; the file is only written if they agree within
    :data:`MAP_TOLERANCE` / :data:`SCORE_TOLERANCE` (relative to the largest value).
    """
    import torch

    from pdd.runs.checkpoint import load

    _require_onnx_packages()
    _check_opset(opset)
    model, _meta = load(checkpoint)
    model = model.float().eval()
    image_size = int(model.config["image_size"])
    example = torch.randn(check_batch, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=1024)

    try:
        with warnings.catch_warnings(), _quiet_exporter():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                opset_version=opset,
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; all mean "cannot export"
        raise ExportError(f"{checkpoint}: ONNX export failed: {_root_cause(exc)}") from exc
    if program is None:
        raise ExportError(f"{checkpoint}: ONNX export returned no program")

    folder = out.parent if str(out.parent) else Path(".")
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=folder) as staging:
        staged = Path(staging) / out.name
        external = _parameter_bytes(model) > _PROTOBUF_LIMIT
        program.save(staged, external_data=external)
        written = _written_opset(staged)
        if written != opset:
            raise ExportError(
                f"{checkpoint}: asked for ONNX opset {opset}, but the exporter wrote opset {written}"
            )
        map_error, score_error = _compare(model, staged, image_size, check_batch)
        if map_error > MAP_TOLERANCE or score_error > SCORE_TOLERANCE:
            raise ExportError(
                f"{checkpoint}: exported graph disagrees with PyTorch (relative max error: map "
                f"{map_error:.2e}, score {score_error:.2e}; allowed {MAP_TOLERANCE:.0e})"
            )
        files = []
        for produced in sorted(Path(staging).iterdir()):
            target = folder / produced.name
            os.replace(produced, target)
            files.append(target)
    return ExportResult(
        path=out,
        files=tuple(files),
        image_size=image_size,
        opset=opset,
        max_map_error=map_error,
        max_score_error=score_error,
    )


def _require_onnx_packages() -> None:
    """onnx, onnxscript and onnxruntime are an optional extra; say how to get them."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"ONNX export needs {', '.join(missing)}: pip install 'pdd[onnx]'"
        )


def _check_opset(opset: int) -> None:
    """``opset`` within what this exporter writes and the installed onnx knows."""
    import onnx

    highest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= highest:
        raise ExportError(
            f"--opset {opset}: must be between {MIN_OPSET} and {highest} (the installed onnx's newest)"
        )


def _written_opset(onnx_path: Path) -> int | None:
    """The default-domain opset recorded in the saved file: what a runtime will see."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    versions = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    return versions[0] if versions else None


def _compare(model: torch.nn.Module, onnx_path: Path, image_size: int, batch: int) -> tuple[float, float]:
    """Largest relative |ONNX - PyTorch| over maps and scores for batches of ``batch`` and 1."""
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1234)
    map_error = score_error = 0.0
    for size in (batch, 1):
        images = torch.randn(size, 3, image_size, image_size, generator=generator)
        with torch.inference_mode():
            torch_maps, torch_scores = model(images)
        onnx_maps, onnx_scores = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images.numpy()})
        map_error = max(map_error, _relative_error(onnx_maps, torch_maps.numpy()))
        score_error = max(score_error, _relative_error(onnx_scores, torch_scores.numpy()))
    return map_error, score_error


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    import numpy as np

    if actual.shape != expected.shape:
        return float("inf")
    scale = max(float(np.abs(expected).max()), 1e-12)
    return float(np.abs(actual - expected).max()) / scale


def _parameter_bytes(model: torch.nn.Module) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter prints progress lines and, on failure, whole graphs; the CLI shows one line."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        yield


def _root_cause(exc: BaseException) -> str:
    """First line of the innermost cause: the exporter wraps the real reason in pages of advice."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    first = text.splitlines()[0] if text else "(no message)"
    return f"{type(exc).__name__}: {first[:300]}"
