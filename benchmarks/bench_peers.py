"""Side by side with anomalib's Reverse Distillation: the model a user would install instead.

    python benchmarks/bench_peers.py [--threads 2] [--repeats 5] [--e2e-images 200] [--bf16]
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
* end to end, files to scores: ``pdd predict`` (``pdd`` and ``rd4ad`` checkpoints with random teachers, batch 8,
  heatmap overlays written) against anomalib's ``Engine.predict(data_path=...)`` with its RD model
  (its own pre-processing, batch 1 as its file loader gives, result images written), both in this
  process, model loading included (our scan kernel's one-time build is not: it is done before the
  clock starts), on the first ``--e2e-images`` HeadCT images.

The load average is printed before and after: timings on a shared machine are only as good as it
was idle.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _common import machine, table
from torch import Tensor, nn

DEFAULT_SIZE = 256
BATCHES = (1, 8)
TRAIN_BATCH = 4
PASSES = (*(f"infer{batch}" for batch in BATCHES), "train")
ANOMALIB = "anomalib RD"
ANOMALIB_OFFICIAL = "anomalib RD, official width"
OURS = ("rd4ad", "pdd", "pdd-reference")
# End to end: the flagship, and the same model family as anomalib's RD (the pipelines compared).
E2E_PRESETS = ("pdd", "rd4ad")
DEFAULT_HEADCT = Path(__file__).resolve().parents[2] / "shared" / "data" / "headct"


@dataclass
class Entry:
    """One model under test: its eval forward, its training loss and its trainable parameters."""

    name: str
    model: nn.Module
    infer: Callable[[Tensor], object]
    loss: Callable[[Tensor], Tensor]
    trainable: list[nn.Parameter]
    optimizer: torch.optim.Optimizer | None = None
    times: dict[str, list[float]] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)

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

        trainable = [p for p in model.parameters() if p.requires_grad]
        entries.append(Entry(preset, model, infer, loss, trainable))
    return entries


def _autocast(bf16: bool) -> contextlib.AbstractContextManager:
    if bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _time_passes(
    entries: list[Entry],
    images: Tensor,
    repeats: int,
    bf16: bool,
    clock: Callable[[], float],
    wanted: list[str],
) -> None:
    """Every pass, round by round across the models; round 0 is the untimed warm-up."""
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
            print(
                f"  {name}: round {round_index}/{repeats} done ({_load()})", flush=True
            )
        medians = ", ".join(
            f"{e.name} {statistics.median(e.times[name]) * 1e3:.0f} ms" for e in entries
        )
        print(f"  {name} medians: {medians}", flush=True)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def _ratio(value: float, reference: float | None) -> str:
    return "" if reference is None else f" ({value / reference:.2f}x)"


def _model_table(entries: list[Entry]) -> str:
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
            scale = 1e3 / (1 if name == "train" else int(name.removeprefix("infer")))
            value = m[name] * scale
            ref = None if reference is None else reference[name] * scale
            cells.append(f"{value:.0f}{_ratio(value, ref)}")
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
            "parameters, M",
            "peak extra GiB, infer 8 / train",
        ],
        rows,
    )


def _pdd_predict(images: Path, work: Path, preset: str) -> tuple[float, float]:
    """Wall and CPU seconds of ``pdd predict`` (in process) on ``images`` with a ``preset``
    checkpoint, checkpoint loading included."""
    import pdd
    from pdd.cli import main
    from pdd.runs import checkpoint

    model = pdd.create_model(preset, teachers="random", image_size=DEFAULT_SIZE)
    ckpt = checkpoint.save(
        work / f"{preset}.ckpt", model, threshold=0.5, map_stats={"vmin": 0.0, "vmax": 1.0}
    )
    del model
    gc.collect()
    # The fused scan kernel is compiled once per machine (and venv) and cached; a first build
    # (~20 s, a g++ subprocess) is not part of scoring files, so it happens before the clock.
    from pdd.teachers.cross_scan import cpu_kernel

    cpu_kernel()
    start, cpu = time.perf_counter(), time.process_time()
    status = main(
        [
            "predict",
            "--checkpoint",
            str(ckpt),
            "--out",
            str(work / preset),
            "--no-progress",
            str(images),
        ]
    )
    seconds = time.perf_counter() - start, time.process_time() - cpu
    if status:
        raise SystemExit(f"error: pdd predict failed with status {status}")
    return seconds


def _anomalib_predict(images: Path, work: Path) -> tuple[float, float] | None:
    """Wall and CPU seconds of anomalib's ``Engine.predict(data_path=...)`` with a ReverseDistillation model."""
    try:
        from anomalib.engine import Engine
        from anomalib.models import ReverseDistillation
    except ImportError:
        return None
    start, cpu = time.perf_counter(), time.process_time()
    model = ReverseDistillation(pre_trained=False)
    engine = Engine(
        default_root_dir=str(work / "anomalib"), logger=False, enable_progress_bar=False
    )
    predictions = engine.predict(model=model, data_path=str(images))
    seconds = time.perf_counter() - start, time.process_time() - cpu
    if not predictions:
        raise SystemExit("error: anomalib predicted nothing")
    return seconds


