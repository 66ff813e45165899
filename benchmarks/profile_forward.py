"""Where a model's inference forward spends its time, per component, against this machine's GEMM limit.

    python benchmarks/profile_forward.py [--presets pdd rd4ad] [--batches 1 8] [--repeats 5]
        [--threads 2] [--compile]

Random teachers, 256 x 256 float32 input, eval mode, no grad. Each component (a teacher, the
adapters, the prior, a student or RD4AD's OCBE and decoder, the anomaly map) runs on the
intermediate tensors of one full forward, and so does the whole forward; all of them and a
square float32 matmul (``bench_matmul.square_matmul``) are timed once per round, round after round,
so every median comes from the same machine state. The GEMM ceiling is the best matmul median;
each component's GFLOP (``torch.utils.flop_counter``: convolutions and matmuls, not elementwise
work and not the fused scan kernel, a pybind call) divided by its time is read as a fraction of it.
The VMamba teacher's scan kernel (``pdd::cross_scan_cpu_kernel``) is split out from a separate
profiled pass (torch.profiler's mean over ``--repeats`` forwards).

``--compile`` adds, for ``pdd``, the trainable part (adapters, prior, students and anomaly map,
from fixed teacher features) under ``torch.compile`` (inductor) against eager: compile time, ms per
image, and the largest map and score difference as a fraction of the eager map range.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from _common import load_average, machine, parser, setup, table
from bench_matmul import square_matmul
from torch._inductor.utils import fresh_cache
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

import pdd
from pdd import packed_convs
from pdd.models.pdd import CNN_TEACHER, PDD, SSM_TEACHER
from pdd.models.rd4ad import RD4AD

SIZE = 256
SCAN_EVENT = "pdd::cross_scan_cpu_kernel"
WHOLE = "whole forward"


@dataclass
class Component:
    """One timed piece of the forward: a call on fixed inputs and its counted FLOPs."""

    name: str
    run: Callable[[], object]
    flops: int = 0


def pdd_components(model: PDD, images: torch.Tensor) -> list[Component]:
    """PDD's forward cut at its seams: two teachers, InA + MMU, prior, two students, map."""
    features = model.teacher_features(images)
    f, u = model.targets_from_features(features)
    sizes = [tuple(f[2].shape[-2:]), tuple(f[1].shape[-2:])]
    priors = model.prior(u, sizes)
    students = model.student_features(u, f)
    pairs = [(s, t) for student in students for s, t in zip(student, f)]
    size = tuple(images.shape[-2:])
    return [
        Component(
            "Wide-ResNet-50-2 teacher (levels 1-4)",
            lambda: model.teachers[CNN_TEACHER](images),
        ),
        Component("VMamba-T teacher", lambda: model.teachers[SSM_TEACHER](images)),
        Component(
            "InA adapters + MMU (f, u)", lambda: model.targets_from_features(features)
        ),
        Component("MPA prior", lambda: model.prior(u, sizes)),
        Component("student 1", lambda: model.students[0](u)),
        Component("student 2 (prior-fed)", lambda: model.students[-1](u, priors)),
        Component("anomaly map", lambda: model.anomaly_map(pairs, size)),
    ]


def rd4ad_components(model: RD4AD, images: torch.Tensor) -> list[Component]:
    """RD4AD's forward cut at its seams: teacher (levels 1-3), OCBE, decoder, map."""
    targets = list(model.teacher_features(images).values())
    embedding = model.bottleneck(targets)

    def decoder() -> list[torch.Tensor]:
        x, outputs = embedding, []
        for stage in model.decoder:
            x = stage(x)
            outputs.append(x)
        return outputs[::-1]

    pairs = list(zip(decoder(), targets))
    size = tuple(images.shape[-2:])
    return [
        Component(
            "Wide-ResNet-50-2 teacher (levels 1-3)",
            lambda: model.teacher_features(images),
        ),
        Component("OCBE", lambda: model.bottleneck(targets)),
        Component("decoder", decoder),
        Component("anomaly map", lambda: model.anomaly_map(pairs, size)),
    ]


