"""Where would Winograd 3x3 convolutions pay on this CPU? A probe; the package does not use it.

    python benchmarks/probe_winograd.py [--threads 2] [--repeats 9] [--default-allocator]

Issue 18's batch-8 goal asks `pdd` to run no slower than anomalib's RD while doing 7 % more
convolution arithmetic at the same fraction of the GEMM ceiling: only less arithmetic can close
that. Winograd's F(2x2, 3x3) computes a stride-1 3x3 convolution with 16 GEMMs over 4x4 input tiles
instead of 36 multiplies per 2x2 outputs (2.25x fewer), at the price of transforming the input
(4x its size) and the output through memory. This script times one such convolution + BatchNorm +
ReLU, written here with PyTorch operations (tiles as strided views, the 16 GEMMs as one ``bmm``,
the filter transform in float64 rounded once), against the prepacked oneDNN convolution with its
BatchNorm and ReLU folded in (``pdd.packed_convs.FoldedConv``), at the 3x3 shapes of
Wide-ResNet-50-2's and the students' stride-1 blocks (256 px input) and batch 1 and 8. Errors are
the largest difference from the modules run in float64, over the range of their output. The
process keeps freed memory as the ``pdd`` command does (``pdd.allocator``) unless
``--default-allocator``. Why the package does not take it (yet): benchmarks/README.md, "Winograd 3x3
convolutions".
"""

from __future__ import annotations

import functools
import statistics

import torch
import torch.nn.functional as F
from _common import load_average, machine, median_seconds, parser, setup, table
from torch import Tensor, nn

from pdd import allocator
from pdd.packed_convs import FoldedConv

# (channels in = out, grid) of the stride-1 3x3 convolutions in the pdd forward at 256 px.
SHAPES = ((128, 64), (256, 32), (512, 16), (1024, 8))
BATCHES = (8, 1)


# F(2x2, 3x3): G is the filter transform; B^T and A^T are applied below as additions.
_G = torch.tensor(
    [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64
)


class WinogradConv:
    """``relu(bn(conv(x)))`` for a 3x3 conv (stride 1, padding 1) as F(2x2, 3x3), on channels-last
    [B, C, H, W] inputs with H and W even."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        weight = conv.weight.detach().double() * scale.reshape(-1, 1, 1, 1)
        self.bias = (bn.bias.detach().double() - bn.running_mean.double() * scale).float()
        out_channels, in_channels = weight.shape[:2]
        transformed = torch.einsum("xi,kcij,yj->xykc", _G, weight, _G)  # G g G^T
        self.filter = transformed.reshape(16, out_channels, in_channels).transpose(1, 2)
        self.filter = self.filter.float().contiguous()

    def __call__(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        rows, cols = height // 2, width // 2
        padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # [B, H + 2, W + 2, C]
        channels = padded.shape[3]
        # B^T d B: along the tile rows into one buffer, then along the columns into the tiles.
        half = padded.new_empty(4, batch, rows, width + 2, channels)
        for i, (a, b, sign) in enumerate(_tile_row_terms(padded, 1, rows)):
            (torch.add if sign > 0 else torch.sub)(a, b, out=half[i])
        tiles = padded.new_empty(4, 4, batch, rows, cols, channels)
        for i in range(4):
            for j, (a, b, sign) in enumerate(_tile_row_terms(half[i], 2, cols)):
                (torch.add if sign > 0 else torch.sub)(a, b, out=tiles[i, j])
        m = torch.bmm(tiles.view(16, -1, channels), self.filter)
        m[5].add_(self.bias)  # tile position (1, 1) reaches every output of its tile once
        m = m.view(4, 4, batch, rows, cols, -1)
        # A^T = [[1, 1, 1, 0], [0, 1, -1, -1]] along the tile rows, then along the columns.
        half_out = m.new_empty(2, 4, batch, rows, cols, m.shape[-1])
        torch.add(m[0], m[1], out=half_out[0]).add_(m[2])
        torch.sub(m[1], m[2], out=half_out[1]).sub_(m[3])
        out = x.new_empty(batch, rows, 2, cols, 2, m.shape[-1])
        for a in range(2):
            r = half_out[a]
            torch.add(r[0], r[1], out=out[:, :, a, :, 0]).add_(r[2])
            torch.sub(r[1], r[2], out=out[:, :, a, :, 1]).sub_(r[3])
        return out.view(batch, height, width, -1).relu_().permute(0, 3, 1, 2)


def _tile_row_terms(t: Tensor, dim: int, tiles: int) -> list[tuple[Tensor, Tensor, int]]:
    """The four rows of ``B^T d`` along ``dim`` as (first, second, sign): strided views of ``t``
    for every 4-wide tile at stride 2, combined as ``first + sign * second``."""
    step = (slice(None),) * dim + (slice(None, None, 2),)
    d = [t.narrow(dim, j, 2 * tiles - 1)[step] for j in range(4)]
    return [(d[0], d[2], -1), (d[1], d[2], 1), (d[2], d[1], -1), (d[1], d[3], -1)]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(threads=2, repeats=9)
    p.add_argument("--default-allocator", action="store_true", help="glibc as it comes")
    args = p.parse_args()
    device = setup(args)
    if not args.default_allocator:
        allocator.keep_freed_memory()  # as the pdd command does: no fresh pages for each buffer
    torch.manual_seed(0)
    print(f"{machine(torch.device('cpu'))}; start: {load_average()}")
    rows = []
    for batch in BATCHES:
        for channels, grid in SHAPES:
            conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
            bn = nn.BatchNorm2d(channels).eval()
            with torch.no_grad():
                bn.running_mean.normal_(0, 0.1), bn.running_var.uniform_(0.5, 2)
                bn.weight.uniform_(0.5, 1.5), bn.bias.normal_(0, 0.1)
            x = torch.randn(batch, channels, grid, grid).relu_()
            x = x.contiguous(memory_format=torch.channels_last)
            paths = {
                "today": functools.partial(FoldedConv(conv, bn, list(x.shape)), x, "relu"),
                "winograd": functools.partial(WinogradConv(conv, bn), x),
            }
            with torch.no_grad():
                reference = F.relu(bn.double()(conv.double()(x.double())))
                conv.float(), bn.float()
                errors = [_relative_error(path(), reference) for path in paths.values()]
                # Interleaved: three rounds, each timing both paths.
                times: dict[str, list[float]] = {key: [] for key in paths}
                for _ in range(3):
                    for key, path in paths.items():
                        times[key].append(median_seconds(path, device, args.repeats) * 1e3)
            today_ms, wino_ms = (statistics.median(times[key]) / batch for key in paths)
            cells = [f"{today_ms:.2f}", f"{wino_ms:.2f}", f"{wino_ms / today_ms:.2f}"]
            cells += [f"{error:.1e}" for error in errors]
            rows.append([batch, f"{channels}@{grid}x{grid}", *cells])
    print(f"end: {load_average()}\n")
    print(
        table(
            [
                "batch",
                "3x3 conv, channels@grid",
                "prepacked oneDNN + BN + ReLU, ms/image",
                "Winograd F(2x2,3x3) + BN + ReLU, ms/image",
                "ratio",
                "error today / range",
                "error Winograd / range",
            ],
            rows,
        )
    )


def _relative_error(actual: Tensor, reference: Tensor) -> float:
    span = (reference.max() - reference.min()).item()
    return (actual.double() - reference).abs().max().item() / span


if __name__ == "__main__":
    main()
