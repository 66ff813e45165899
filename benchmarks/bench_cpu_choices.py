"""Four CPU choices of issue 18, each against what it replaced, in paired interleaved rounds.

    python benchmarks/bench_cpu_choices.py [--threads 2] [--repeats 7]
        [--parts linear adam allocator packed]

* ``linear``: VMamba-T's projections (``in_proj``, ``x_proj``, ``out_proj``, the patch-merge
  linear) at their 256-px shapes, batch 1 and 8, as ``F.linear`` (MKL's GEMM) and as
  ``pdd.conv_backend.linear`` (a oneDNN 1x1 convolution from ``ONEDNN_MIN_ROWS`` rows); then the
  whole random VMamba-T teacher both ways (``ONEDNN_MIN_ROWS`` raised out of reach for the old way)
  with the largest feature difference over the feature range.
* ``adam``: one optimiser step over the trainable parameters of ``rd4ad`` and ``pdd`` (random
  gradients): torch's default per-tensor Adam on the CPU against ``fused=True``
  (``pdd.training.module.build_optimizer``'s choice).
* ``allocator``: a ``pdd`` and a ``rd4ad`` eval forward at batch 1 and 8 in two child processes, one
  with ``pdd.allocator.keep_freed_memory()`` (the ``pdd`` command's setting), one without, taking
  turns; each child reports the median of its rounds.
* ``packed``: the Wide-ResNet teacher (4 levels), one ``pdd`` student and the whole ``pdd`` and
  ``rd4ad`` eval forward at 256 px, batch 1 and 8, with the prepacked conv + BN convolutions
  (``pdd.packed_convs``, as they run now) and without (``packed_convs.disabled()``), with the
  largest map (or feature) difference over its range. Runs last, in this process, with
  ``keep_freed_memory()`` applied as the ``pdd`` command does.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import load_average, machine, parser, setup, table

from pdd import allocator, conv_backend, packed_convs

# (layer, tokens per image at 256 px, in channels, out channels) of VMamba-T v0.
PROJECTIONS = [
    ("stage 1 in_proj", 64 * 64, 96, 384),
    ("stage 1 x_proj", 64 * 64, 192, 152),
    ("stage 1 out_proj", 64 * 64, 192, 96),
    ("patch merge 1", 32 * 32, 384, 192),
    ("stage 3 in_proj", 16 * 16, 384, 1536),
    ("stage 3 x_proj", 16 * 16, 768, 224),
    ("stage 3 out_proj", 16 * 16, 768, 384),
    ("stage 4 in_proj", 8 * 8, 768, 3072),
    ("stage 4 out_proj", 8 * 8, 1536, 768),
]


def paired(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each call, the calls taking turns round after round (one warm-up round)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(repeats + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def linear_part(repeats: int) -> str:
    rows = []
    for batch in (1, 8):
        for name, tokens, c_in, c_out in PROJECTIONS:
            x = torch.randn(batch, tokens, c_in)
            weight = torch.randn(c_out, c_in)
            t = paired(
                {
                    "mkl": lambda x=x, w=weight: F.linear(x, w),
                    "ours": lambda x=x, w=weight: conv_backend.linear(x, w),
                },
                repeats,
            )
            path = "oneDNN" if batch * tokens >= conv_backend.ONEDNN_MIN_ROWS else "GEMM (same)"
            rows.append(
                [batch, name, batch * tokens, f"{t['mkl'] * 1e3:.3f}", f"{t['ours'] * 1e3:.3f}",
                 f"{t['ours'] / t['mkl']:.2f}", path]
            )
    out = table(
        ["batch", "layer", "rows", "F.linear ms", "conv_backend.linear ms", "ratio", "taken path"],
        rows,
    )
    from pdd.teachers import build

    torch.manual_seed(0)
    teacher = build("vmamba_tiny_v0").eval()
    rows = []
    for batch in (1, 8):
        x = torch.randn(batch, 3, 256, 256)
        features: dict[str, list[torch.Tensor]] = {}
        t = paired(
            {
                mode: lambda mode=mode, x=x, features=features: _vmamba(teacher, x, mode, features)
                for mode in ("mkl", "ours")
            },
            repeats,
        )
        diff = max(
            float((a - b).abs().max() / (a.max() - a.min()))
            for a, b in zip(features["mkl"], features["ours"], strict=True)
        )
        rows.append(
            [batch, f"{t['mkl'] / batch * 1e3:.1f}", f"{t['ours'] / batch * 1e3:.1f}",
             f"{t['ours'] / t['mkl']:.3f}", f"{diff:.1e}"]
        )
    return out + "\n\nVMamba-T teacher forward, 256 px:\n\n" + table(
        ["batch", "projections in MKL, ms/image", "through conv_backend, ms/image", "ratio",
         "max feature diff / range"],
        rows,
    )


def _vmamba(
    teacher: torch.nn.Module, x: torch.Tensor, mode: str, features: dict[str, list[torch.Tensor]]
) -> None:
    """The teacher's forward with its projections in MKL (``mode`` "mkl") or as it runs now."""
    old = conv_backend.ONEDNN_MIN_ROWS
    if mode == "mkl":
        conv_backend.ONEDNN_MIN_ROWS = 2**62
    try:
        with torch.no_grad():
            features[mode] = teacher(x)
    finally:
        conv_backend.ONEDNN_MIN_ROWS = old


