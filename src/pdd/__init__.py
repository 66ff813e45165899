"""PDD: Manifold-Prior Diverse Distillation for unsupervised medical image anomaly detection."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Detector", "__version__", "create_model", "list_presets"]


def __getattr__(name: str) -> Any:
    """``pdd.create_model`` / ``pdd.list_presets`` without importing torch for ``import pdd``."""
    if name == "Detector":
        from pdd.api import Detector

        return Detector
    if name in ("create_model", "list_presets"):
        from pdd import models

        return getattr(models, name)
    raise AttributeError(f"module 'pdd' has no attribute {name!r}")