COMPONENTS = {"pdd": pdd_components, "rd4ad": rd4ad_components}


def count_flops(run: Callable[[], object]) -> int:
    """Convolutions and matmuls, counted with ``pdd.packed_convs`` off (the counter does not know
    oneDNN's prepacked convolutions, which do the same arithmetic)."""
    with FlopCounterMode(display=False) as counter, packed_convs.disabled():
        run()
    return counter.get_total_flops()


def interleaved_medians(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds of each call, the calls taking turns round after round."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(warmup + repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def scan_seconds(run: Callable[[], object], repeats: int) -> float | None:
    """Mean seconds per call inside the fused scan kernel, from one profiled pass of ``repeats`` calls."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            run()
    totals = [e.cpu_time_total for e in prof.key_averages() if e.key == SCAN_EVENT]
    return sum(totals) / 1e6 / repeats if totals else None


def profile_model(
    preset: str, batch: int, repeats: int, gemm: Sequence[Component]
) -> list[list[object]]:
    """Table rows for one preset and batch, with the GEMM ceiling measured in the same rounds."""
    torch.manual_seed(0)
    model = pdd.create_model(preset, teachers="random", image_size=SIZE).eval()
    images = torch.randn(batch, 3, SIZE, SIZE)
    with torch.no_grad():
        components = COMPONENTS[preset](model, images)
        components.append(Component(WHOLE, lambda: model(images)))
        for component in components:
            component.flops = count_flops(component.run)
        medians = interleaved_medians(
            {c.name: c.run for c in [*components, *gemm]}, repeats
        )
        vmamba = [c for c in components if c.name.startswith("VMamba")]
        scan = scan_seconds(vmamba[0].run, repeats) if vmamba else None
    ceiling = max(g.flops / medians[g.name] for g in gemm)
    whole = medians[WHOLE]

    def row(name: str, seconds: float, flops: int | None) -> list[object]:
        rate = flops / seconds if flops else None
        return [
            preset,
            batch,
            name,
            seconds * 1e3 / batch,
            f"{100 * seconds / whole:.1f}",
            "not counted" if flops is None else flops / 1e9 / batch,
            "" if rate is None else rate / 1e9,
            "" if rate is None else f"{100 * rate / ceiling:.1f}",
        ]

    rows = []
    for component in components:
        rows.append(row(component.name, medians[component.name], component.flops))
        if component in vmamba and scan is not None:
            rows.append(row("  of which scan kernel (profiled)", scan, None))
    parts = sum(medians[c.name] for c in components if c.name != WHOLE)
    rows.append(row("sum of the components", parts, None)[:5] + ["", "", ""])
    best = max(gemm, key=lambda g: g.flops / medians[g.name])
    rows.append(
        [
            preset,
            batch,
            f"float32 GEMM ceiling ({best.name})",
            "",
            "",
            "",
            ceiling / 1e9,
            "100",
        ]
    )
    return rows


def trainable_head(model: PDD, size: tuple[int, int]) -> Callable[[dict], tuple]:
    """PDD's forward after the teachers: adapters, prior, students, anomaly map."""

    def head(features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        f, u = model.targets_from_features(features)
        pairs = [
            (s, t)
            for student in model.student_features(u, f)
            for s, t in zip(student, f)
        ]
        return model.anomaly_map(pairs, size)

    return head


def first_call_seconds(
    head: Callable, features: dict, freezing: bool
) -> tuple[float, Callable]:
    """Seconds of a fresh ``torch.compile(head)``'s first call (compiling included), and the call."""
    torch._dynamo.reset()
    with torch._inductor.config.patch(freezing=freezing):
        compiled = torch.compile(head)
        start = time.perf_counter()
        compiled(features)
        return time.perf_counter() - start, compiled


def compile_rows(batch: int, repeats: int) -> list[list[object]]:
    """Eager vs ``torch.compile`` (inductor, without and with freezing) of PDD's trainable part.

    Each variant compiles twice: into an empty inductor cache (a first ``pdd predict`` on a
    machine) and again after ``torch._dynamo.reset()`` with that cache filled (a later run)."""
    torch.manual_seed(0)
    model = pdd.create_model("pdd", teachers="random", image_size=SIZE).eval()
    images = torch.randn(batch, 3, SIZE, SIZE)
    rows = []
    with torch.no_grad():
        features = model.teacher_features(images)
        head = trainable_head(model, (SIZE, SIZE))
        maps, scores = head(features)
        span = float(maps.max() - maps.min())
        calls = {"eager": lambda: head(features)}
        compile_seconds: dict[str, tuple[float, float]] = {}
        for variant, freezing in (("compile", False), ("compile + freezing", True)):
            with fresh_cache():
                cold, _ = first_call_seconds(head, features, freezing)
                warm, compiled = first_call_seconds(head, features, freezing)
            calls[variant] = lambda compiled=compiled: compiled(features)
            compile_seconds[variant] = (cold, warm)
        differences = {}
        for variant, call in calls.items():
            got_maps, got_scores = call()
            differences[variant] = (
                float((got_maps - maps).abs().max()) / span,
                float((got_scores - scores).abs().max()) / span,
            )
        medians = interleaved_medians(calls, repeats)
    for variant, seconds in medians.items():
        cold, warm = compile_seconds.get(variant, ("", ""))
        rows.append(
            [
                batch,
                variant,
                seconds * 1e3 / batch,
                f"{medians['eager'] / seconds:.3f}",
                cold,
                warm,
                f"{differences[variant][0]:.1e}",
                f"{differences[variant][1]:.1e}",
            ]
        )
    return rows


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(threads=2, repeats=5)
    p.add_argument(
        "--presets",
        nargs="*",
        default=["pdd", "rd4ad"],
        choices=sorted(COMPONENTS),
        help="models to profile (none: only the --compile table)",
    )
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--gemm-sizes", type=int, nargs="+", default=[1024, 2048])
    p.add_argument(
        "--compile", action="store_true", help="also measure torch.compile (pdd)"
    )
    args = p.parse_args()
    if args.device != "cpu" or args.bf16:
        raise SystemExit(
            "error: profile_forward.py measures the float32 CPU forward only"
        )
    device = setup(args)
    print(f"machine: {machine(device)}; {load_average()} before", flush=True)
    gemm = []
    for n in args.gemm_sizes:
        call, flops = square_matmul(n, device, torch.float32)
        gemm.append(Component(f"{n}x{n} matmul", call, flops))
    rows = []
    for preset in args.presets:
        for batch in args.batches:
            rows += profile_model(preset, batch, args.repeats, gemm)
            print(f"  {preset} batch {batch} done ({load_average()})", flush=True)
    if rows:
        print(
            f"\nmedian of {args.repeats} interleaved rounds; {SIZE}x{SIZE}, float32, eval, no grad\n"
        )
        headers = [
            "model",
            "batch",
            "component",
            "ms/image",
            "% of forward",
            "GFLOP/image",
            "GFLOP/s",
            "% of GEMM ceiling",
        ]
        print(table(headers, rows), flush=True)
    if args.compile:
        compiled = []
        for batch in args.batches:
            compiled += compile_rows(batch, args.repeats)
            print(f"  compile batch {batch} done ({load_average()})", flush=True)
        print(
            "\npdd trainable part (adapters, prior, students, anomaly map) from fixed teacher features\n"
        )
        headers = [
            "batch",
            "variant",
            "ms/image",
            "speed-up vs eager",
            "first call s (empty cache)",
            "first call s (cache filled)",
            "max map diff / map range",
            "max score diff / map range",
        ]
        print(table(headers, compiled))
    print(f"\n{load_average()} after")


if __name__ == "__main__":
    main()
