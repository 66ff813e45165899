"""Where do Winograd 3x3 convolutions pay on this CPU? The measurement behind ``pdd.winograd``.

    python benchmarks/probe_winograd.py [--threads 2] [--repeats 9]

Issue 18's batch-8 goal asks `pdd` to run no slower than anomalib's RD while doing 7 % more
convolution arithmetic at the same fraction of the GEMM ceiling: only less arithmetic can close
that. Winograd's F(2x2, 3x3) computes a stride-1 3x3 convolution with 16 GEMMs over 4x4 input tiles
instead of 36 multiplies per 2x2 outputs (2.25x fewer), at the price of transforming the input
(4x its size) and the output through memory. This script times one such convolution + BatchNorm +
ReLU as the package's ``pdd.winograd.WinogradConv`` (written with PyTorch operations: tiles as strided
views, the 16 GEMMs as one ``bmm``) against the prepacked oneDNN convolution with its BatchNorm and
ReLU folded in (``pdd.packed_convs.FoldedConv``), at the 3x3 shapes of Wide-ResNet-50-2's and the
students' stride-1 blocks (256 px input) and batch 1 and 8, whatever ``pdd.winograd.eligible``
would choose. Errors are the largest difference from the modules run in float64, over the range
of their output. The process keeps freed memory as the ``pdd`` command does (``pdd.allocator``).
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
from pdd.winograd import WinogradConv

# (channels in = out, grid) of the stride-1 3x3 convolutions in the pdd forward at 256 px.
SHAPES = ((128, 64), (256, 32), (512, 16), (1024, 8))
BATCHES = (8, 1)


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
            conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
            bn = nn.BatchNorm2d(channels).eval()
            with torch.no_grad():
                bn.running_mean.normal_(0, 0.1), bn.running_var.uniform_(0.5, 2)
                bn.weight.uniform_(0.5, 1.5), bn.bias.normal_(0, 0.1)
            x = torch.randn(batch, channels, grid, grid).relu_()
            x = x.contiguous(memory_format=torch.channels_last)
            paths = {
                "today": functools.partial(FoldedConv(conv, bn, list(x.shape)), x, "relu"),
                "winograd": functools.partial(WinogradConv(conv, bn), x, "relu"),
            }
            with torch.no_grad():
                reference = F.relu(bn.double()(conv.double()(x.double())))
                conv.float(), bn.float()
                errors = [_relative_error(path(), reference) for path in paths.values()]
                # Interleaved: three rounds, each timing both paths.
                times: dict[str, list[float]] = {key: [] for key in paths}
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
