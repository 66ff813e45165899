"""Issue 18's forward candidates for ``pdd``, each against today's path as interleaved pairs.

    python benchmarks/bench_forward_candidates.py --threads 2 [--pairs 7] [--candidates fused ...]

One process, one model (``pdd`` preset, random teachers, 256 px). For each candidate the baseline
and the candidate run alternately (A, B, A, B ...) on the same input, so both see the same machine
state; reported: each side's median, the median of the per-pair ratios B / A, and the largest map
and score difference as a fraction of the baseline map's range (must stay within 1e-4).

Candidates (issue 18, part 2):

- ``fused``: the two students' first convolutions that read ``u`` (the 1x1 reduction and the
  transposed-conv shortcut of ``level3[0]``) as one convolution each over concatenated weights
  (``torch.cat`` per call, so parameters and gradients stay the students' own), split after.
  Inference at batch 1 and 8, and a training step (loss from precomputed teacher features,
  backward, Adam) at batch 10.
- ``concurrent``: the two teachers at the same time in two threads of one intra-op thread each
  (batch 1), against both in turn with all threads.
- ``frozen``: the Wide-ResNet teacher and the two students traced, ``torch.jit.freeze``'d and
  ``torch.jit.optimize_for_inference``'d (oneDNN weights prepacked once), batch 1 and 8.
- ``inductor``: the Wide-ResNet teacher under ``torch.compile`` with inductor's freezing (conv + BN
  folded, oneDNN weights prepacked, pointwise ops fused), the rest as today; batch 1 and 8. Needs a
  C++ compiler; the first call per batch shape compiles.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from _common import machine, parser, setup
from torch import Tensor

import pdd
from pdd.models.pdd import CNN_TEACHER, PDD, SSM_TEACHER, Student


def relative_difference(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> float:
    """Largest map or score difference over the range of ``a``'s maps."""
    scale = float(a[0].max() - a[0].min())
    return max(float((x - y).abs().max()) for x, y in zip(a, b)) / scale


def interleaved(
    baseline: Callable[[], object], candidate: Callable[[], object], pairs: int
) -> str:
    """Per side the median wall and CPU (process) seconds, and the median per-pair ratios
    candidate / baseline of each. With one intra-op thread the CPU time is the work itself, and
    hardly moves when other processes share the cores."""
    baseline()
    candidate()
    wall: tuple[list[float], list[float]] = ([], [])
    cpu: tuple[list[float], list[float]] = ([], [])
    for _ in range(pairs):
        for side, fn in enumerate((baseline, candidate)):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[side].append(time.perf_counter() - start)
            cpu[side].append(time.process_time() - start_cpu)

    def summary(name: str, times: tuple[list[float], list[float]]) -> str:
        ratio = statistics.median(b / a for a, b in zip(*times))
        a, b = (statistics.median(t) * 1e3 for t in times)
        return f"{name} {a:.0f} -> {b:.0f} ms (ratio {ratio:.3f})"

    return f"{summary('wall', wall)}, {summary('cpu', cpu)}"


def load() -> str:
    with open("/proc/loadavg", encoding="utf-8") as f:
        return " ".join(f.read().split()[:3])


# --- candidate a: the students' first convolutions over u fused --------------------------------


def fused_first_block(students: Sequence[Student], u: Tensor) -> list[Tensor]:
    """``level3[0](u)`` of every student, its two u-reading convs run once over all students."""
    blocks = [student.level3[0] for student in students]
    reduce = F.conv2d(u, torch.cat([b.body[0].weight for b in blocks]))
    shortcut = F.conv_transpose2d(
        u, torch.cat([b.shortcut[0].weight for b in blocks], dim=1), stride=2
    )
    outputs = []
    for block, r, s in zip(
        blocks,
        reduce.split(blocks[0].body[0].out_channels, dim=1),
        shortcut.split(blocks[0].shortcut[0].out_channels, dim=1),
    ):
        outputs.append(block.act(block.body[1:](r) + block.shortcut[1](s)))
    return outputs


