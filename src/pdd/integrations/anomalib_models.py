"""anomalib's detectors named in a benchmark suite: looked up, their arguments checked, built.

anomalib is an optional extra (``pip install -e ".[anomalib]"``) and is imported on first use, so
``pdd`` works without it; a suite that names an anomalib model without it installed fails with one
line before anything is trained.

What we set, and why: the model's own pre-processor at the suite's image size (anomalib's
transforms, e.g. resize and ImageNet normalisation, on our decoded images); no post-processor, no
evaluator and no visualizer, because the raw image scores and anomaly maps go to OUR evaluation
code (threshold from held-out normals, metrics, AUPRO). Backbones follow the suite's teachers:
``teachers: random`` builds them with ``pre_trained: false`` unless the entry's ``args`` say
otherwise; a model with no such option (Stfpm, EfficientAd) always loads pretrained weights, so a
random-teacher suite refuses it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from pdd.errors import ConfigError, WeightsError

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "INSTALL_HINT",
    "MANAGED_ARGS",
    "PREFIX",
    "AnomalibEntry",
    "anomalib_version",
    "build_model",
    "check_entry",
    "check_weights",
    "model_arguments",
]

PREFIX = "anomalib:"
"""How a suite names an anomalib model among the presets: ``anomalib:Patchcore``."""
MANAGED_ARGS = ("pre_processor", "post_processor", "evaluator", "visualizer")
"""Constructor arguments the benchmark sets itself (see the module docstring)."""
INSTALL_HINT = 'pip install -e ".[anomalib]"'
_PRETRAINED = "pre_trained"
DEFAULT_IMAGE_SIZE = 256
"""When the suite gives no image size (anomalib's own default)."""


@dataclass(frozen=True)
class AnomalibEntry:
    """One anomalib model of a suite: ``label`` is its name in the tables (``anomalib:Padim`` or
    the entry's ``name``), ``model`` the class in ``anomalib.models``, ``args`` its constructor
    arguments; ``epochs`` / ``batch_size`` override the suite's for this model only."""

    label: str
    model: str
    args: Mapping[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    batch_size: int | None = None


def _anomalib(label: str) -> ModuleType:
    try:
        import anomalib
    except ImportError as exc:
        raise ConfigError(
            f"{label}: anomalib is not installed ({exc}); install the extra: {INSTALL_HINT}"
        ) from exc
    return anomalib


def anomalib_version(label: str = "anomalib") -> str:
    """The installed anomalib's version (a ConfigError naming ``label`` when it is missing)."""
    return str(_anomalib(label).__version__)


def _model_class(entry: AnomalibEntry) -> type:
    _anomalib(entry.label)
    from anomalib import models
    from anomalib.models import AnomalibModule

    found = getattr(models, entry.model, None)
    if not (isinstance(found, type) and issubclass(found, AnomalibModule)):
        known = sorted(
            name
            for name in getattr(models, "__all__", ())
            if isinstance(getattr(models, name, None), type)
            and issubclass(getattr(models, name), AnomalibModule)
            and getattr(models, name) is not AnomalibModule
        )
        raise ConfigError(
            f"{entry.label}: anomalib {anomalib_version()} has no model {entry.model!r} "
            f"(known: {', '.join(known)})"
        )
    return found


def _parameters(cls: type) -> Mapping[str, inspect.Parameter]:
    parameters = dict(inspect.signature(cls.__init__).parameters)
    parameters.pop("self", None)
    return parameters


def check_entry(entry: AnomalibEntry, teachers: str) -> None:
    """Everything that can be checked without building the model: anomalib installed, the model
    exists, every argument is one of its constructor's, the weights policy can be met."""
    cls = _model_class(entry)
    parameters = _parameters(cls)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    named = [n for n, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    for key in entry.args:
        if key in MANAGED_ARGS:
            raise ConfigError(
                f"{entry.label}: args.{key}: is set by pdd benchmark (raw scores go to pdd's "
                "evaluation), remove it"
            )
        if key not in parameters and not takes_any:
            usable = [n for n in named if n not in MANAGED_ARGS]
            raise ConfigError(
                f"{entry.label}: args.{key}: not an argument of anomalib's {entry.model} "
                f"(known: {', '.join(usable)})"
            )
    if teachers == "random" and _PRETRAINED not in parameters:
        raise ConfigError(
            f"{entry.label}: anomalib's {entry.model} always loads pretrained weights (it has no "
            f"{_PRETRAINED} option), but the suite's teachers are random; drop the model or use "
            "pretrained teachers"
        )


def model_arguments(entry: AnomalibEntry, teachers: str) -> dict[str, Any]:
    """The constructor arguments used: the entry's, plus ``pre_trained`` from the suite's teachers
    when the model has that option and the entry does not set it."""
    args = dict(entry.args)
    if _PRETRAINED in _parameters(_model_class(entry)) and _PRETRAINED not in args:
        args[_PRETRAINED] = teachers == "pretrained"
    return args


def build_model(entry: AnomalibEntry, image_size: int, teachers: str) -> Any:
    """The ``AnomalibModule``, with its own pre-processor at ``image_size`` and no post-processing.

    Pretrained backbone weights are downloaded by timm / anomalib themselves when online; offline
    and not cached, a ``WeightsError`` says which model and backbone lacked them.
    """
    cls = _model_class(entry)
    args = model_arguments(entry, teachers)
    try:
        pre_processor = cls.configure_pre_processor(image_size=(image_size, image_size))
        return cls(
            **args,
            pre_processor=pre_processor,
            post_processor=False,
            evaluator=False,
            visualizer=False,
        )
    except OSError as exc:  # timm/huggingface_hub: not cached and no connection
        backbone = args.get("backbone", "its default backbone")
        raise WeightsError(
            f"{entry.label}: cannot load the pretrained weights of {backbone} "
            f"({type(exc).__name__}: {_first_line(exc)}); run once with internet access (timm "
            f"caches them under ~/.cache/huggingface) or set args.{_PRETRAINED}: false"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{entry.label}: anomalib's {entry.model} refused the arguments {args}: "
            f"{_first_line(exc)}"
        ) from exc


def check_weights(entry: AnomalibEntry, image_size: int, teachers: str) -> None:
    """Build the model once when it loads pretrained weights, so that missing weights (offline,
    not cached) stop a benchmark before anything is trained; downloads them when online."""
    if model_arguments(entry, teachers).get(_PRETRAINED, True):
        build_model(entry, image_size, teachers)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
