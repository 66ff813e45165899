"""Shared test fixtures: the read-only ../shared folder beside the checkout, and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The project's shared folder (golden fixtures, HeadCT). CI lays it beside the clone."""
    path = Path(os.environ.get("PDD_SHARED_DIR", REPO_ROOT.parent / "shared"))
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: shared folder with the golden fixtures is missing; set PDD_SHARED_DIR"
        )
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return shared_dir() / "fixtures"


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    """Every test starts from the same random state so failures reproduce."""
    torch.manual_seed(0)
