"""Which CPU library runs a layer, per shape: oneDNN or PyTorch's GEMM (MKL), the faster one.

Convolutions, oneDNN's by default, are sometimes faster as GEMM (``gemm_convolutions``); linear
layers, MKL GEMMs by default, are sometimes faster in oneDNN (``linear``).

PyTorch runs CPU convolutions through oneDNN by default. For the wide 3x3 convolutions on small
grids (1024 channels at 8x8 or 16x16: Wide-ResNet's layer4, RD4AD's bottleneck blocks) oneDNN
reorders the 38 MB weight into its blocked layout on every call, which costs more than the
convolution itself when there are few output positions; PyTorch's own im2col + GEMM path reads
the weight as it is. Measured (benchmarks/README.md, "Against anomalib"): at batch 1 the GEMM path
is 1.4-2.5x faster on both of the project's CPUs; with more positions (batch 8, or the batch-4
training step with its backward) oneDNN is up to 2x faster on an AVX-512 CPU. So the switch is
taken only for inference over few positions (``prefers_gemm``), in those blocks. The result
differs only by float32 rounding.

The other way round, a linear layer over many rows (VMamba's projections: 256 to 32768 rows of 96
to 3072 channels) runs 1.05-1.4x faster as oneDNN's 1x1 convolution than as PyTorch's MKL GEMM on
an AMD EPYC with AVX-512 (benchmarks/README.md, "Linear layers through oneDNN"); over fewer rows
oneDNN's per-call weight reorder costs more than it gains, as for the wide convolutions above.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

__all__ = ["GEMM_MAX_POSITIONS", "ONEDNN_MIN_ROWS", "gemm_convolutions", "linear", "prefers_gemm"]

GEMM_MAX_POSITIONS = 256
"""Batch x height x width of a block's input up to which its wide convs skip oneDNN (batch 1 at
16x16, the grid of Wide-ResNet's layer4 and RD4AD's bottleneck input for 256 px images)."""


ONEDNN_MIN_ROWS = 256
"""Rows an image (positions) from which ``linear`` runs in oneDNN: below, MKL's GEMM was faster."""


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)`` without bias, as a oneDNN 1x1 convolution where that is faster.

    Taken for float32 CPU tensors over at least ``ONEDNN_MIN_ROWS`` rows an image, outside
    autocast and with oneDNN enabled; everything else (CUDA, float64, bf16 autocast, few rows) is
    ``F.linear``.
    The rows become the height of one channels-last image: a view of ``x`` when its rows are
    contiguous (a strided slice is copied once, as ``F.linear`` would).
    """
    channels = x.shape[-1]
    rows = x.numel() // max(channels, 1)
    # Decided on one image's rows (every dim but the first and the last; a 2-D input is one
    # image), never the batch's: the two libraries round differently, and an image's features
    # must not depend on the batch it comes in.
    image_rows = rows // x.shape[0] if x.dim() > 2 and x.shape[0] else rows
    if (
        x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or image_rows < ONEDNN_MIN_ROWS
        or torch.is_autocast_enabled("cpu")
        or not torch.backends.mkldnn.is_available()
        or not torch.backends.mkldnn.enabled
    ):
        return F.linear(x, weight)
    image = x.reshape(1, rows, 1, channels).permute(0, 3, 1, 2)
    out = F.conv2d(image, weight[:, :, None, None])
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], weight.shape[0])


def prefers_gemm(x: torch.Tensor) -> bool:
    """Whether a wide small-grid block should run its convs outside oneDNN for input ``x``: on the
    CPU, without autograd recording (inference), and over few positions."""
    positions = x.shape[0] * x.shape[-2] * x.shape[-1]
    return x.device.type == "cpu" and not torch.is_grad_enabled() and positions <= GEMM_MAX_POSITIONS


@contextlib.contextmanager
def gemm_convolutions(enabled: bool = True) -> Iterator[None]:
    """Within the block, CPU convolutions take PyTorch's im2col + GEMM path instead of oneDNN.

    Backward passes recorded inside run the matching backward kernels wherever they run. No effect
    on CUDA tensors (cuDNN is untouched) and a no-op when ``enabled`` is false.
    """
    if not enabled:
        yield
        return
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before
