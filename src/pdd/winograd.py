"""Winograd F(2x2, 3x3): a frozen stride-1 3x3 convolution + BatchNorm with 2.25x fewer multiplies.

Each 2x2 block of outputs comes from the 4x4 input tile around it: the tile is transformed
(``B^T d B``, additions only), multiplied position by position with the transformed filter
(``G g G^T``, computed once in float64 and rounded once), and transformed back (``A^T m A``). Over
all tiles and channels the 16 positions are 16 GEMMs of (tiles, C) @ (C, K), which is where the
arithmetic goes; the transforms are passes over memory. On the 2-core AMD EPYC (AVX-512) one
such convolution + BatchNorm + ReLU takes, against the prepacked oneDNN call, 0.79x at 256@32,
0.66x at 512@16 and 0.64x at 1024@8 at batch 8, but 1.05x, 0.99x and 1.31x at batch 1; in the
whole ``pdd`` forward, with the ``pdd`` command's allocator setting (``pdd.allocator``), 0.92x at
batch 8 and 0.96x at batch 1 (benchmarks/README.md, "Winograd 3x3 convolutions"). So
``pdd.packed_convs`` takes it where ``eligible`` says: 256 channels or more and 16 tiles an image
(an 8x8 grid) or more. The rule never asks the batch, and one GEMM over all images sums each row
as it does for one image (tests/test_winograd.py holds both), so an image's result does not
depend on the batch it comes in. Its results are closer to float64 than the direct
convolution's (about 4e-7 of the output range against 1e-6).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MIN_CHANNELS", "MIN_TILES", "WinogradConv", "eligible"]

MIN_CHANNELS = 256
"""Input channels from which the transforms are repaid (see the module doc)."""
MIN_TILES = 16
"""2x2 output tiles an image (GEMM rows) from which the transforms are repaid (module doc)."""

# G: the filter transform of F(2x2, 3x3).
_G = torch.tensor(
    [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64
)


def eligible(conv: nn.Module, input_size: Sequence[int]) -> bool:
    """Whether ``conv`` on inputs of ``input_size`` [B, C, H, W] runs as Winograd: a plain 3x3
    convolution (stride 1, padding 1, no dilation or groups) over at least ``MIN_CHANNELS``
    channels, on an even grid of at least ``MIN_TILES`` 2x2 output tiles. The batch is not asked:
    an image's result must not depend on the batch it is scored in."""
    _, channels, height, width = input_size
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and channels >= MIN_CHANNELS
        and height % 2 == 0
        and width % 2 == 0
        and (height // 2) * (width // 2) >= MIN_TILES
    )


class WinogradConv:
    """``conv`` and the eval BatchNorm after it as F(2x2, 3x3); called like
    ``pdd.packed_convs.FoldedConv`` on channels-last [B, C, H, W] tensors, without a residual."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> None:
        weight = conv.weight.detach().double()
        bias = None if conv.bias is None else conv.bias.detach().double()
        if bn is not None:
            scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
            weight = weight * scale.reshape(-1, 1, 1, 1)
            shift = bn.bias.detach().double() - bn.running_mean.double() * scale
            bias = shift if bias is None else bias * scale + shift
        dtype = conv.weight.dtype
        out_channels, in_channels = weight.shape[:2]
        # (16, C, K): tile position x row of G g G^T, then the GEMM's (C, K) operand.
        g = _G.to(weight.device)
        transformed = torch.einsum("xi,kcij,yj->xykc", g, weight, g)
        self.filter = (
            transformed.reshape(16, out_channels, in_channels)
            .transpose(1, 2)
            .to(dtype)
            .contiguous()
        )
        self.bias = None if bias is None else bias.to(dtype)

    def __call__(
        self, x: Tensor, activation: str = "none", residual: Tensor | None = None
    ) -> Tensor:
        """conv(x), then ``activation``: ``"none"``, ``"relu"`` or ``"gelu"`` (exact)."""
        if residual is not None:
            raise ValueError("the Winograd convolution takes no residual")
        if activation not in ("none", "relu", "gelu"):
            raise ValueError(f"unsupported activation {activation!r} for the Winograd convolution")
        batch, _, height, width = x.shape
        rows, cols = height // 2, width // 2
        # Channels-last [B, C, H, W] is a contiguous [B, H, W, C]; pad H and W by one.
        padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))
        channels = padded.shape[3]
        # B^T d B: along the tile rows into one buffer, then along the columns into the tiles.
        half = padded.new_empty(4, batch, rows, width + 2, channels)
        for i, (a, b, sign) in enumerate(_tile_row_terms(padded, 1, rows)):
            (torch.add if sign > 0 else torch.sub)(a, b, out=half[i])
        tiles = padded.new_empty(4, 4, batch, rows, cols, channels)
        for i in range(4):
            for j, (a, b, sign) in enumerate(_tile_row_terms(half[i], 2, cols)):
                (torch.add if sign > 0 else torch.sub)(a, b, out=tiles[i, j])
        del half
        # One GEMM over every image's tiles: MKL's sums per row were measured not to depend on the
        # row count (tests/test_winograd.py asserts an image's bits alone and in batches).
        m = torch.bmm(tiles.view(16, -1, channels), self.filter)
        del tiles
        if self.bias is not None:
            # Position (1, 1) enters every output of its tile with weight +1 (A^T's column 1).
            m[5].add_(self.bias)
        m = m.view(4, 4, batch, rows, cols, -1)
        # A^T = [[1, 1, 1, 0], [0, 1, -1, -1]] along the tile rows, then along the columns.
        half_out = m.new_empty(2, 4, batch, rows, cols, m.shape[-1])
        torch.add(m[0], m[1], out=half_out[0]).add_(m[2])
        torch.sub(m[1], m[2], out=half_out[1]).sub_(m[3])
        del m
        out = x.new_empty(batch, rows, 2, cols, 2, half_out.shape[-1])
        for a in range(2):
            r = half_out[a]
            torch.add(r[0], r[1], out=out[:, :, a, :, 0]).add_(r[2])
            torch.sub(r[1], r[2], out=out[:, :, a, :, 1]).sub_(r[3])
        y = out.view(batch, height, width, -1)
        if activation == "relu":
            y.relu_()
        elif activation == "gelu":
            y = F.gelu(y)
        return y.permute(0, 3, 1, 2)


def _tile_row_terms(t: Tensor, dim: int, tiles: int) -> list[tuple[Tensor, Tensor, int]]:
    """The four rows of ``B^T d`` along ``dim`` as (first, second, sign): strided views of ``t``
    for every 4-wide tile at stride 2, combined as ``first + sign * second``."""
    step = (slice(None),) * dim + (slice(None, None, 2),)
    d = [t.narrow(dim, j, 2 * tiles - 1)[step] for j in range(4)]
    return [(d[0], d[2], -1), (d[1], d[2], 1), (d[2], d[1], -1), (d[1], d[3], -1)]
