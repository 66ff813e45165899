"""Shared test fixtures: the golden fixtures carried in the repo, the real HeadCT set, seeding.

A fresh clone passes on its own: the golden test vectors live in ``tests/fixtures``. Only the real
HeadCT images stay outside the repo; tests that need them skip with a reason when they are absent,
and CI (``PDD_REQUIRE_HEADCT=1``) turns that skip into a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"
HEADCT_ENV = "PDD_HEADCT_DIR"
REQUIRE_HEADCT_ENV = "PDD_REQUIRE_HEADCT"


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
