"""Before/after: the eval forward of this checkout against another git revision, in alternating processes.

    python benchmarks/pair_revisions.py --base REV [--what pdd|rd4ad|pdd-reference|vmamba_tiny_v0|wide_resnet50_2]
        [--rounds 4] [--repeats 6] [--batches 8 1] [--threads 2]

A change inside a model cannot be switched off in one process once the old code is gone, so each
side runs in its own process: ``REV`` checked out into a temporary git worktree and imported from
there, this checkout from ``src/``. The processes alternate (base, ours, base, ours, ...) so that a
drift in machine load hits both alike; each builds the model (random teachers, 256x256, float32),
runs two untimed forwards per batch size, then reports the median of ``--repeats`` timed forwards in
ms per image. The table gives each side's median over the rounds and their ratio, and every round,
so the spread is visible. The scan kernel of both sides must already be built (one forward of
each does it).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import load_average, machine, table

REPO = Path(__file__).resolve().parents[1]

_CHILD = """
import statistics, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(int(sys.argv[3]))
torch.manual_seed(0)
what = sys.argv[2]
import pdd
from pdd import teachers
model = (teachers.build(what) if what in teachers.available()
         else pdd.create_model(what, teachers="random", image_size=256)).eval()
for batch in map(int, sys.argv[5:]):
    x = torch.randn(batch, 3, 256, 256)
    with torch.no_grad():
        for _ in range(2):
            model(x)
        times = []
        for _ in range(int(sys.argv[4])):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    print(batch, statistics.median(times) * 1e3 / batch)
"""


def _time(src: Path, args: argparse.Namespace) -> dict[int, float]:
    """One process: ms per image by batch size for the package under ``src``."""
    command = [sys.executable, "-c", _CHILD, str(src), args.what, str(args.threads),
               str(args.repeats), *map(str, args.batches)]  # fmt: skip
    lines = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return {
        int(b): float(ms) for b, ms in (line.split() for line in lines.splitlines())
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="git revision to compare against")
    p.add_argument(
        "--what", default="pdd", help="a preset or a teacher name (default pdd)"
    )
    p.add_argument("--rounds", type=int, default=4, help="process pairs (default 4)")
    p.add_argument("--repeats", type=int, default=6, help="timed forwards per process")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 1])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    base_label = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", args.base],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    print(
        f"machine: {machine(torch.device('cpu'))}; {args.threads} threads; {args.what}"
    )
    print(f"start: {load_average()}")
    with tempfile.TemporaryDirectory(prefix="pair_revisions_") as tmp:
        worktree = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(worktree), args.base],
            check=True,
        )  # fmt: skip
        try:
            rounds = []
            for _ in range(args.rounds):
                rounds.append(
                    (_time(worktree / "src", args), _time(REPO / "src", args))
                )
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
                check=False,
            )  # fmt: skip
    print(f"end: {load_average()}\n")
    rows = []
    for batch in args.batches:
        base = [r[0][batch] for r in rounds]
        ours = [r[1][batch] for r in rounds]
        rows.append([
            batch, f"{statistics.median(base):.1f}", f"{statistics.median(ours):.1f}",
            f"{statistics.median(ours) / statistics.median(base):.3f}",
            " / ".join(f"{b:.0f}:{o:.0f}" for b, o in zip(base, ours)),
        ])  # fmt: skip
    print(table(
        ["batch", f"{base_label} ms/image", "this checkout ms/image", "ratio", "rounds (base:ours)"],
        rows,
    ))  # fmt: skip


if __name__ == "__main__":
    main()
