"""Training and evaluation engine: Lightning module, checkpoints, fit/test/resume runner, metrics.

The runner and module are imported lazily: ``pdd.engine.metrics`` is used by light-weight code
(reports, prediction) that should not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FitOptions", "fit", "resume", "test"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("pdd.engine.runner"), name)
    raise AttributeError(f"module 'pdd.engine' has no attribute {name!r}")