def fused_student_features(
    model: PDD, u: Tensor, targets: Sequence[Tensor]
) -> list[list[Tensor]]:
    priors = model.prior(
        u, [tuple(targets[2].shape[-2:]), tuple(targets[1].shape[-2:])]
    )
    first = fused_first_block(model.students, u)
    results = []
    for student, x, p in zip(model.students, first, (None, priors)):
        s3 = x
        for block in list(student.level3)[1:]:
            s3 = block(s3)
        s2 = student.level2(s3 if p is None else s3 + p[0])
        s1 = student.level1(s2 if p is None else s2 + p[1])
        results.append([s1, s2, s3])
    return results


def bench_fused(model: PDD, args) -> None:
    original = model.student_features

    def fused_forward(images: Tensor) -> tuple[Tensor, Tensor]:
        model.student_features = lambda u, t: fused_student_features(model, u, t)
        try:
            return model(images)
        finally:
            del model.student_features

    with torch.inference_mode():
        for batch in args.batches:
            x = torch.randn(batch, 3, args.size, args.size)
            diff = relative_difference(model(x), fused_forward(x))
            timing = interleaved(
                lambda x=x: model(x), lambda x=x: fused_forward(x), args.pairs
            )
            print(
                f"fused, inference b{batch}: {timing}; diff {diff:.1e}; load {load()}",
                flush=True,
            )
    # Training step on precomputed teacher features (the cached path), batch 10.
    x = torch.randn(args.train_batch, 3, args.size, args.size)
    with torch.no_grad():
        feats = model.teacher_features(x)
    model.train()
    for t in model.teachers.values():
        t.eval()
    params = [p for n, p in model.named_parameters() if not n.startswith("teachers.")]
    optimiser = torch.optim.Adam(params, lr=1e-5)

    def step(fused: bool) -> float:
        if fused:
            model.student_features = lambda u, t: fused_student_features(model, u, t)
        try:
            loss = model.loss_from_features(feats)["loss"]
        finally:
            if fused:
                del model.student_features
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return float(loss.detach())

    timing = interleaved(lambda: step(False), lambda: step(True), args.pairs)
    print(
        f"fused, train step b{args.train_batch} (features given): {timing}; load {load()}",
        flush=True,
    )
    model.eval()
    assert model.student_features == original


# --- candidate b: the two teachers concurrently ------------------------------------------------


def concurrent_teacher_features(model: PDD, images: Tensor) -> dict[str, Tensor]:
    """Both teachers at once, VMamba in a second Python thread; one intra-op thread each."""
    threads = torch.get_num_threads()
    result: dict[str, list[Tensor]] = {}

    def run_ssm() -> None:
        torch.set_num_threads(1)
        with torch.inference_mode():
            result[SSM_TEACHER] = model.teachers[SSM_TEACHER](images)

    worker = threading.Thread(target=run_ssm)
    worker.start()
    torch.set_num_threads(1)
    try:
        result[CNN_TEACHER] = model.teachers[CNN_TEACHER](images)
    finally:
        worker.join()
        torch.set_num_threads(threads)
    return result


def bench_concurrent(model: PDD, args) -> None:
    def in_turn(images: Tensor) -> dict[str, list[Tensor]]:
        return {name: teacher(images) for name, teacher in model.teachers.items()}

    with torch.inference_mode():
        for batch in args.batches:
            x = torch.randn(batch, 3, args.size, args.size)
            ref, got = in_turn(x), concurrent_teacher_features(model, x)
            diff = max(
                float((r - g).abs().max() / (r.max() - r.min()))
                for name in ref
                for r, g in zip(ref[name], got[name])
            )
            timing = interleaved(
                lambda x=x: in_turn(x),
                lambda x=x: concurrent_teacher_features(model, x),
                args.pairs,
            )
            print(
                f"concurrent teachers b{batch}: {timing}; feature diff {diff:.1e}; load {load()}",
                flush=True,
            )


# --- candidate c: oneDNN weight prepacking (TorchScript freeze) --------------------------------