def adam_part(repeats: int) -> str:
    import pdd

    rows = []
    for preset in ("rd4ad", "pdd"):
        model = pdd.create_model(preset, teachers="random", image_size=256)
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        default = torch.optim.Adam(params, lr=1e-3)
        fused = torch.optim.Adam(params, lr=1e-3, fused=True)
        t = paired({"default": default.step, "fused": fused.step}, repeats)
        count = sum(p.numel() for p in params) / 1e6
        rows.append(
            [preset, f"{count:.1f}", f"{t['default'] * 1e3:.0f}", f"{t['fused'] * 1e3:.0f}",
             f"{t['fused'] / t['default']:.2f}"]
        )
        del model, params, default, fused
    return table(
        ["preset", "trainable M", "Adam (default) ms/step", "Adam fused ms/step", "ratio"], rows
    )


_CHILD = """
import statistics, sys, time, torch, pdd
from pdd import allocator
if sys.argv[1] == "keep":
    assert allocator.keep_freed_memory()
torch.set_num_threads(int(sys.argv[2]))
repeats = int(sys.argv[3])
for preset in ("pdd", "rd4ad"):
    model = pdd.create_model(preset, teachers="random", image_size=256).eval()
    for batch in (1, 8):
        x = torch.randn(batch, 3, 256, 256)
        times = []
        with torch.no_grad():
            for r in range(repeats + 1):
                start = time.perf_counter()
                model(x)
                if r:
                    times.append((time.perf_counter() - start) / batch)
        print(preset, batch, statistics.median(times))
"""


def allocator_part(repeats: int, threads: int) -> str:
    """Two children, one round each, alternating, ``repeats`` forwards per round and child."""
    results: dict[str, dict[tuple[str, int], list[float]]] = {"default": {}, "keep": {}}
    for _ in range(3):
        for mode, found in results.items():
            done = subprocess.run(
                [sys.executable, "-c", _CHILD, mode, str(threads), str(repeats)],
                capture_output=True, text=True, check=True,
            )
            for line in done.stdout.splitlines():
                preset, batch, seconds = line.split()
                found.setdefault((preset, int(batch)), []).append(float(seconds))
    rows = []
    for key, runs in results["default"].items():
        before = statistics.median(runs) * 1e3
        after = statistics.median(results["keep"][key]) * 1e3
        rows.append([key[0], key[1], f"{before:.1f}", f"{after:.1f}", f"{after / before:.3f}"])
    return table(
        ["preset", "batch", "glibc default, ms/image", "keep freed memory, ms/image", "ratio"],
        rows,
    )


