"""Side by side with anomalib's Reverse Distillation: the model a user would install instead.

    python benchmarks/bench_peers.py [--threads 2] [--repeats 5] [--e2e-images 200] [--bf16]
        [--fit-epochs 3] [--fit-limit N] [--e2e-rounds 1]
    python benchmarks/bench_peers.py --passes --fit-epochs 0 --e2e-rounds 3   # end to end only
    python benchmarks/bench_peers.py --bf16-scores 64     # how far bf16 autocast moves the scores

Needs anomalib in the same environment (the ``bench`` extra: ``pip install -e .[bench]``); without
it the anomalib rows are skipped with a line saying so and only our models are timed. Everything
runs in this one process with the same inputs and thread count, random-initialised teachers and
256x256 inputs:

* eval forward (anomaly maps + image scores) per image at batch 1 and 8, and one Adam step at batch
  4, for anomalib's ``ReverseDistillationModel`` (stock; and "official width", its bottleneck
  replaced by ``get_bottleneck_layer("wide_resnet50_2", width_per_group=128)`` as in the RD4AD
  paper's code), and our ``rd4ad``, ``pdd`` and ``pdd-reference``. Rounds interleave the models
  so that a change in machine load hits all of them alike; the median of ``--repeats`` rounds is
  reported, after one untimed warm-up round. Memory: the peak resident set above the resting one
  during the pass (activations and workspaces; the weights are counted in the parameter column).
  Beside each time, the fraction of this machine's float32 GEMM ceiling it reaches: the GFLOP per
  image ``torch.utils.flop_counter`` counts (convolutions and matmuls; a training step's forward
  and backward) per second, over the best of square float32 matmuls
  (``bench_matmul.square_matmul``) timed once in every round beside the models.
* end to end, files to scores: ``pdd predict`` (``pdd`` and ``rd4ad`` checkpoints with random teachers, batch 8,
  heatmap overlays written) against anomalib's ``Engine.predict(data_path=...)`` with its RD model
  (its own pre-processing, batch 1 as its file loader gives, result images written), each in a
  fresh process as a user runs it (the ``pdd`` command's entry point with its allocator setting,
  ``pdd.allocator``; again with ``PDD_KEEP_FREED_MEMORY=0``; anomalib as installed, and again with
  glibc told the same through ``MALLOC_MMAP_MAX_``/``MALLOC_TRIM_THRESHOLD_``), on the first
  ``--e2e-images`` HeadCT images (our scan kernel's one-time build is done before, and each stack
  is imported once in a throwaway process first, so that no pipeline pays for a cold page cache
  that the next one finds warm). ``--e2e-rounds N`` runs the list N times over and reports each
  pipeline's median, with the rounds' ratios beside it. Two clocks:
  the whole process as the parent sees it (interpreter start and imports included: what a user
  waits for), and the child's own from after its imports (``pdd.prediction.predict``, which
  imports Lightning, on our side; anomalib's ``Engine`` and model on theirs) to its end, model
  loading included.
* real training epochs (``_peer_training.py``): ``pdd fit`` of ``pdd`` and ``rd4ad`` with
  ``--feature-cache memory`` and anomalib's ``Engine.fit`` (RD), ``--fit-epochs`` each on the same
  training images (HeadCT, or phantoms when the folder is absent; ``--fit-limit N``: the first N),
  the steady-state epoch (median of epochs 2..N) per image against anomalib's training step above
  and against its own steady epoch, with its GEMM-ceiling fraction (ours: the GFLOP of a step
  from cached teacher features: everything after the teachers).

The load average is printed before and after: timings on a shared machine are only as good as it
was idle.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _common import load_average, machine, table
from bench_matmul import square_matmul
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from pdd import packed_convs

DEFAULT_SIZE = 256
BATCHES = (1, 8)
TRAIN_BATCH = 4
PASSES = (*(f"infer{batch}" for batch in BATCHES), "train")
ANOMALIB = "anomalib RD"
ANOMALIB_OFFICIAL = "anomalib RD, official width"
OURS = ("rd4ad", "pdd", "pdd-reference")
# End to end: the flagship, and the same model family as anomalib's RD (the pipelines compared).
E2E_PRESETS = ("pdd", "rd4ad")
# Real training epochs (the teacher-feature cache on): the flagship and the RD family.
FIT_PRESETS = ("pdd", "rd4ad")
# Square float32 matmuls timed in every round beside the models: the best is the GEMM ceiling.
GEMM_SIZES = (1024, 2048)
DEFAULT_HEADCT = Path(__file__).resolve().parents[2] / "shared" / "data" / "headct"


@dataclass
class Entry:
    """One model under test: its eval forward, its training loss and its trainable parameters."""

    name: str
    model: nn.Module
    infer: Callable[[Tensor], object]
    loss: Callable[[Tensor], Tensor]
    trainable: list[nn.Parameter]
    # Ours: the teachers' part of ``loss`` and the rest, for the cached training step's FLOPs.
    features: Callable[[Tensor], object] | None = None
    loss_from_features: Callable[[object], Tensor] | None = None
    optimizer: torch.optim.Optimizer | None = None
    times: dict[str, list[float]] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    # GFLOP per image: "forward", "train" (a step's forward + backward), "cached" (ours).
    gflop: dict[str, float] = field(default_factory=dict)

    def step(self, images: Tensor) -> None:
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(self.trainable, lr=1e-4)
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(images).backward()
        self.optimizer.step()


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def _peak_rss() -> Iterator[list[int]]:
    """Yields [resting, peak] resident bytes; peak is sampled every 2 ms while the block runs."""
    gc.collect()
    result = [_rss(), _rss()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            result[1] = max(result[1], _rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result[1] = max(result[1], _rss())


def _anomalib_entries(size: int) -> list[Entry]:
    try:
        from anomalib.models.image.reverse_distillation.components import (
            get_bottleneck_layer,
        )
        from anomalib.models.image.reverse_distillation.loss import (
            ReverseDistillationLoss,
        )
        from anomalib.models.image.reverse_distillation.torch_model import (
            ReverseDistillationModel,
        )
    except ImportError as exc:
        print(f"skip: anomalib is not importable here ({exc}); install the bench extra")
        return []
    entries = []
    for name in (ANOMALIB, ANOMALIB_OFFICIAL):
        model = ReverseDistillationModel(
            backbone="wide_resnet50_2",
            input_size=(size, size),
            layers=["layer1", "layer2", "layer3"],
            anomaly_map_mode="add",
            pre_trained=False,
        )
        if name == ANOMALIB_OFFICIAL:
            model.bottleneck = get_bottleneck_layer(
                "wide_resnet50_2", width_per_group=128
            )
        criterion = ReverseDistillationLoss()

        def infer(images: Tensor, model: nn.Module = model) -> object:
            model.eval()
            batch = model(images)
            return batch.anomaly_map, batch.pred_score

        def loss(
            images: Tensor, model: nn.Module = model, criterion: nn.Module = criterion
        ) -> Tensor:
            model.train()
            return criterion(*model(images))

        # As anomalib's ReverseDistillation.configure_optimizers: decoder and bottleneck.
        trainable = [*model.decoder.parameters(), *model.bottleneck.parameters()]
        entries.append(Entry(name, model, infer, loss, trainable))
    return entries


def _our_entries(presets: list[str], size: int) -> list[Entry]:
    import pdd

    entries = []
    for preset in presets:
        model = pdd.create_model(preset, teachers="random", image_size=size)

        def infer(images: Tensor, model: nn.Module = model) -> object:
            model.eval()
            return model(images)

        def loss(images: Tensor, model: nn.Module = model) -> Tensor:
            model.train()
            return model.loss(images)["loss"]

        def features(images: Tensor, model: nn.Module = model) -> object:
            model.train()
            with torch.no_grad():
                return model.teacher_features(images)

        def loss_from_features(features: object, model: nn.Module = model) -> Tensor:
            return model.loss_from_features(features)["loss"]

        trainable = [p for p in model.parameters() if p.requires_grad]
        entries.append(
            Entry(preset, model, infer, loss, trainable, features, loss_from_features)
        )
    return entries


def _gflop(run: Callable[[], object]) -> float:
    """GFLOP of one call as ``torch.utils.flop_counter`` counts them: convolutions and matmuls
    (forward, and backward when the call runs it), not elementwise work, not our fused scan kernel.
    Counted with ``pdd.packed_convs`` off: the counter does not know oneDNN's prepacked
    convolutions (it read 9.5 GFLOP for a ``pdd`` forward with them), which do the same
    convolutions with the BatchNorm folded in."""
    with FlopCounterMode(display=False) as counter, packed_convs.disabled():
        run()
    return counter.get_total_flops() / 1e9


def _count_flops(entry: Entry, images: Tensor) -> None:
    """Per image: the eval forward, a training step's forward + backward, and for ours the step
    with the teacher features given (what a cached epoch computes). Untimed; gradients dropped."""
    with torch.inference_mode():
        entry.gflop["forward"] = _gflop(lambda: entry.infer(images[:1]))
    batch = images[:TRAIN_BATCH]
    entry.gflop["train"] = _gflop(lambda: entry.loss(batch).backward()) / TRAIN_BATCH
    if entry.features is not None and entry.loss_from_features is not None:
        given = entry.features(batch)
        step = entry.loss_from_features
        entry.gflop["cached"] = _gflop(lambda: step(given).backward()) / TRAIN_BATCH
    for parameter in entry.model.parameters():
        parameter.grad = None


@dataclass
class Gemm:
    """A square float32 matmul timed once per round beside the models, so that the ceiling their
    arithmetic rate is read against is measured under the same load."""

    name: str
    run: Callable[[], object]
    flops: int
    times: list[float] = field(default_factory=list)


def _gemms() -> list[Gemm]:
    cpu = torch.device("cpu")
    return [
        Gemm(f"{n}x{n} @ {n}x{n}", *square_matmul(n, cpu, torch.float32))
        for n in GEMM_SIZES
    ]


def _ceiling(gemms: list[Gemm]) -> tuple[float, str]:
    """The best median GFLOP/s among the timed matmuls, and which matmul gave it."""
    rates = {
        g.name: g.flops / statistics.median(g.times) / 1e9 for g in gemms if g.times
    }
    best = max(rates, key=rates.__getitem__)
    return rates[best], best


def _autocast(bf16: bool) -> contextlib.AbstractContextManager:
    if bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _time_passes(
    entries: list[Entry],
    gemms: list[Gemm],
    images: Tensor,
    repeats: int,
    bf16: bool,
    clock: Callable[[], float],
    wanted: list[str],
) -> None:
    """Every pass, round by round across the models and the matmuls; round 0 is the untimed
    warm-up. The matmuls run on the wall clock whatever ``clock`` is: they are the ceiling."""
    passes: list[tuple[str, Callable[[Entry], None]]] = []
    for batch in BATCHES:

        def run(entry: Entry, batch: int = batch) -> None:
            with torch.inference_mode(), _autocast(bf16):
                entry.infer(images[:batch])

        passes.append((f"infer{batch}", run))

    def train(entry: Entry) -> None:
        with _autocast(bf16):
            entry.step(images[:TRAIN_BATCH])

    passes.append(("train", train))
    for name, run in passes:
        if name not in wanted:
            continue
        for round_index in range(repeats + 1):
            for entry in entries:
                with _peak_rss() as rss:
                    start = clock()
                    run(entry)
                    seconds = clock() - start
                if round_index:
                    entry.times.setdefault(name, []).append(seconds)
                    entry.memory[name] = max(
                        entry.memory.get(name, 0.0), (rss[1] - rss[0]) / 2**30
                    )
            for gemm in gemms:
                start = time.perf_counter()
                gemm.run()
                if round_index:
                    gemm.times.append(time.perf_counter() - start)
            print(
                f"  {name}: round {round_index}/{repeats} done ({load_average()})",
                flush=True,
            )
        medians = ", ".join(
            f"{e.name} {statistics.median(e.times[name]) * 1e3:.0f} ms" for e in entries
        )
        print(f"  {name} medians: {medians}", flush=True)


def _ratio(value: float, reference: float | None) -> str:
    return "" if reference is None else f" ({value / reference:.2f}x)"


def _share(gflop: float | None, seconds: float, ceiling: float) -> str:
    """The arithmetic rate of ``gflop`` done in ``seconds`` as a percentage of the ceiling."""
    return "" if gflop is None else f"{100 * gflop / seconds / ceiling:.0f} %"


def _annotated(value: float, ratio: float | None, share: str) -> str:
    notes = [f"{ratio:.2f}x"] if ratio is not None else []
    notes += [share] if share else []
    return f"{value:.0f}" + (f" ({'; '.join(notes)})" if notes else "")


def _model_table(entries: list[Entry], ceiling: float) -> str:
    """ms per image (per step for training), each with its ratio to stock anomalib and the
    fraction of the float32 GEMM ceiling its counted arithmetic reaches."""
    medians = {
        e.name: {k: statistics.median(v) for k, v in e.times.items()} for e in entries
    }
    reference = medians.get(ANOMALIB)
    rows = []
    for entry in entries:
        m = medians[entry.name]
        cells: list[object] = [entry.name]
        for name in PASSES:
            if name not in m:
                cells.append("not run")
                continue
            images = TRAIN_BATCH if name == "train" else int(name.removeprefix("infer"))
            value = m[name] * 1e3 / (1 if name == "train" else images)
            ratio = None if reference is None else m[name] / reference[name]
            gflop = entry.gflop.get("train" if name == "train" else "forward")
            share = _share(gflop, m[name] / images, ceiling)
            cells.append(_annotated(value, ratio, share))
        cells.append(
            " / ".join(
                f"{entry.gflop.get(k, float('nan')):.1f}" for k in ("forward", "train")
            )
        )
        cells.append(f"{sum(p.numel() for p in entry.model.parameters()) / 1e6:.1f}")
        memory = [
            f"{entry.memory.get(name, float('nan')):.2f}"
            for name in ("infer8", "train")
        ]
        cells.append(" / ".join(memory))
        rows.append(cells)
    return table(
        [
            "model",
            "infer batch 1, ms/img",
            "infer batch 8, ms/img",
            f"train step batch {TRAIN_BATCH}, ms",
            "GFLOP/img, forward / train step",
            "parameters, M",
            "peak extra GiB, infer 8 / train",
        ],
        rows,
    )


# pdd.allocator's setting for a whole process through glibc's environment (read at start-up): how
# anomalib runs when it is given the same allocator as the pdd command.
GLIBC_KEEP_FREED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}

# Each pipeline runs in a fresh process, as a user runs it: the pdd console script's own entry
# (``pdd.cli.run``, with its allocator setting unless PDD_KEEP_FREED_MEMORY=0) and anomalib's
# Engine.predict; the child clocks its own wall and CPU seconds after its imports, the parent the
# whole process.
_PDD_CHILD = """
import sys, time
from pdd.cli import run
import pdd.prediction.predict  # the command imports it (and Lightning) on its first line
sys.argv = ["pdd", *sys.argv[1:]]
start, cpu = time.perf_counter(), time.process_time()
status = run()
print("SECONDS", time.perf_counter() - start, time.process_time() - cpu)
sys.exit(status)
"""
_ANOMALIB_CHILD = """
import sys, time, warnings
warnings.filterwarnings("ignore")
from anomalib.engine import Engine
from anomalib.models import ReverseDistillation
start, cpu = time.perf_counter(), time.process_time()
model = ReverseDistillation(pre_trained=False)
engine = Engine(default_root_dir=sys.argv[2], logger=False, enable_progress_bar=False)
predictions = engine.predict(model=model, data_path=sys.argv[1])
if not predictions:
    sys.exit("error: anomalib predicted nothing")