def frozen(module: torch.nn.Module, *inputs: Tensor) -> torch.jit.ScriptModule:
    traced = torch.jit.trace(module, inputs, check_trace=False)
    return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))


def bench_frozen(model: PDD, args) -> None:
    class TwoStudents(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, u: Tensor, f1: Tensor, f2: Tensor, f3: Tensor
        ) -> list[Tensor]:
            return [
                s
                for student in model.student_features(u, [f1, f2, f3])
                for s in student
            ]

    with torch.inference_mode():
        for batch in args.batches:
            x = torch.randn(batch, 3, args.size, args.size)
            feats = model.teacher_features(x)
            f, u = model.targets_from_features(feats)
            wrn = frozen(model.teachers[CNN_TEACHER], x)
            students = frozen(TwoStudents(), u, *f)

            def forward_frozen(
                images: Tensor,
                wrn: torch.jit.ScriptModule = wrn,
                students: torch.jit.ScriptModule = students,
            ) -> tuple[Tensor, Tensor]:
                features = {
                    f"{CNN_TEACHER}.{i + 1}": y.contiguous(
                        memory_format=torch.channels_last
                    )
                    for i, y in enumerate(wrn(images))
                }
                z = model.teachers[SSM_TEACHER](images)
                features.update({f"{SSM_TEACHER}.{i + 1}": v for i, v in enumerate(z)})
                targets, unified = model.targets_from_features(features)
                pairs = list(zip(students(unified, *targets), targets * 2))
                return model.anomaly_map(pairs, (images.shape[-2], images.shape[-1]))

            diff = relative_difference(model(x), forward_frozen(x))
            timing = interleaved(
                lambda x=x: model(x), lambda x=x: forward_frozen(x), args.pairs
            )
            print(
                f"frozen WRN + students b{batch}: {timing}; diff {diff:.1e}; load {load()}",
                flush=True,
            )


def bench_inductor(model: PDD, args) -> None:
    """Wide-ResNet teacher under ``torch.compile`` with inductor's freezing (its weights become
    constants: conv + BN folded, oneDNN weights prepacked); the rest of the forward as today."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    wrn = torch.compile(model.teachers[CNN_TEACHER], dynamic=False)

    def forward_compiled(images: Tensor) -> tuple[Tensor, Tensor]:
        features = {f"{CNN_TEACHER}.{i + 1}": y for i, y in enumerate(wrn(images))}
        z = model.teachers[SSM_TEACHER](images)
        features.update({f"{SSM_TEACHER}.{i + 1}": v for i, v in enumerate(z)})
        targets, unified = model.targets_from_features(features)
        pairs = [
            (s, t)
            for student in model.student_features(unified, targets)
            for s, t in zip(student, targets)
        ]
        return model.anomaly_map(pairs, (images.shape[-2], images.shape[-1]))

    with torch.inference_mode():
        for batch in args.batches:
            x = torch.randn(batch, 3, args.size, args.size)
            start = time.perf_counter()
            diff = relative_difference(model(x), forward_compiled(x))
            compile_s = time.perf_counter() - start
            timing = interleaved(
                lambda x=x: model(x), lambda x=x: forward_compiled(x), args.pairs
            )
            print(
                f"inductor-frozen WRN b{batch}: {timing}; diff {diff:.1e}; first call incl. "
                f"compile {compile_s:.0f} s; load {load()}",
                flush=True,
            )


CANDIDATES = {
    "fused": bench_fused,
    "concurrent": bench_concurrent,
    "frozen": bench_frozen,
    "inductor": bench_inductor,
}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--candidates", nargs="+", choices=sorted(CANDIDATES), default=list(CANDIDATES)
    )
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--train-batch", type=int, default=10)
    p.add_argument("--pairs", type=int, default=7)
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args()
    setup(args)
    torch.manual_seed(0)
    model = pdd.create_model("pdd", teachers="random", image_size=args.size).eval()
    print(
        f"machine: {machine(torch.device('cpu'))}; {args.size} px, pdd, random teachers"
    )
    for name in args.candidates:
        CANDIDATES[name](model, args)


if __name__ == "__main__":
    main()
