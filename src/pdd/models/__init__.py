"""Model families and named presets: ``create_model("pdd", image_size=128, teachers="random")``."""

from __future__ import annotations

from typing import Any

from pdd.config import list_presets, resolve_config
from pdd.models.base import AnomalyModel
from pdd.models.pdd import PDD
from pdd.models.rd4ad import RD4AD

__all__ = [
    "FAMILIES",
    "AnomalyModel",
    "create_model",
    "list_presets",
    "register_family",
]

FAMILIES: dict[str, type[AnomalyModel]] = {}


def register_family(cls: type[AnomalyModel]) -> type[AnomalyModel]:
    """Make a model class available to presets whose ``family`` is ``cls.family``."""
    FAMILIES[cls.family] = cls
    return cls


register_family(PDD)
register_family(RD4AD)


def create_model(preset: str, **overrides: Any) -> AnomalyModel:
    """Build the named preset with config overrides (``create_model(**model.config)`` rebuilds)."""
    config = resolve_config(preset, overrides)
    return FAMILIES[config["family"]](config)