def packed_part(repeats: int) -> str:
    import pdd

    allocator.keep_freed_memory()
    rows = []
    for preset in ("pdd", "rd4ad"):
        torch.manual_seed(0)
        model = pdd.create_model(preset, teachers="random", image_size=256).eval()
        parts: dict[str, Callable[[torch.Tensor], object]] = {f"{preset} forward": model}
        if preset == "pdd":
            teacher = model.teachers["wide_resnet50_2"]
            student = model.students[0]
            parts = {
                "Wide-ResNet-50-2 teacher": teacher,
                "pdd student (one)": lambda x, s=student: s(
                    torch.randn(len(x), 2048, 8, 8).contiguous(memory_format=torch.channels_last)
                ),
                **parts,
            }
        for name, call in parts.items():
            for batch in (1, 8):
                torch.manual_seed(1)
                x = torch.randn(batch, 3, 256, 256)
                outputs: dict[str, object] = {}

                def run(mode: str, call=call, x=x, outputs=outputs) -> None:
                    torch.manual_seed(2)  # the student's random input
                    with torch.inference_mode(), contextlib.ExitStack() as stack:
                        if mode == "eager":
                            stack.enter_context(packed_convs.disabled())
                        outputs[mode] = call(x)

                t = paired({"eager": lambda: run("eager"), "packed": lambda: run("packed")}, repeats)
                diff = _largest_difference(outputs["eager"], outputs["packed"])
                rows.append(
                    [name, batch, f"{t['eager'] / batch * 1e3:.1f}",
                     f"{t['packed'] / batch * 1e3:.1f}", f"{t['packed'] / t['eager']:.3f}",
                     f"{diff:.1e}"]
                )
        del model, parts
    out = table(
        ["part", "batch", "eager conv + BN, ms/image", "prepacked, ms/image", "ratio",
         "max difference / range"],
        rows,
    )
    return out + "\n\nWide-ResNet packed for one batch size, run at another (why packs are kept " \
        "per batch class):\n\n" + _cross_batch(repeats)


def _cross_batch(repeats: int) -> str:
    """The Wide-ResNet's packed plan made for batch 1 or 8, timed at batch 1, 2 and 8."""
    from pdd.teachers import build
    from pdd.teachers.wide_resnet import _PackedNet

    torch.manual_seed(0)
    net = build("wide_resnet50_2").backbone.eval()
    with torch.inference_mode():
        plans = {made: _PackedNet(net, [made, 3, 256, 256], 4) for made in (1, 8)}
        rows = []
        for batch in (1, 2, 8):
            x = torch.randn(batch, 3, 256, 256).contiguous(memory_format=torch.channels_last)
            t = paired({made: lambda p=plan, x=x: p(x) for made, plan in plans.items()}, repeats)
            rows.append([batch, f"{t[1] / batch * 1e3:.1f}", f"{t[8] / batch * 1e3:.1f}"])
    return table(["run at batch", "packed for batch 1, ms/image", "packed for batch 8, ms/image"], rows)


def _largest_difference(a: object, b: object) -> float:
    """Largest |a - b| over the range of a (over max |a| for a single value, such as the score of
    a batch of one), over the tensors of two equal nested outputs."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        scale = a.max() - a.min() if a.numel() > 1 else a.abs().max()
        return float((a - b).abs().max() / scale)
    assert isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
    return max(_largest_difference(x, y) for x, y in zip(a, b, strict=True))


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--parts", nargs="+", choices=["linear", "adam", "allocator", "packed"],
        default=["linear", "adam", "allocator", "packed"],
    )
    p.set_defaults(repeats=7, threads=2)
    args = p.parse_args()
    setup(args)
    print(f"machine: {machine(torch.device('cpu'))}; start: {load_average()}", flush=True)
    if "linear" in args.parts:
        print("\n" + linear_part(args.repeats), flush=True)
    if "adam" in args.parts:
        print("\n" + adam_part(args.repeats), flush=True)
    if "allocator" in args.parts:
        print("\n" + allocator_part(args.repeats, args.threads), flush=True)
    if "packed" in args.parts:
        print("\n" + packed_part(args.repeats), flush=True)
    print(f"\nend: {load_average()}")


if __name__ == "__main__":
    main()
