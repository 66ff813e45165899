"""``pdd.allocator``: with the setting, large blocks come from the heap and freed ones stay there
for the next batch instead of being unmapped and faulted in from the OS again; the ``pdd`` command
applies it, tests calling ``main`` and ``PDD_KEEP_FREED_MEMORY=0`` do not.

Each check runs in a child process: the setting changes the whole process it is made in.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)"
)

# glibc's own account (mallinfo2) of a 64 MiB block: bytes in mmapped blocks while it is held,
# and free bytes the heap keeps after it is freed.
_ACCOUNT = textwrap.dedent(
    """
    import ctypes, sys
    import numpy as np
    from pdd import allocator

    class Info(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    if sys.argv[1] == "on":
        assert allocator.keep_freed_memory()
    block = np.empty(64 * 2**20, dtype=np.uint8)
    block.fill(1)
    mapped = libc.mallinfo2().hblkhd
    del block
    print(mapped, libc.mallinfo2().fordblks)
    """
)


def _account(mode: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _ACCOUNT, mode], capture_output=True, text=True, check=True
    )
    mapped, kept = out.stdout.split()
    return int(mapped), int(kept)


def test_large_blocks_come_from_the_heap_and_stay_there_when_freed() -> None:
    """glibc's default maps a 64 MiB block from the OS and unmaps it on free (so the next one is
    fresh pages again); with the setting it is carved from the heap and kept there when freed."""
    block = 64 * 2**20
    mapped, kept = _account("off")
    assert mapped >= block and kept < block, (mapped, kept)
    mapped, kept = _account("on")
    assert mapped < block and kept >= block, (mapped, kept)


_PROBE = textwrap.dedent(
    """
    import sys
    from pdd import allocator
    calls = []
    allocator.keep_freed_memory = lambda: calls.append(1) or True
    import pdd.cli
    pdd.cli.main = lambda argv=None: 0
    pdd.cli.run()
    print(len(calls))
    """
)


@pytest.mark.parametrize(("switch", "applied"), [(None, 1), ("1", 1), ("0", 0)])
def test_the_pdd_command_applies_it_unless_switched_off(switch: str | None, applied: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PDD_KEEP_FREED_MEMORY"}
    if switch is not None:
        env["PDD_KEEP_FREED_MEMORY"] = switch
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, env=env
    )
    assert int(out.stdout.strip()) == applied


def test_main_alone_leaves_the_allocator_alone() -> None:
    """Tests and programs call ``main``; only the console script's ``run`` changes the process."""
    probe = _PROBE.replace("pdd.cli.run()", "pdd.cli.main([])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) == 0
