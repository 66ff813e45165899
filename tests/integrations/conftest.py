"""anomalib is an optional extra: its tests skip with the reason when it is not importable, and CI
(``PDD_REQUIRE_ANOMALIB=1``, set by .ci/run, which installs the extra) turns that skip into a
failure."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

REQUIRE_ANOMALIB_ENV = "PDD_REQUIRE_ANOMALIB"


@pytest.fixture
def anomalib() -> ModuleType:
    """The anomalib module, or a skip (a failure under ``PDD_REQUIRE_ANOMALIB=1``)."""
    try:
        return importlib.import_module("anomalib")
    except ImportError as exc:
        reason = (
            f"anomalib is not importable ({exc}); install the extra: "
            'pip install -e ".[anomalib]"'
        )
        if os.environ.get(REQUIRE_ANOMALIB_ENV) == "1":
            pytest.fail(f"{REQUIRE_ANOMALIB_ENV}=1 but {reason}")
        pytest.skip(reason)
