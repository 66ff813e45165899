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
    """Build the named preset with config overrides (``create_model(**model.config)`` rebuilds).

    Overrides are config keys; nested sections merge key by key and dotted keys work. The model's
    ``forward`` gives anomaly maps at the input's size and one score per image (higher: more
    anomalous); ``loss`` is what training minimises.

    Example:
        >>> import torch
        >>> from pdd import create_model
        >>> model = create_model("rd4ad", teachers="random", image_size=64).eval()
        >>> maps, scores = model(torch.rand(2, 3, 64, 64))
        >>> tuple(maps.shape), tuple(scores.shape)
        ((2, 64, 64), (2,))

        The method's preset needs the pretrained teachers (``pdd weights download``):

        >>> model = create_model("pdd", **{"train.lr": 1e-3})  # doctest: +SKIP
    """
    config = resolve_config(preset, overrides)
    return FAMILIES[config["family"]](config)
