"""Shared test fixtures: the golden fixtures carried in the repo, the real HeadCT set, seeding, and
giving back the memory each test used.

A fresh clone passes on its own: the golden test vectors live in ``tests/fixtures``. Only the real
HeadCT images stay outside the repo; tests that need them skip with a reason when they are absent,
and CI (``PDD_REQUIRE_HEADCT=1``) turns that skip into a failure.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # float64_reference, shared by the conv tests
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"
HEADCT_ENV = "PDD_HEADCT_DIR"
REQUIRE_HEADCT_ENV = "PDD_REQUIRE_HEADCT"


_WORKER_MEMORY_GB = 4  # a worker's peak resident memory was 3.2 GB (2 workers, 6.5 GB in all)


def _available_memory_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (the default in pyproject.toml): one worker per core, fewer where the memory
    would not hold them. On 2 cores the suite took 10.5 min instead of 19.5 serially."""
    cores = os.cpu_count() or 1
    memory = _available_memory_gb()
    by_memory = cores if memory is None else max(1, int(memory // _WORKER_MEMORY_GB))
    return max(1, min(cores, by_memory))


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist each worker (and every process its tests start) takes an equal share of
    the cores: most tests are single-threaded Python, and workers whose thread pools overlap the
    others' made the parallel suite as slow as the serial one (2 workers x 2 threads, 2 cores)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = threads
    torch.set_num_threads(int(threads))


_share_the_cores_between_workers()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Golden fixtures carried in the repo (``tests/fixtures``, each folder with its README)."""
    return FIXTURES_DIR


def find_headct() -> tuple[Path | None, str]:
    """The real HeadCT folder: ``$PDD_HEADCT_DIR``, else ``<repo>/../shared/data/headct``.

    Returns ``(folder, "")`` when it holds ``labels.csv``, else ``(None, reason)``.
    """
    explicit = os.environ.get(HEADCT_ENV)
    root = Path(explicit) if explicit else REPO_ROOT.parent / "shared" / "data" / "headct"
    if (root / "labels.csv").is_file():
        return root, ""
    where = f"${HEADCT_ENV}={explicit}" if explicit else f"{root} (beside the clone)"
    return None, (
        f"real HeadCT set not found at {where}; set {HEADCT_ENV} to the folder holding labels.csv"
    )


@pytest.fixture(scope="session")
def headct_dir() -> Path:
    """The real HeadCT set; skips when absent, fails instead when ``PDD_REQUIRE_HEADCT=1`` (CI)."""
    root, reason = find_headct()
    if root is None:
        if os.environ.get(REQUIRE_HEADCT_ENV) == "1":
            pytest.fail(f"{reason} (required: {REQUIRE_HEADCT_ENV}=1)")
        pytest.skip(reason)
    return root


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    """Every test starts from the same random state so failures reproduce."""
    torch.manual_seed(0)


# --------------------------------------------------------------------------- memory

# What a test builds (models, Trainers, datasets) is garbage once it returns, but Lightning's
# objects sit in reference cycles that only a full collection frees, and glibc keeps freed heap
# pages. Without both, the suite's RSS climbed by 0.3-2 GB per training test (6.9 GB after 11
# tests of tests/engine/test_engine_score_paths.py + tests/cli/test_cli_workflow.py).
_RELEASE_AFTER_MB = 64  # collect once RSS grew this much since the last collection


def _rss_mb() -> int | None:
    """Resident memory of this process (Linux), else None."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    """Return freed heap pages to the system (glibc only; a no-op elsewhere)."""
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is not None:
        trim(0)


_last_release_mb = 0


def _release_memory() -> None:
    global _last_release_mb
    gc.collect()
    _malloc_trim()
    _last_release_mb = _rss_mb() or 0


def pytest_collection_finish(session: pytest.Session) -> None:
    """Everything imported so far (torch, lightning, the test modules) lives for the whole run:
    freezing it keeps each later full collection down to the objects the tests made."""
    gc.collect()
    gc.freeze()
    _release_memory()


@pytest.fixture(autouse=True)
def _memory_released_after_each_test() -> Iterator[None]:
    yield
    # The process-wide teacher-feature store (up to 2 GiB) is meant to be shared by the runs of
    # one command; across tests it would only hold one test's features into the next ones.
    feature_cache = sys.modules.get("pdd.training.feature_cache")
    if feature_cache is not None:
        feature_cache.clear_memory()
    rss = _rss_mb()
    if rss is None or rss - _last_release_mb > _RELEASE_AFTER_MB:
        _release_memory()


@pytest.fixture
def release_memory() -> Callable[[], None]:
    """For a test that runs several heavy steps: call it between them so their peaks do not add."""
    return _release_memory


@pytest.fixture(autouse=True, scope="module")
def _memory_released_after_each_module() -> Iterator[None]:
    """Module-scoped fixtures (fitted runs, built models) are torn down before this one."""
    yield
    _release_memory()


# --------------------------------------------------------------------------- memory report

# ``PDD_TEST_MEMORY=1 python -m pytest -n 0 tests/<dir>`` ends with the tests and files that peaked
# highest or left the most memory behind (Linux): how to find what holds memory across tests
# without running the whole suite. ``-n 0``: in one process (parallel workers keep their rows).
MEMORY_REPORT_ENV = "PDD_TEST_MEMORY"
_memory_rows: list[tuple[str, int, int, int]] = []  # (test id, RSS before, peak, RSS after) in MB


def _status_mb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    return 0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    if os.environ.get(MEMORY_REPORT_ENV) != "1":
        yield
        return
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")  # restart the peak (VmHWM) at this test's start
    before = _status_mb("VmRSS")
    yield
    _memory_rows.append((item.nodeid, before, _status_mb("VmHWM"), _status_mb("VmRSS")))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _memory_rows:
        return
    write = terminalreporter.write_line
    by_file: dict[str, list[tuple[str, int, int, int]]] = {}
    for row in _memory_rows:
        by_file.setdefault(row[0].split("::")[0], []).append(row)
    write(f"\nmemory per file (MB; {MEMORY_REPORT_ENV}=1): peak, RSS before -> after")
    for name, rows in sorted(by_file.items(), key=lambda kv: -max(r[2] for r in kv[1])):
        write(f"  {max(r[2] for r in rows):6d}  {rows[0][1]:6d} -> {rows[-1][3]:6d}  {name}")
    write("tests with the highest peak (MB): peak, RSS before -> after")
    for nodeid, before, peak, after in sorted(_memory_rows, key=lambda r: -r[2])[:12]:
        write(f"  {peak:6d}  {before:6d} -> {after:6d}  {nodeid}")
    write("tests that left the most behind (MB): growth, RSS before -> after")
    for nodeid, before, _peak, after in sorted(_memory_rows, key=lambda r: r[1] - r[3])[:8]:
        write(f"  {after - before:+6d}  {before:6d} -> {after:6d}  {nodeid}")
