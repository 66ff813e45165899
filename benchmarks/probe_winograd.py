"""Would Winograd 3x3 convolutions pay on this CPU? A probe, not a code path of the package.

    python benchmarks/probe_winograd.py [--threads 2] [--repeats 9]

Issue 18's batch-8 goal asks `pdd` to run no slower than anomalib's RD while doing 7 % more
convolution arithmetic at the same fraction of the GEMM ceiling: only less arithmetic can close
that. Winograd's F(2x2, 3x3) computes a stride-1 3x3 convolution with 16 GEMMs over 4x4 input tiles
instead of 36 multiplies per 2x2 outputs (2.25x fewer), at the price of transforming the input
(4x its size) and the output through memory. This script times one such convolution, written with
PyTorch operations (tiles as strided views, the 16 GEMMs as one ``bmm``, bias and ReLU applied
after the output transform), against the path the package takes today: the prepacked oneDNN
convolution with its BatchNorm and ReLU folded in (``pdd.packed_convs.FoldedConv``), at the 3x3
shapes of Wide-ResNet-50-2's and the students' stride-1 blocks (256 px input) and batch 1 and 8.
Errors are the largest difference from a float64 ``conv2d`` over the range of its output. The
process keeps freed memory as the ``pdd`` command does (``pdd.allocator``).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import load_average, machine, parser, setup, table
from torch import Tensor, nn

from pdd import allocator
from pdd.packed_convs import FoldedConv

# (channels in = out, grid) of the stride-1 3x3 convolutions in the pdd forward at 256 px.
SHAPES = ((128, 64), (256, 32), (512, 16), (1024, 8))
BATCHES = (8, 1)
# F(2x2, 3x3): filter transform G, input transform B^T (rows), output transform A^T (rows).
_G = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=torch.float64)


def transformed_filter(weight: Tensor) -> Tensor:
    """(out, in, 3, 3) -> (16, in, out): G w G^T per tile position, in float64, rounded once."""
    u = torch.einsum("xi,kcij,yj->xykc", _G, weight.double(), _G)
    return u.reshape(16, weight.shape[0], weight.shape[1]).transpose(1, 2).float().contiguous()


def _input_rows(t: Tensor, dim: int, tiles: int) -> list[Tensor]:
    """B^T applied along ``dim``: the four rows of every 4-wide tile (stride 2) as strided views."""
    index = (slice(None),) * dim + (slice(None, None, 2),)
    d = [t.narrow(dim, j, 2 * tiles - 1)[index] for j in range(4)]
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def winograd_conv_relu(x: Tensor, u: Tensor, bias: Tensor) -> Tensor:
    """relu(conv3x3(x) + bias), stride 1, padding 1; ``x`` is (N, H, W, C) with H and W even."""
    n, h, w, c = x.shape
    th, tw, k = h // 2, w // 2, u.shape[2]
    padded = F.pad(x, (0, 0, 1, 1, 1, 1))
    v = torch.empty(4, 4, n, th, tw, c)
    for i, row in enumerate(_input_rows(padded, 1, th)):
        for j, tile in enumerate(_input_rows(row, 2, tw)):
            v[i, j].copy_(tile)
    m = torch.bmm(v.view(16, n * th * tw, c), u).view(4, 4, n, th, tw, k)
    y = torch.empty(n, th, 2, tw, 2, k)
    for a, r in enumerate((m[0] + m[1] + m[2], m[1] - m[2] - m[3])):  # A^T along the rows
        torch.add(r[0] + r[1], r[2], out=y[:, :, a, :, 0])  # and along the columns
        torch.sub(r[1] - r[2], r[3], out=y[:, :, a, :, 1])
    return y.view(n, h, w, k).add_(bias).relu_()


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(threads=2, repeats=9)
    args = p.parse_args()
    setup(args)
    allocator.keep_freed_memory()  # as the pdd command does: no fresh pages for each call's buffers
    torch.manual_seed(0)
    print(f"{machine(torch.device('cpu'))}; start: {load_average()}")
    rows = []
    for batch in BATCHES:
        for channels, grid in SHAPES:
            conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            bn = nn.BatchNorm2d(channels).eval()
            with torch.no_grad():
                bn.running_mean.normal_(0, 0.1), bn.running_var.uniform_(0.5, 2)
                bn.weight.uniform_(0.5, 1.5), bn.bias.normal_(0, 0.1)
            packed = FoldedConv(conv, bn, [batch, channels, grid, grid])
            folded = _folded_weight(conv, bn)
            u = transformed_filter(folded)
            x = torch.randn(batch, channels, grid, grid).relu_()
            x_last = x.contiguous(memory_format=torch.channels_last)
            x_hwc = x.permute(0, 2, 3, 1).contiguous()
            with torch.no_grad():
                reference = F.conv2d(
                    x.double(), folded.double(), packed.bias.double(), padding=1
                ).relu()
                span = (reference.max() - reference.min()).item()
                ours = winograd_conv_relu(x_hwc, u, packed.bias).permute(0, 3, 1, 2)
                today = packed(x_last, "relu")
                errors = [(y.double() - reference).abs().max().item() / span for y in (today, ours)]
                # Interleaved: three rounds, each timing both paths.
                paths = {
                    "today": functools.partial(packed, x_last, "relu"),
                    "winograd": functools.partial(winograd_conv_relu, x_hwc, u, packed.bias),
                }
                times = {key: [] for key in paths}
                for _ in range(3):
                    for key, path in paths.items():
                        times[key].append(_median_ms(path, args.repeats))
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
                "Winograd F(2x2,3x3) + bias + ReLU, ms/image",
                "ratio",
                "error today / range",
                "error Winograd / range",
            ],
            rows,
        )
    )


def _folded_weight(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tensor:
    """The conv's weight with the BatchNorm's scale folded in (float64, rounded once)."""
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return (conv.weight.detach().double() * scale.reshape(-1, 1, 1, 1)).float()


if __name__ == "__main__":
    main()