def _end_to_end(headct: Path, count: int) -> str:
    source = headct / "head_ct"
    files = sorted(source.glob("*.png"))[:count]
    if not files:
        return f"skip: end-to-end row: no HeadCT images in {source}"
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        work = Path(tmp)
        images = work / "images"
        images.mkdir()
        for path in files:
            shutil.copy(path, images / path.name)
        ours = {preset: _pdd_predict(images, work, preset) for preset in E2E_PRESETS}
        theirs = _anomalib_predict(images, work)
    n = len(files)
    rows = [
        [f"pdd predict ({preset} preset, batch 8)", *_e2e_cells(n, ours[preset], theirs)]
        for preset in E2E_PRESETS
    ]
    if theirs is None:
        rows.append([ANOMALIB, "skipped: anomalib not importable", "", "", ""])
    else:
        rows.append(
            ["anomalib Engine.predict (RD, batch 1)", *_e2e_cells(n, theirs, None)]
        )
    return f"end to end on {n} HeadCT files ({_load()}):\n\n" + table(
        ["pipeline", "wall s", "images/s (wall)", "CPU s", "images per CPU-second"],
        rows,
    )


def _e2e_cells(
    n: int, own: tuple[float, float], peer: tuple[float, float] | None
) -> list[str]:
    """Wall and CPU figures; against ``peer``, images/s as a multiple of the peer's."""
    cells = []
    for i in (0, 1):
        rate = n / own[i]
        ratio = "" if peer is None else f" ({peer[i] / own[i]:.2f}x)"
        cells += [f"{own[i]:.1f}", f"{rate:.2f}{ratio}"]
    return cells


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
        f"teachers, untrained students ({_load()}):\n\n"
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
        nargs="+",
        choices=list(PASSES),
        default=list(PASSES),
        help="which passes to time (default: all)",
    )
    p.add_argument(
        "--size", type=int, default=DEFAULT_SIZE, help="input size (smoke tests: 64)"
    )
    p.add_argument("--headct", type=Path, default=DEFAULT_HEADCT, help="HeadCT folder")
    p.add_argument(
        "--bf16-scores",
        type=int,
        default=0,
        metavar="N",
        help="only compare bf16 with float32 image scores of our presets on N phantoms",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(
        f"machine: {machine(torch.device('cpu'))}; input {args.size}x{args.size}; bf16 autocast: {args.bf16}"
    )
    print(f"start: {_load()}", flush=True)
    if args.bf16_scores:
        print(_bf16_scores(args.presets, args.bf16_scores, args.size))
        return
    torch.manual_seed(0)
    images = torch.randn(max(BATCHES), 3, args.size, args.size)
    entries = [] if args.no_anomalib else _anomalib_entries(args.size)
    entries += _our_entries(args.presets, args.size)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    _time_passes(entries, images, args.repeats, args.bf16, clock, args.passes)
    print(f"\n{args.clock} time, median of {args.repeats} rounds; end: {_load()}\n")
    print(_model_table(entries), flush=True)
    del entries
    gc.collect()
    if args.e2e_images > 0:
        print()
        print(_end_to_end(args.headct, args.e2e_images))


if __name__ == "__main__":
    main()
