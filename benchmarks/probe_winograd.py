"""Where do Winograd 3x3 convolutions pay on this CPU? The measurement behind ``pdd.winograd``.

    python benchmarks/probe_winograd.py [--threads 2] [--repeats 9] [--default-allocator]
    python benchmarks/probe_winograd.py --whole [--rounds 4] [--min-tiles 64]   # whole forward

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
of their output. The process keeps freed memory as the ``pdd`` command does (``pdd.allocator``)
unless ``--default-allocator``.

``--whole`` times the eval forward of a ``pdd`` model (random teachers, 256 px) at batch 1 and 8
with Winograd where ``eligible`` allows it and with it switched off (``MIN_CHANNELS`` out of
reach, every pack rebuilt), alternating in ``--rounds`` rounds of ``--repeats`` forwards; the
ratio is the median of the rounds' ratios. ``--min-tiles`` changes ``pdd.winograd.MIN_TILES``
(tiles an image from which a convolution is taken) for the run, to compare rules.
"""

from __future__ import annotations

import functools
import statistics

import torch
import torch.nn.functional as F
from _common import load_average, machine, median_seconds, parser, setup, table
from torch import Tensor, nn

from pdd import allocator, winograd
from pdd.packed_convs import FoldedConv
from pdd.winograd import WinogradConv

# (channels in = out, grid) of the stride-1 3x3 convolutions in the pdd forward at 256 px.
SHAPES = ((128, 64), (256, 32), (512, 16), (1024, 8))
BATCHES = (8, 1)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(threads=2, repeats=9)
    p.add_argument("--default-allocator", action="store_true", help="glibc as it comes")
    p.add_argument("--whole", action="store_true", help="the whole pdd forward, on and off")
    p.add_argument("--rounds", type=int, default=4, help="--whole: alternating rounds")
    p.add_argument("--min-tiles", type=int, help="--whole: pdd.winograd.MIN_TILES for this run")
    args = p.parse_args()
    device = setup(args)
    if not args.default_allocator:
        allocator.keep_freed_memory()  # as the pdd command does: no fresh pages for each buffer
    torch.manual_seed(0)
    print(f"{machine(torch.device('cpu'))}; start: {load_average()}")
    if args.whole:
        if args.min_tiles is not None:
            winograd.MIN_TILES = args.min_tiles
        _whole_forward(device, args.rounds, min(args.repeats, 4))
        return
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


def _whole_forward(device: torch.device, rounds: int, repeats: int) -> None:
    """The pdd eval forward with Winograd where eligible against none, alternating."""
    import pdd

    model = pdd.create_model("pdd", teachers="random", image_size=256).eval()
    threshold = winograd.MIN_CHANNELS

    def per_image(on: bool, x: Tensor) -> float:
        winograd.MIN_CHANNELS = threshold if on else 1 << 30
        for module in model.modules():
            if hasattr(module, "_packs"):
                module._packs.clear()
        with torch.no_grad():
            return median_seconds(lambda: model(x), device, repeats) * 1e3 / len(x)

    rows = []
    for batch in BATCHES:
        x = torch.randn(batch, 3, 256, 256)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(rounds):
            for on in (False, True):
                times[on].append(per_image(on, x))
        ratios = [w / d for w, d in zip(times[True], times[False], strict=True)]
        medians = [statistics.median(times[on]) for on in (False, True)]
        cells = [f"{m:.1f}" for m in medians] + [f"{statistics.median(ratios):.3f}"]
        rows.append([batch, *cells, " / ".join(f"{r:.3f}" for r in ratios)])
    winograd.MIN_CHANNELS = threshold
    print(f"end: {load_average()}\n")
    headers = ["batch", "without, ms/image", "with Winograd, ms/image", "ratio", "rounds"]
    print(table(headers, rows))


def _relative_error(actual: Tensor, reference: Tensor) -> float:
    span = (reference.max() - reference.min()).item()
    return (actual.double() - reference).abs().max().item() / span


if __name__ == "__main__":
    main()
