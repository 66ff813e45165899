"""Keep freed memory in the process, so that every batch does not fault fresh pages in from the OS.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB) with new pages
from the kernel and unmaps them on ``free``. A 256-px batch of 8 has many such tensors (one
8 x 256 x 64 x 64 float32 map is 32 MiB: every Wide-ResNet layer1 output, every student's last
stage), so each forward and training step touches tens of thousands of fresh pages, one page fault
each, and the time goes to the kernel instead of arithmetic. ``mallopt(M_MMAP_MAX, 0)`` serves
large blocks from the heap instead, and a high trim threshold keeps freed memory for the next
batch: it is not handed back between batches, and the peak grows a little with the heap's
fragmentation (``pdd predict`` on 40 HeadCT files: 2.11-2.14 GB against 1.95-1.99 GB).
Measured (benchmarks/README.md, "Freed memory kept in the process"): a batch-8 ``pdd`` forward
485 -> 429 ms/image on an AMD EPYC (526 -> 428 in a first, unpaired check); stock anomalib RD
gains as much in the same setting, so the ratio between the two barely moves.

It changes the whole process, so the library never does it on import: the ``pdd`` command does
(unless ``PDD_KEEP_FREED_MEMORY=0``), and a program using the Python API may call
``keep_freed_memory()`` itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["ENV_SWITCH", "keep_freed_memory", "wanted"]

ENV_SWITCH = "PDD_KEEP_FREED_MEMORY"
"""``0`` turns the setting off for the ``pdd`` command (any other value, or unset, keeps it on)."""

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# The largest value mallopt's int takes: up to 2 GiB of freed heap top is kept, not handed back.
_NEVER_TRIM = 2**31 - 1


def wanted() -> bool:
    """Whether the ``pdd`` command should apply it: on unless ``PDD_KEEP_FREED_MEMORY=0``."""
    return os.environ.get(ENV_SWITCH, "1").strip() != "0"


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed memory (glibc); returns whether it applied.

    Elsewhere (macOS, Windows, musl) there is no ``mallopt`` of this meaning and nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; both settings or neither count as applied.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