print("SECONDS", time.perf_counter() - start, time.process_time() - cpu)
"""


@dataclass(frozen=True)
class ChildSeconds:
    """A pipeline's seconds: the whole process (parent's clocks) and, wall only, after its imports
    (the child's)."""

    wall: float
    cpu: float
    wall_after_imports: float


def _child_seconds(
    code: str, args: list[str], threads: int, env: dict[str, str] | None = None
) -> ChildSeconds:
    """Run one pipeline in a fresh process; its own wall clock comes back as ``SECONDS wall cpu``."""
    child_env = {**os.environ, "OMP_NUM_THREADS": str(threads), **(env or {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=child_env,
        check=False,  # a failure is reported below with the child's last lines
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = [line for line in done.stdout.splitlines() if line.startswith("SECONDS ")]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise SystemExit(f"error: end-to-end child failed ({done.returncode}): {' | '.join(tail)}")
    return ChildSeconds(wall, cpu, wall_after_imports=float(lines[-1].split()[1]))


def _pdd_checkpoint(work: Path, preset: str) -> Path:
    """A ``preset`` checkpoint with random teachers, and the scan kernel built (a one-time
    ~20 s g++ step per machine that scoring files does not repeat)."""
    import pdd
    from pdd.runs import checkpoint
    from pdd.teachers.cross_scan import cpu_kernel

    model = pdd.create_model(preset, teachers="random", image_size=DEFAULT_SIZE)
    ckpt = checkpoint.save(
        work / f"{preset}.ckpt", model, threshold=0.5, map_stats={"vmin": 0.0, "vmax": 1.0}
    )
    del model
    gc.collect()
    cpu_kernel()
    return ckpt


def _end_to_end(headct: Path, count: int, threads: int, rounds: int) -> str:
    source = headct / "head_ct"
    files = sorted(source.glob("*.png"))[:count]
    if not files:
        return f"skip: end-to-end row: no HeadCT images in {source}"
    try:
        import anomalib  # noqa: F401
    except ImportError:
        have_anomalib = False
    else:
        have_anomalib = True
    runs: dict[str, list[ChildSeconds]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        work = Path(tmp)
        images = work / "images"
        images.mkdir()
        for path in files:
            shutil.copy(path, images / path.name)
        checkpoints = {preset: _pdd_checkpoint(work, preset) for preset in E2E_PRESETS}
        # Each stack's files read once before any clock starts: the first timed process must not
        # pay for a cold page cache that the next one finds warm.
        warm_up = ["import pdd.cli, pdd.prediction.predict"]
        warm_up += ["import anomalib.engine, anomalib.models"] if have_anomalib else []
        for code in warm_up:
            subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
        pipelines: list[tuple[str, str, Callable[[Path], list[str]], dict[str, str] | None]] = []
        for preset, env in [("pdd", None), ("pdd", {"PDD_KEEP_FREED_MEMORY": "0"}), ("rd4ad", None)]:
            label = f"pdd predict ({preset} preset, batch 8)"
            if env:
                label += ", PDD_KEEP_FREED_MEMORY=0"
            ckpt = checkpoints[preset]
            pipelines.append(
                (
                    label,
                    _PDD_CHILD,
                    lambda out, ckpt=ckpt: [
                        "predict", "--checkpoint", str(ckpt), "--out", str(out), "--no-progress",
                        str(images),
                    ],
                    env,
                )
            )  # fmt: skip
        if have_anomalib:
            for env in (None, GLIBC_KEEP_FREED):
                label = "anomalib Engine.predict (RD, batch 1)"
                if env:
                    label += ", glibc told to keep freed memory"
                pipelines.append(
                    (label, _ANOMALIB_CHILD, lambda out: [str(images), str(out)], env)
                )
        for round_index in range(rounds):
            for number, (label, code, arguments, env) in enumerate(pipelines):
                out = work / f"run-{round_index}-{number}"
                seconds = _child_seconds(code, arguments(out), threads, env)
                runs.setdefault(label, []).append(seconds)
            print(f"  end to end: round {round_index + 1}/{rounds} done ({load_average()})", flush=True)
    n = len(files)
    medians = {label: _median_seconds(times) for label, times in runs.items()}
    peers = [medians[label] for label in medians if label.startswith("anomalib")]
    reference = runs.get("anomalib Engine.predict (RD, batch 1)")
    rows = []
    for label, seconds in medians.items():
        ours = not label.startswith("anomalib")
        row = [label, *_e2e_cells(n, seconds, peers if ours else [])]
        if rounds > 1:
            row.append(
                " / ".join(f"{a.wall / b.wall:.2f}" for a, b in zip(reference, runs[label], strict=True))
                if ours and reference
                else ""
            )
        rows.append(row)
    if not have_anomalib:
        skipped = [ANOMALIB, "skipped: anomalib not importable", "", "", "", "", ""]
        rows.append(skipped + ([""] if rounds > 1 else []))
    headers = [
        "pipeline",
        "wall s, whole process",
        "images/s (whole process)",
        "wall s after imports",
        "images/s (after imports)",
        "CPU s, whole process",
        "images per CPU-second",
    ]
    if rounds > 1:
        headers.append("each round, whole process, vs anomalib as installed")
    return (
        f"end to end on {n} HeadCT files, each pipeline in its own process, median of {rounds}"
        f" round(s) ({load_average()}); images/s as a multiple of anomalib's (default; with the"
        " same allocator setting):\n\n" + table(headers, rows)
    )


def _median_seconds(times: list[ChildSeconds]) -> ChildSeconds:
    """Each clock's median over the rounds."""
    return ChildSeconds(
        wall=statistics.median(t.wall for t in times),
        cpu=statistics.median(t.cpu for t in times),
        wall_after_imports=statistics.median(t.wall_after_imports for t in times),
    )


def _e2e_cells(n: int, own: ChildSeconds, peers: list[ChildSeconds]) -> list[str]:
    """Seconds and images per second; against each of ``peers``, the latter as a multiple of the
    peer's (same clock)."""
    cells = []
    for clock in ("wall", "wall_after_imports", "cpu"):
        seconds = getattr(own, clock)
        ratios = "; ".join(f"{getattr(peer, clock) / seconds:.2f}x" for peer in peers)
        cells += [f"{seconds:.1f}", f"{n / seconds:.2f}" + (f" ({ratios})" if ratios else "")]
    return cells


def _training_epochs(
    args: argparse.Namespace,
    reference_step: float | None,
    gflop: dict[str, dict[str, float]],
    ceiling: float,
) -> str:
    """Real training epochs (``_peer_training``): ours cached, anomalib's own loop, per image
    against anomalib RD's step of the model table and against its epoch."""
    import _peer_training as training

    fits = [p for p in FIT_PRESETS if p in args.presets]
    with tempfile.TemporaryDirectory(prefix="bench_peers_fit_") as tmp:
        work = Path(tmp)
        data, split_file, images = training.data_for_fits(
            args.headct, work, args.fit_limit, args.size
        )
        runs: list[tuple[training.Epochs, float | None, str]] = []
        for preset in fits:
            run = training.pdd_fit(
                preset, data, split_file, args.size, args.fit_epochs, work
            )
            runs.append((run, gflop.get(preset, {}).get("cached"), load_average()))
            print(
                f"  {run.name}: steady epoch {run.steady_per_image * 1e3:.0f} ms/image "
                f"({runs[-1][2]})",
                flush=True,
            )
        theirs = None
        if not args.no_anomalib:
            theirs = training.anomalib_fit(
                data, split_file, args.size, args.fit_epochs, work
            )
        if theirs is not None:
            runs.append((theirs, gflop.get(ANOMALIB, {}).get("train"), load_average()))
    rows = []
    for run, counted, load in runs:
        per_image = run.steady_per_image
        rows.append(
            [
                run.name,
                run.batch,
                f"{run.first_seconds:.1f}",
                f"{per_image * 1e3:.0f}",
                "-" if reference_step is None else f"{per_image / reference_step:.2f}x",
                "-"
                if theirs is None
                else f"{per_image / theirs.steady_per_image:.2f}x",
                "-" if counted is None else f"{counted:.1f}",
                _share(counted, per_image, ceiling) or "-",
                f"{run.note}; {load}",
            ]
        )
    if reference_step is not None:
        counted = gflop.get(ANOMALIB, {}).get("train")
        rows.append(
            [
                f"{ANOMALIB} training step (model table, in-memory tensors)",
                TRAIN_BATCH,
                "",
                f"{reference_step * 1e3:.0f}",
                "1.00x",
                "-"
                if theirs is None
                else f"{reference_step / theirs.steady_per_image:.2f}x",
                "-" if counted is None else f"{counted:.1f}",
                _share(counted, reference_step, ceiling) or "-",
                "",
            ]
        )
    return (
        f"training, {args.fit_epochs} epochs on {images} training images of {data} "
        f"({args.size} px); steady epoch: median of epochs 2..{args.fit_epochs}, per image:\n\n"
        + table(
            [
                "training run",
                "batch",
                "epoch 1, s",
                "steady epoch, ms/image",
                "vs anomalib RD step",
                "vs anomalib RD epoch",
                "GFLOP/image counted",
                "% of GEMM ceiling",
                "notes",
            ],
            rows,
        )
    )


def _bf16_scores(presets: list[str], count: int, size: int) -> str:
    """How far bf16 autocast moves image scores: Spearman rho and AUROC, phantoms half with lesions."""
    import numpy as np
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    import pdd
    from pdd.data.synthetic import make_phantom
    from pdd.data.transforms import to_model_input

    rng = np.random.default_rng(14)
    labels = np.arange(count) % 2
    images = torch.stack(
        [
            to_model_input(
                np.repeat(make_phantom(rng, size, lesion=bool(y))[0][..., None], 3, 2),
                size,
            )
            for y in labels
        ]
    )
    rows = []
    for preset in presets:
        model = pdd.create_model(preset, teachers="random", image_size=size).eval()
        scores = {}
        for bf16 in (False, True):
            start = time.perf_counter()
            with torch.inference_mode(), _autocast(bf16):
                scores[bf16] = torch.cat(
                    [model(images[i : i + 8])[1].float() for i in range(0, count, 8)]
                ).numpy()
            scores[(bf16, "s")] = (time.perf_counter() - start) / count
        rho = spearmanr(scores[False], scores[True]).statistic
        auroc = [roc_auc_score(labels, scores[b]) for b in (False, True)]
        rows.append(
            [
                preset,
                f"{scores[(False, 's')] * 1e3:.0f}",
                f"{scores[(True, 's')] * 1e3:.0f}",
                f"{scores[(False, 's')] / scores[(True, 's')]:.2f}x",
                f"{rho:.4f}",
                f"{auroc[0]:.4f} -> {auroc[1]:.4f}",
            ]
        )
        del model
        gc.collect()
    return (
        f"bf16 autocast vs float32, {count} phantoms ({count // 2} with lesions), batch 8, random "
        f"teachers, untrained students ({load_average()}):\n\n"
        + table(
            [
                "model",
                "fp32 ms/img",
                "bf16 ms/img",
                "speed-up",
                "Spearman rho of scores",
                "AUROC fp32 -> bf16",
            ],
            rows,
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--threads", type=int, default=2, help="torch intra-op threads (default 2)"
    )
    p.add_argument(
        "--repeats", type=int, default=5, help="timed rounds (median reported)"
    )
    p.add_argument(
        "--presets", nargs="+", default=list(OURS), help="our presets to time"
    )
    p.add_argument("--no-anomalib", action="store_true", help="time only our models")
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="this process (model table, training rows: both sides) keeps freed memory as the pdd "
        "command does (pdd.allocator); the end-to-end row's processes are unaffected",
    )
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for every model")
    p.add_argument(
        "--e2e-images",
        type=int,
        default=200,
        help="HeadCT files for the end-to-end row (0: skip)",
    )
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time (default), or this process's CPU time: the work done, steadier on a busy "
        "machine (use with --threads 1; with more threads it counts their spin-waits too)",
    )
    p.add_argument(
        "--passes",
        nargs="*",
        choices=list(PASSES),
        default=list(PASSES),
        help="which passes to time (default: all; none: no model table)",
    )
    p.add_argument(
        "--e2e-rounds",
        type=int,
        default=1,
        help="times the end-to-end pipelines run, in turn (median reported)",
    )
    p.add_argument(
        "--size", type=int, default=DEFAULT_SIZE, help="input size (smoke tests: 64)"
    )
    p.add_argument(
        "--headct",
        type=Path,
        default=DEFAULT_HEADCT,
        help="HeadCT folder (absent: the training rows use phantoms, the end-to-end row is skipped)",
    )
    p.add_argument(
        "--fit-epochs",
        type=int,
        default=3,
        help="epochs of each real training run (0: skip the training rows; at least 2)",
    )
    p.add_argument(
        "--fit-limit",
        type=int,
        default=None,
        metavar="N",
        help="train on the first N training images (and N test images), not the whole set",
    )
    p.add_argument(
        "--bf16-scores",
        type=int,
        default=0,
        metavar="N",
        help="only compare bf16 with float32 image scores of our presets on N phantoms",
    )
    args = p.parse_args()
    if args.e2e_rounds < 1:
        p.error("--e2e-rounds: at least 1")
    if args.fit_epochs > 0 and "train" not in args.passes:
        p.error("--fit-epochs: the training rows compare with the train pass (or give 0)")
    if args.fit_epochs == 1:
        p.error(
            "--fit-epochs: a steady-state epoch needs at least 2 (0 skips the training rows)"
        )
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.keep_freed_memory:
        from pdd.allocator import keep_freed_memory

        if not keep_freed_memory():
            p.error("--keep-freed-memory: this C library has no such setting (glibc only)")
    print(
        f"machine: {machine(torch.device('cpu'))}; input {args.size}x{args.size}; bf16 autocast: {args.bf16}"
        f"; keep freed memory: {args.keep_freed_memory}"
    )
    print(f"start: {load_average()}", flush=True)
    if args.bf16_scores:
        print(_bf16_scores(args.presets, args.bf16_scores, args.size))
        return
    if not args.passes:
        if args.e2e_images > 0:
            print(_end_to_end(args.headct, args.e2e_images, args.threads, args.e2e_rounds))
        return
    torch.manual_seed(0)
    images = torch.randn(max(BATCHES), 3, args.size, args.size)
    entries = [] if args.no_anomalib else _anomalib_entries(args.size)
    entries += _our_entries(args.presets, args.size)
    for entry in entries:
        _count_flops(entry, images)
    gemms = _gemms()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    _time_passes(entries, gemms, images, args.repeats, args.bf16, clock, args.passes)
    ceiling, best = _ceiling(gemms)
    print(
        f"\n{args.clock} time, median of {args.repeats} rounds; end: {load_average()}"
    )
    print(
        f"float32 GEMM ceiling, timed in the same rounds: {ceiling:.0f} GFLOP/s ({best}); "
        "% = counted GFLOP (torch.utils.flop_counter: convolutions and matmuls) per second "
        "over it\n"
    )
    print(_model_table(entries, ceiling), flush=True)
    gflop = {entry.name: entry.gflop for entry in entries}
    reference = next(
        (e for e in entries if e.name == ANOMALIB and "train" in e.times), None
    )
    reference_step = (
        None
        if reference is None
        else statistics.median(reference.times["train"]) / TRAIN_BATCH
    )
    del entries, reference
    gc.collect()
    if args.e2e_images > 0:
        print()
        print(_end_to_end(args.headct, args.e2e_images, args.threads, args.e2e_rounds))
    if args.fit_epochs > 0:
        print()
        print(_training_epochs(args, reference_step, gflop, ceiling))


if __name__ == "__main__":
    main()
