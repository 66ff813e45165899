"""Where do Winograd 3x3 convolutions pay on this CPU? The measurement behind ``pdd.winograd``.

    python benchmarks/probe_winograd.py [--threads 2] [--repeats 9] [--default-allocator]
    python benchmarks/probe_winograd.py --whole [--rounds 4] [--tiles 4 2] [--min-tiles 16]

Issue 18's batch-8 goal asks `pdd` to run no slower than anomalib's RD while doing 7 % more
convolution arithmetic at the same fraction of the GEMM ceiling: only less arithmetic can close
that. Winograd's F(m x m, 3x3) computes a stride-1 3x3 convolution with (m+2)^2 GEMMs over
(m+2) x (m+2) input tiles instead of 9 m^2 multiplies per m x m outputs (2.25x fewer for m = 2,
4x fewer for m = 4), at the price of transforming the input and the output through memory. This
script times one such convolution + BatchNorm + ReLU as the package's
``pdd.winograd.WinogradConv`` with both tiles against the prepacked oneDNN convolution with its
BatchNorm and ReLU folded in (``pdd.packed_convs.FoldedConv``), at the 3x3 shapes of
Wide-ResNet-50-2's and the students' stride-1 blocks (256 px input) and batch 1 and 8, whatever
``pdd.winograd.output_tile`` would choose. Errors are the largest difference from the modules run
in float64, over the range of their output. The process keeps freed memory as the ``pdd`` command
does (``pdd.allocator``) unless ``--default-allocator``.

``--whole`` times the eval forward of a ``pdd`` model (random teachers, 256 px) at batch 1 and 8
with Winograd as ``output_tile`` chooses it and with it switched off (``MIN_CHANNELS`` out of
reach, every pack rebuilt), alternating in ``--rounds`` rounds of ``--repeats`` forwards; the
ratio is the median of the rounds' ratios. ``--tiles``, ``--min-tiles`` and ``--min-channels``
change ``pdd.winograd.TILES`` (the tile sizes it may choose), ``MIN_TILES`` and ``MIN_CHANNELS``
for the run; ``--against-tiles`` and ``--against-min-channels`` replace the "off" side by another
``TILES`` or ``MIN_CHANNELS``, to compare rules.
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
    p.add_argument("--tiles", type=int, nargs="+", help="--whole: pdd.winograd.TILES for this run")
    p.add_argument("--min-channels", type=int, help="--whole: pdd.winograd.MIN_CHANNELS")
    p.add_argument(
        "--against-tiles", type=int, nargs="+", help="--whole: compare with these TILES, not off"
    )
    p.add_argument(
        "--against-min-channels", type=int, help="--whole: compare with this MIN_CHANNELS, not off"
    )
    args = p.parse_args()
    device = setup(args)
    if not args.default_allocator:
        allocator.keep_freed_memory()  # as the pdd command does: no fresh pages for each buffer
    torch.manual_seed(0)
    print(f"{machine(torch.device('cpu'))}; start: {load_average()}")
    if args.whole:
        if args.min_tiles is not None:
            winograd.MIN_TILES = args.min_tiles
        if args.tiles:
            winograd.TILES = tuple(args.tiles)
        if args.min_channels is not None:
            winograd.MIN_CHANNELS = args.min_channels
        against = None
        if args.against_tiles or args.against_min_channels is not None:
            against = (
                winograd.MIN_CHANNELS
                if args.against_min_channels is None
                else args.against_min_channels,
                tuple(args.against_tiles) if args.against_tiles else winograd.TILES,
            )
        _whole_forward(device, args.rounds, min(args.repeats, 4), against)
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
                "F(2x2)": functools.partial(WinogradConv(conv, bn, 2), x, "relu"),
                "F(4x4)": functools.partial(WinogradConv(conv, bn, 4), x, "relu"),
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
            today_ms, small_ms, large_ms = (statistics.median(times[key]) / batch for key in paths)
            cells = [f"{today_ms:.2f}", f"{small_ms:.2f}", f"{small_ms / today_ms:.2f}"]
            cells += [f"{large_ms:.2f}", f"{large_ms / today_ms:.2f}"]
            cells += [f"{error:.1e}" for error in errors]
            rows.append([batch, f"{channels}@{grid}x{grid}", *cells])
    print(f"end: {load_average()}\n")
    print(
        table(
            [
                "batch",
                "3x3 conv, channels@grid",
                "prepacked oneDNN + BN + ReLU, ms/image",
                "F(2x2,3x3) + BN + ReLU, ms/image",
                "ratio",
                "F(4x4,3x3) + BN + ReLU, ms/image",
                "ratio",
                "error today / range",
                "error F(2x2) / range",
                "error F(4x4) / range",
            ],
            rows,
        )
    )


def _whole_forward(
    device: torch.device,
    rounds: int,
    repeats: int,
    against: tuple[int, tuple[int, ...]] | None,
) -> None:
    """The pdd eval forward with Winograd as ``output_tile`` chooses against none (or against
    ``against``'s ``MIN_CHANNELS`` and ``TILES``), alternating."""
    import pdd

    model = pdd.create_model("pdd", teachers="random", image_size=256).eval()
    rule = (winograd.MIN_CHANNELS, winograd.TILES)
    other = (1 << 30, winograd.TILES) if against is None else against

    def per_image(on: bool, x: Tensor) -> float:
        winograd.MIN_CHANNELS, winograd.TILES = rule if on else other
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
    print(f"end: {load_average()}\n")

    def name(side: tuple[int, tuple[int, ...]]) -> str:
        return f"{side[0]}+ channels, tiles {side[1]}"

    base = "without" if against is None else name(other)
    headers = ["batch", f"{base}, ms/image", f"{name(rule)}, ms/image", "ratio", "rounds"]
    print(table(headers, rows))


def _relative_error(actual: Tensor, reference: Tensor) -> float:
    span = (reference.max() - reference.min()).item()
    return (actual.double() - reference).abs().max().item() / span


if __name__ == "__main__":
    main()
