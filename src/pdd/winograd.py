"""Winograd F(m x m, 3x3): a frozen stride-1 3x3 convolution + BatchNorm with fewer multiplies.

Each m x m block of outputs (m = 2 or 4) comes from the (m+2) x (m+2) input tile around it: the
tile is transformed (``B^T d B``), multiplied position by position with the transformed filter
(``G g G^T``, computed once in float64 and rounded once), and transformed back (``A^T M A``). Over
all tiles and channels the (m+2)^2 positions are as many GEMMs of (tiles, C) @ (C, K), which is
where the arithmetic goes: 4 multiplies per output and channel pair for F(2x2, 3x3), 2.25 for
F(4x4, 3x3), against the direct convolution's 9. The transforms are passes over memory, written
with additions and multiplications by powers of two only, so each step rounds once and alike
whether or not the kernel fuses it.

``output_tile`` takes the larger tile where an image has ``MIN_TILES`` of them and the smaller one
otherwise, for convolutions of ``MIN_CHANNELS`` channels or more: measured where each repays its
transforms (benchmarks/README.md, "Winograd 3x3 convolutions"). The rule never asks the batch, and
one GEMM over all images sums each row as it does for one image (tests/test_winograd.py holds
both), so an image's result does not depend on the batch it comes in. F(2x2)'s results are closer
to float64 than the direct convolution's (about 4e-7 of the output range against 1e-6); F(4x4)'s
are further (about 5e-6 to 9e-6: its filter transform has sixths, its output transform weights
up to 8).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MIN_CHANNELS", "MIN_TILES", "TILES", "WinogradConv", "output_tile"]

MIN_CHANNELS = 256
"""Input channels from which the transforms are repaid (see the module doc)."""
MIN_TILES = 16
"""Output tiles an image (GEMM rows) from which a tile size's transforms are repaid."""
TILES = (4, 2)
"""The output tile sizes ``output_tile`` may choose, largest first."""

