"""Run `pdd demo` and print (or write into README.md) the README's demo table from its metrics.json.

The README quotes what `pdd demo` prints; this script is how those lines are made, so they stay
what the stated command prints on the stated machine:

    python benchmarks/demo_table.py --out runs/demo_table --readme README.md   # runs the demo
    python benchmarks/demo_table.py --metrics runs/demo/run/metrics.json       # table only

The demo runs in a fresh process (`pdd demo --out OUT --no-progress` plus anything after `--`),
timed from outside like `/usr/bin/time` (wall time, peak RSS of the process). Its output says when
the fused CPU scan kernel was compiled during the run; the table says so, since that adds the
compile time to the first demo on a machine. With ``--readme`` the block between the markers
``<!-- demo-table:begin -->`` and ``<!-- demo-table:end -->`` is replaced; nothing else changes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

BEGIN = "<!-- demo-table:begin -->"
END = "<!-- demo-table:end -->"
KERNEL_BUILD_LINE = "compiling the fused CPU scan kernel"
# metrics.json keys in the order of the table's columns, with their headers.
COLUMNS = {
    "image_auroc": "image AUROC",
    "image_ap": "image AP",
    "image_f1_max": "image F1-max",
    "pixel_auroc": "pixel AUROC",
    "pixel_aupro": "pixel AUPRO",
}


@dataclass(frozen=True)
class DemoRun:
    """What one demo run measured; ``seconds``/``peak_rss_mb`` are None when not timed here."""

    command: str
    metrics: dict[str, Any]
    seconds: float | None = None
    peak_rss_mb: float | None = None
    kernel_built: bool | None = None


def machine() -> str:
    """CPU model, core count, widest vector ISA, torch version: what the numbers depend on."""
    model, flags = platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == platform.machine():
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    try:
        torch = f"torch {metadata.version('torch')}"
    except metadata.PackageNotFoundError:
        torch = "torch not installed"
    return f"{model}, {os.cpu_count()} cores ({isa}), {torch}"


def run_demo(out: Path, extra: list[str]) -> DemoRun:
    """Run the demo in a child process, echo its output, and time it from outside."""
    argv = ["pdd", "demo", "--out", str(out), "--no-progress", *extra]
    pdd = Path(sys.executable).with_name("pdd")
    started = time.perf_counter()
    done = subprocess.run([str(pdd), *argv[1:]], check=False, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"error: {shlex.join(argv)} exited with status {done.returncode}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    return DemoRun(
        command=shlex.join(argv),
        metrics=read_metrics(out / "run" / "metrics.json"),
        seconds=seconds,
        peak_rss_mb=peak_kb / 1024,
        kernel_built=KERNEL_BUILD_LINE in done.stdout + done.stderr,
    )


def read_metrics(path: Path) -> dict[str, Any]:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"error: {path}: cannot read the demo's metrics ({exc})") from None
    missing = [key for key in COLUMNS if not isinstance(metrics.get(key), (int, float))]
    if missing:
        raise SystemExit(f"error: {path}: no {', '.join(missing)} in the demo's metrics")
    return metrics


def render(run: DemoRun, where: str, when: datetime.date) -> str:
    """The README block: the command, the machine, one table row, and how long it took."""
    metrics = run.metrics
    settings = (
        f"preset `{metrics.get('preset', 'pdd')}`, {metrics.get('teachers', 'random')} teachers, "
        f"{metrics.get('image_size')} px, epochs: {metrics.get('epochs')}, "
        f"{metrics.get('num_train')} training / {metrics.get('num_test')} test images, "
        f"seed {metrics.get('seed')}"
    )
    header = [*COLUMNS.values(), "wall time"]
    row = [f"{metrics[key]:.3f}" for key in COLUMNS]
    if run.seconds is None:
        row.append("not timed")
    else:
        kernel = (
            "incl. compiling the CPU scan kernel" if run.kernel_built else "kernel already compiled"
        )
        row.append(f"{run.seconds:.0f} s ({kernel}; peak RSS {run.peak_rss_mb:.0f} MB)")
    lines = [
        BEGIN,
        (f"`{run.command}` ({settings}), measured {when.isoformat()} on {where} with "
         "`python benchmarks/demo_table.py`, which regenerates these lines:"),
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        "| " + " | ".join(row) + " |",
        END,
    ]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with its one demo-table block replaced by ``block``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"error: the README needs exactly one {BEGIN} ... {END} block")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + block + text[end:]


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in args_list:
        cut = args_list.index("--")
        args_list, extra = args_list[:cut], args_list[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo_table"),
                        help="demo output folder (must not exist or be empty)")
    parser.add_argument("--metrics", type=Path,
                        help="render from this metrics.json instead of running the demo")
    parser.add_argument("--readme", type=Path, help="replace the demo-table block of this file")
    args = parser.parse_args(args_list)
    if args.metrics is not None:  # the machine that wrote the file is not recorded in it
        run = DemoRun(command=f"pdd demo (metrics read from {args.metrics})",
                      metrics=read_metrics(args.metrics))
        where = "the machine that wrote it"
    else:
        run = run_demo(args.out, extra)
        where = machine()
    block = render(run, where, datetime.date.today())
    print(block)
    if args.readme is not None:
        text = args.readme.read_text(encoding="utf-8")
        args.readme.write_text(replace_block(text, block), encoding="utf-8")
        print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
