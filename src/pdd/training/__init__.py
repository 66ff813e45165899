"""Training: `pdd fit` / resume / test runs, the Trainer, the LightningModule, loggers.

The runner is imported lazily so that ``from pdd.training import options`` does not pay for
Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FitOptions", "fit", "resume", "test"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("pdd.training.runner"), name)
    raise AttributeError(f"module 'pdd.training' has no attribute {name!r}")