# G, the filter transform of F(m x m, 3x3): (m + 2) x 3.
_FILTER_TRANSFORMS = {
    2: torch.tensor(
        [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    ),
    4: torch.tensor(
        [
            [1 / 4, 0.0, 0.0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0.0, 0.0, 1.0],
        ],
        dtype=torch.float64,
    ),
}


def output_tile(conv: nn.Module, input_size: Sequence[int]) -> int | None:
    """The output tile (4 or 2) ``conv`` runs with on inputs of ``input_size`` [B, C, H, W], or
    None for the direct convolution. Only a plain 3x3 convolution (stride 1, padding 1, no
    dilation or groups) over at least ``MIN_CHANNELS`` channels is a candidate; it takes the
    larger tile that divides the grid into at least ``MIN_TILES`` tiles. The batch is not asked:
    an image's result must not depend on the batch it is scored in."""
    _, channels, height, width = input_size
    plain = (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )
    if not plain or channels < MIN_CHANNELS:
        return None
    for tile in TILES:
        divides = height % tile == 0 and width % tile == 0
        if divides and (height // tile) * (width // tile) >= MIN_TILES:
            return tile
    return None


class WinogradConv:
    """``conv`` and the eval BatchNorm after it as F(``tile`` x ``tile``, 3x3); called like
    ``pdd.packed_convs.FoldedConv`` on channels-last [B, C, H, W] tensors, without a residual."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, tile: int = 2) -> None:
        if tile not in _FILTER_TRANSFORMS:
            raise ValueError(f"Winograd output tiles are 2 or 4, got {tile}")
        self.tile = tile
        bias = None if conv.bias is None else conv.bias.detach().double()
        scale = None
        if bn is not None:
            scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
            shift = bn.bias.detach().double() - bn.running_mean.double() * scale
            bias = shift if bias is None else bias * scale + shift
        self.filter = _transformed_filter(conv.weight.detach(), scale, tile)
        self.bias = None if bias is None else bias.to(conv.weight.dtype)

    def __call__(
        self, x: Tensor, activation: str = "none", residual: Tensor | None = None
    ) -> Tensor:
        """conv(x), then ``activation``: ``"none"``, ``"relu"`` or ``"gelu"`` (exact)."""
        if residual is not None:
            raise ValueError("the Winograd convolution takes no residual")
        if activation not in ("none", "relu", "gelu"):
            raise ValueError(f"unsupported activation {activation!r} for the Winograd convolution")
        tile, size = self.tile, self.tile + 2
        input_rows, output_rows = _TRANSFORMS[tile]
        batch, _, height, width = x.shape
        rows, cols = height // tile, width // tile
        # Channels-last [B, C, H, W] is a contiguous [B, H, W, C]; pad H and W by one.
        padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))
        channels = padded.shape[3]
        # B^T d B: along the tile rows into one buffer, then along the columns into the tiles.
        half = padded.new_empty(size, batch, rows, width + 2, channels)
        input_rows(_tile_views(padded, 1, rows, tile), list(half))
        tiles = padded.new_empty(size, size, batch, rows, cols, channels)
        for i in range(size):
            input_rows(_tile_views(half[i], 2, cols, tile), list(tiles[i]))
        del half
        # One GEMM over every image's tiles: MKL's sums per row were measured not to depend on the
        # row count (tests/test_winograd.py asserts an image's bits alone and in batches).
        m = torch.bmm(tiles.view(size * size, -1, channels), self.filter)
        del tiles
        if self.bias is not None:
            # Position (1, 1) enters every output of its tile with weight +1 (A^T's column 1).
            m[size + 1].add_(self.bias)
        m = m.view(size, size, batch, rows, cols, -1)
        # A^T M A: along the tile rows, then along the columns into the output's places.
        half_out = m.new_empty(tile, size, batch, rows, cols, m.shape[-1])
        output_rows(list(m), list(half_out))
        del m
        out = x.new_empty(batch, rows, tile, cols, tile, half_out.shape[-1])
        for a in range(tile):
            output_rows(list(half_out[a]), [out[:, :, a, :, b] for b in range(tile)])
        y = out.view(batch, height, width, -1)
        if activation == "relu":
            y.relu_()
        elif activation == "gelu":
            y = F.gelu(y)
        return y.permute(0, 3, 1, 2)


def _transformed_filter(weight: Tensor, scale: Tensor | None, tile: int, chunk: int = 32) -> Tensor:
    """``G (weight x scale) G^T`` in float64, rounded once to ``weight``'s dtype, laid out as
    the GEMMs' operands: (positions, C, K), position (x, y) at x (tile + 2) + y.

    Computed a few input channels at a time: a whole 1024-channel filter's float64 temporaries
    are hundreds of MB, and one einsum over them took 1.5 s of a 256 px ``pdd`` process's first
    forward (this way 0.3 s; benchmarks/README.md)."""
    out_channels, in_channels = weight.shape[:2]
    size = tile + 2
    g = _FILTER_TRANSFORMS[tile].to(weight.device)
    by_input = weight.permute(1, 2, 3, 0)  # [C, 3, 3, K]: the output channels innermost
    out = weight.new_empty(size, size, in_channels, out_channels)
    for start in range(0, in_channels, chunk):
        part = by_input[start : start + chunk].double()
        if scale is not None:
            part = part * scale  # the BatchNorm folded in, per output channel
        count = part.shape[0]
        # G along the filter's rows, then along its columns: [c, x, y, k].
        rows = torch.matmul(g, part.reshape(count, 3, 3 * out_channels))
        both = torch.matmul(g, rows.reshape(count, size, 3, out_channels))
        out[:, :, start : start + count] = both.permute(1, 2, 0, 3)
    return out.reshape(size * size, in_channels, out_channels)


def _tile_views(t: Tensor, dim: int, tiles: int, tile: int) -> list[Tensor]:
    """Row j of every (tile + 2)-wide input tile along ``dim`` (tiles at stride ``tile``), as
    strided views of ``t``: the operands of ``B^T d``."""
    step = (slice(None),) * dim + (slice(None, None, tile),)
    return [t.narrow(dim, j, tile * (tiles - 1) + 1)[step] for j in range(tile + 2)]


def _input_rows_2(d: Sequence[Tensor], out: Sequence[Tensor]) -> None:
    """B^T d for F(2x2, 3x3): B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]."""
    torch.sub(d[0], d[2], out=out[0])
    torch.add(d[1], d[2], out=out[1])
    torch.sub(d[2], d[1], out=out[2])
    torch.sub(d[1], d[3], out=out[3])


def _output_rows_2(m: Sequence[Tensor], out: Sequence[Tensor]) -> None:
    """A^T m for F(2x2, 3x3): A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]."""
    torch.add(m[0], m[1], out=out[0]).add_(m[2])
    torch.sub(m[1], m[2], out=out[1]).sub_(m[3])


def _input_rows_4(d: Sequence[Tensor], out: Sequence[Tensor]) -> None:
    """B^T d for F(4x4, 3x3), B^T's rows

        [4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1],

    grouped so that every multiplier is a power of two (exact in float32)."""
    outer = torch.sub(d[4], d[2])  # rows 0, 3 and 4 share d4 - d2
    torch.add(outer, torch.sub(d[0], d[2]), alpha=4, out=out[0])
    torch.add(d[3], d[4], out=out[1]).add_(torch.add(d[1], d[2]), alpha=-4)
    torch.sub(d[4], d[3], out=out[2]).add_(torch.sub(d[1], d[2]), alpha=4)
    odd = torch.sub(d[3], d[1])
    torch.add(outer, odd, alpha=2, out=out[3])
    torch.add(outer, odd, alpha=-2, out=out[4])
    torch.sub(d[5], d[3], out=out[5]).add_(torch.sub(d[1], d[3]), alpha=4)


def _output_rows_4(m: Sequence[Tensor], out: Sequence[Tensor]) -> None:
    """A^T m for F(4x4, 3x3): A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0],
    [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]."""
    even_a, odd_a = torch.add(m[1], m[2]), torch.sub(m[1], m[2])
    even_b, odd_b = torch.add(m[3], m[4]), torch.sub(m[3], m[4])
    torch.add(even_a, even_b, out=out[0]).add_(m[0])
    torch.add(odd_a, odd_b, alpha=2, out=out[1])
    torch.add(even_a, even_b, alpha=4, out=out[2])
    torch.add(odd_a, odd_b, alpha=8, out=out[3]).add_(m[5])


_Rows = Callable[[Sequence[Tensor], Sequence[Tensor]], None]
_TRANSFORMS: dict[int, tuple[_Rows, _Rows]] = {
    2: (_input_rows_2, _output_rows_2),
    4: (_input_rows_4, _output_rows_4),
}
