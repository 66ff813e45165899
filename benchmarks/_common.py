"""Shared helpers of the benchmark scripts: arguments, timing, machine description, markdown tables."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import torch


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--bf16", action="store_true", help="run under torch.autocast(dtype=bfloat16)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs per measurement (median reported)",
    )
    return p


def setup(args: argparse.Namespace) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    return torch.device(args.device)


def autocast(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    if args.bf16:
        return torch.autocast(device_type=args.device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1
) -> float:
    """Median wall time of ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine(device: torch.device) -> str:
    """One line: CPU model and vector extensions or GPU name, threads, torch version."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name, flags = platform.processor() or platform.machine(), set()
        with (
            contextlib.suppress(OSError),
            open("/proc/cpuinfo", encoding="utf-8") as cpuinfo,
        ):
            lines = [line.split(":", 1) for line in cpuinfo if ":" in line]
            models = [
                value.strip() for key, value in lines if key.strip() == "model name"
            ]
            name = models[0] if models else name
            flags = next(
                (set(value.split()) for key, value in lines if key.strip() == "flags"),
                set(),
            )
        extensions = [label for flag, label in _EXTENSIONS if flag in flags]
        name += f" ({', '.join(extensions) or 'no AVX2'})"
    return f"{name}; torch {torch.__version__}; {torch.get_num_threads()} intra-op threads"


# /proc/cpuinfo flags that decide which float32/bf16 kernels oneDNN and the scan kernel can use.
_EXTENSIONS = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_bf16", "AVX512-BF16"),
    ("amx_tile", "AMX"),
)


def load_average() -> str:
    """The 1/5/15-minute load average: timings on a shared machine are only as good as it."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@contextlib.contextmanager
def inference(args: argparse.Namespace) -> Iterator[None]:
    with torch.inference_mode(), autocast(args):
        yield
