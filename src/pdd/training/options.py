"""``FitOptions``: everything ``pdd fit`` needs, and its plain-data form saved in ``config.yaml``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdd.config.messages import Subject, validate
from pdd.config.schema import FitSettings
from pdd.errors import ConfigError

__all__ = [
    "FitOptions",
    "model_overrides",
    "normalised",
    "options_from_dict",
    "options_to_dict",
]


@dataclass
class FitOptions:
    """Everything `pdd fit` needs; saved in the run folder so `resume` can continue it."""

    data: Path
    out: Path
    format: str = "auto"
    preset: str = "pdd"
    teachers: str = "pretrained"  # pretrained | random (recorded in metrics.json)
    image_size: int | None = None  # None -> the preset's
    epochs: int | None = None
    batch_size: int | None = None  # per device
    seeds: list[int] = field(default_factory=lambda: [0])
    split_file: Path | None = None
    class_name: str | None = (
        None  # None: every class of a multi-class set, per class + mean
    )
    joint: bool = False  # one model for every class of a multi-class set (pooled + per class)
    holdout_fraction: float = 0.1  # training normals held out for the threshold; 0: none
    fpr: float = 0.05  # false-alarm rate the threshold promises for normals like the held-out ones
    feature_cache: str = "auto"  # auto | memory | disk | off: frozen teacher features of training
    feature_cache_dtype: str = "float32"  # float32 | bfloat16: how the cache stores them
    group_by: str | None = None  # regex: the group (patient) of a 2-D image from its file name
    model_overrides: dict[str, Any] = field(default_factory=dict)
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    checkpoint_every_n_steps: int | None = None
    logger: str = "csv"  # csv | tensorboard | mlflow (Lightning's loggers; csv always written)
    progress: bool = True


def normalised(options: FitOptions) -> FitOptions:
    """Paths as ``Path``, seeds as ints, the overrides copied: the form the runner works with."""
    return dataclasses.replace(
        options,
        data=Path(options.data),
        out=Path(options.out),
        split_file=None if options.split_file is None else Path(options.split_file),
        seeds=[int(s) for s in options.seeds],
        model_overrides=dict(options.model_overrides),
    )


def options_to_dict(options: FitOptions) -> dict[str, Any]:
    """Plain data for ``config.yaml`` (what the run computes; not how it is watched)."""
    values = dataclasses.asdict(options)
    for key in ("data", "out", "split_file"):
        if values[key] is not None:
            values[key] = str(values[key])
    del values["progress"]  # how the run is watched, not what it computes
    return values


def options_from_dict(values: Mapping[str, Any]) -> FitOptions:
    """The inverse of ``options_to_dict``; an unknown key or a bad value (checked by the options
    schema, ``pdd.config.schema.FitSettings``) is a ValueError naming it."""
    known = {f.name for f in dataclasses.fields(FitOptions)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}")
    settings = {k: v for k, v in values.items() if k not in ("model_overrides", "progress")}
    try:
        validate(FitSettings, settings, Subject(name=lambda key: f"options.{key}"))
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return normalised(FitOptions(**values))


def model_overrides(options: FitOptions) -> dict[str, Any]:
    """The options that change the model config, merged into the user's model overrides."""
    overrides = json.loads(
        json.dumps(options.model_overrides)
    )  # deep copy of plain data
    overrides["teachers"] = options.teachers
    if options.image_size is not None:
        overrides["image_size"] = options.image_size
    train = overrides.setdefault("train", {})
    if options.epochs is not None:
        train["epochs"] = options.epochs
    if options.batch_size is not None:
        train["batch_size"] = options.batch_size
    if not train:
        del overrides["train"]
    return overrides
