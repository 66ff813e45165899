"""`pdd fit` and `pdd test`: option parsing, the --config file merge, then the engine's runner.

Precedence, lowest first: the preset, the ``--config`` YAML file, the command line (options and
``--set``). The runner saves the resolved configuration as ``config.yaml`` in every run folder.

A ``--config`` file holds any fit option under its long name (``image_size: 64``, ``seeds: [0, 1]``,
``class: liver``) and model overrides, either under ``model:`` or as top-level keys of the preset
(so a preset file is itself a valid config file). Relative paths in it are relative to the file.
A run folder's ``config.yaml`` (``options:`` + ``model:``) is accepted as is, so
``pdd fit --config RUN/config.yaml --out NEW`` repeats a run.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdd.cli._common import (
    check_cache_dir,
    check_hardware,
    check_seed,
    existing_file,
    existing_path,
    positive_int,
    prepare_output_folder,
    seed_int,
    user_path,
)
from pdd.cli.device_options import (
    ACCELERATORS,
    PRECISIONS,
    STRATEGIES,
    add_device_options,
    parse_devices,
)
from pdd.cli.run_guard import guarded_run
from pdd.errors import ConfigError, PDDError

__all__ = ["parse_overrides", "parse_seeds", "register", "resolve_fit_options"]

FORMATS = ("auto", "folder", "headct", "brainmri", "zhanglab", "unimedical", "bmad")
TEACHERS = ("pretrained", "random")
FEATURE_CACHE_MODES = ("auto", "memory", "disk", "off")


@dataclass(frozen=True)
class _Option:
    """One fit option as it may appear in a --config file; ``check`` validates and converts."""

    key: str  # FitOptions field
    check: Callable[[Any, str], Any]


def _as_path(value: Any, where: str) -> Path:
    if not isinstance(value, (str, Path)) or not str(value):
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    return Path(value).expanduser()


def _as_positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected a whole number >= 1, got {value!r}")
    return value


def _as_count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: expected a whole number >= 0, got {value!r}")
    return value


def _as_str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected text, got {value!r}")
    return value


def _choice(choices: tuple[str, ...]) -> Callable[[Any, str], str]:
    def check(value: Any, where: str) -> str:
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return check


def _as_seeds(value: Any, where: str) -> list[int]:
    if isinstance(value, str):
        return parse_seeds(value, where)
    if isinstance(value, int) and not isinstance(value, bool):
        return [check_seed(value, where)]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        if len(set(value)) != len(value):
            raise ConfigError(f"{where}: seeds repeat: {value}")
        return [check_seed(v, where) for v in value]
    raise ConfigError(f"{where}: expected a seed or a list of seeds, got {value!r}")


def _as_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _as_fraction(value: Any, where: str) -> float:
    """A holdout fraction: 0 (no holdout, no threshold) up to, but not including, 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{where}: expected a number from 0 up to (not including) 1, got {value!r}")
    return float(value)


def _as_rate(value: Any, where: str) -> float:
    """A false-alarm rate: strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(f"{where}: expected a number above 0 and below 1, got {value!r}")
    return float(value)


def _text_checked_by(check: Callable[[str], Any]) -> Callable[[Any, str], str]:
    """A text option that ``check`` validates; its PDDError is reported under the option's name."""

    def as_text(value: Any, where: str) -> str:
        text = _as_str(value, where)
        try:
            check(text)
        except PDDError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return text

    return as_text


def _as_group_pattern(value: Any, where: str) -> str:
    from pdd.data import compile_group_pattern

    return _text_checked_by(compile_group_pattern)(value, where)


def _as_logger(value: Any, where: str) -> str:
    from pdd.training.loggers import check_logger

    return _text_checked_by(check_logger)(value, where)


def _as_devices(value: Any, where: str) -> int | str:
    if value == "auto":
        return "auto"
    return _as_positive_int(value, where)


def parse_seeds(text: str, where: str = "--seeds") -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; rejects empty items and repeats."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"{where}: expected comma-separated whole numbers, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds repeat: {text}")
    return [check_seed(seed, where) for seed in seeds]


# Every key a --config file may hold besides model overrides; aliases map to the same field.
_FIT_OPTIONS: dict[str, _Option] = {
    "data": _Option("data", _as_path),
    "out": _Option("out", _as_path),
    "format": _Option("format", _choice(FORMATS)),
    "preset": _Option("preset", _as_str),
    "teachers": _Option("teachers", _choice(TEACHERS)),
    "image_size": _Option("image_size", _as_positive_int),
    "epochs": _Option("epochs", _as_positive_int),
    "batch_size": _Option("batch_size", _as_positive_int),
    "seed": _Option("seeds", _as_seeds),
    "seeds": _Option("seeds", _as_seeds),
    "split": _Option("split_file", _as_path),
    "split_file": _Option("split_file", _as_path),
    "class": _Option("class_name", _as_str),
    "class_name": _Option("class_name", _as_str),
    "joint": _Option("joint", _as_bool),
    "holdout_fraction": _Option("holdout_fraction", _as_fraction),
    "fpr": _Option("fpr", _as_rate),
    "feature_cache": _Option("feature_cache", _choice(FEATURE_CACHE_MODES)),
    "group_by": _Option("group_by", _as_group_pattern),
    "logger": _Option("logger", _as_logger),
    "accelerator": _Option("accelerator", _choice(ACCELERATORS)),
    "devices": _Option("devices", _as_devices),
    "num_nodes": _Option("num_nodes", _as_positive_int),
    "strategy": _Option("strategy", _choice(STRATEGIES)),
    "precision": _Option("precision", _choice(PRECISIONS)),
    "num_workers": _Option("num_workers", _as_count),
    "checkpoint_every_n_steps": _Option("checkpoint_every_n_steps", _as_positive_int),
}
_PATH_FIELDS = ("data", "out", "split_file")
# argparse destinations of `pdd fit` options that define a run (all None unless given).
_FIT_ARGUMENTS = (
    "data", "out", "format", "preset", "teachers", "image_size", "epochs", "batch_size", "seed",
    "seeds", "split", "class_name", "config", "accelerator", "devices", "num_nodes", "strategy",
    "precision", "num_workers", "checkpoint_every_n_steps", "joint", "holdout_fraction", "group_by",
    "logger", "fpr", "feature_cache",
)  # fmt: skip
_FLAG_NAMES = {"class_name": "class", "checkpoint_every_n_steps": "checkpoint-every"}
_MODEL_SECTION = "model"
_OPTIONS_SECTION = "options"


def register(sub: argparse._SubParsersAction) -> None:
    """Add `fit` and `test` to the `pdd` command table."""
    fit = sub.add_parser(
        "fit",
        help="train on normal images, then test; writes a run folder",
        description="Train a model on the normal images of a dataset, then evaluate it on the "
        "test split. Options may also come from --config FILE.yaml; the command line wins.",
    )
    fit.add_argument("--data", type=user_path, help="dataset root folder")
    fit.add_argument("--out", type=user_path, help="run folder to write")
    fit.add_argument("--format", choices=FORMATS, help="dataset layout (default: auto)")
    fit.add_argument("--preset", help="model preset (default: pdd; see `pdd presets`)")
    fit.add_argument(
        "--teachers",
        choices=TEACHERS,
        help="pretrained (default; the method) or random (tests and demos only)",
    )
    fit.add_argument("--image-size", type=positive_int, help="input size S (default: preset's)")
    fit.add_argument("--epochs", type=positive_int, help="training epochs (default: preset's)")
    fit.add_argument("--batch-size", type=positive_int, help="batch size per device")
    seeds = fit.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=seed_int, help="random seed (default: 0)")
    seeds.add_argument("--seeds", help="several seeds, e.g. 0,1,2: one run each, mean and std")
    fit.add_argument("--split", type=user_path, help="split manifest CSV to reuse")
    fit.add_argument("--class", dest="class_name", help="one class of a multi-class dataset")
    fit.add_argument(
        "--joint",
        action="store_true",
        default=None,
        help="one model for every class of a multi-class set (metrics pooled, per class, mean)",
    )
    fit.add_argument(
        "--holdout-fraction",
        type=float,
        metavar="F",
        help="training normals held out for the threshold (default 0.1; 0: train on all of them, "
        "no threshold)",
    )
    fit.add_argument(
        "--fpr",
        type=float,
        metavar="ALPHA",
        help="false-alarm rate the threshold guarantees for normal images like the held-out ones "
        "(default 0.05)",
    )
    fit.add_argument(
        "--feature-cache",
        choices=FEATURE_CACHE_MODES,
        help="where the frozen teachers' features of training images are kept between epochs: "
        "auto (default), memory, disk or off",
    )
    fit.add_argument(
        "--group-by",
        metavar="REGEX",
        help="the group (patient) of a 2-D image from its file name; a group never crosses sets",
    )
    fit.add_argument(
        "--logger",
        choices=("csv", "tensorboard", "mlflow"),
        help="training curves: csv (default, always written), tensorboard or mlflow (extras)",
    )
    fit.add_argument("--config", type=user_path, help="YAML file with any of these options")
    fit.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model override, e.g. students=shared or train.lr=0.001 (repeatable; YAML values)",
    )
    fit.add_argument("--resume", type=user_path, metavar="RUN_DIR", help="continue a killed fit")
    add_device_options(fit)
    fit.add_argument("--num-workers", type=int, help="data loader processes (default: 0)")
    fit.add_argument(
        "--checkpoint-every",
        dest="checkpoint_every_n_steps",
        type=positive_int,
        metavar="STEPS",
        help="also save the training state every STEPS steps (for --resume)",
    )
    fit.add_argument("--no-progress", action="store_true", help="no progress output")
    fit.set_defaults(handler=_run_fit)

    test = sub.add_parser(
        "test",
        help="evaluate a checkpoint on a dataset's test split",
        description="Evaluate a saved model on a dataset's test split; writes a run folder.",
    )
    test.add_argument("--checkpoint", type=user_path, required=True, help="model.ckpt")
    test.add_argument("--data", type=user_path, required=True, help="dataset root folder")
    test.add_argument("--out", type=user_path, required=True, help="run folder to write")
    test.add_argument("--format", choices=FORMATS, default="auto", help="dataset layout")
    test.add_argument("--split", type=user_path, help="split manifest CSV (as written by fit)")
    test.add_argument("--class", dest="class_name", help="one class of a multi-class dataset")
    test.add_argument(
        "--batch-size", type=positive_int, help="images per batch and device (default: the training's)"
    )
    add_device_options(test)
    test.add_argument("--num-workers", type=int, help="data loader workers per process (default: 0)")
    test.add_argument("--no-progress", action="store_true", help="no progress output")
    test.set_defaults(handler=_run_test)


def _run_fit(args: argparse.Namespace) -> int:
    from pdd.training import runner

    if args.resume is not None:
        _reject_with_resume(args)
        run_dir = existing_path(args.resume, "run folder to resume")
        with guarded_run(run_dir, "pdd fit --resume", resume_command=f"pdd fit --resume {run_dir}"):
            done = runner.resume(run_dir, progress=not args.no_progress)
    else:
        options = resolve_fit_options(args)
        print(_describe(options))
        with guarded_run(options.out, "pdd fit", resume_command=f"pdd fit --resume {options.out}"):
            done = runner.fit(options)
    print(f"run folder: {done}")
    print(f"report: {done / 'report.html'}")
    return 0


def _run_test(args: argparse.Namespace) -> int:
    from pdd.evaluation.scoring_loop import Devices
    from pdd.training import runner

    devices = Devices(
        accelerator=args.accelerator or "auto",
        devices=parse_devices(args.devices) or 1,
        num_nodes=args.num_nodes or 1,
        strategy=args.strategy or "auto",
        precision=args.precision or "32-true",
    )
    check_hardware(devices.accelerator, devices.precision)
    if args.num_workers is not None and args.num_workers < 0:
        raise ConfigError(f"--num-workers: expected a number >= 0, got {args.num_workers}")
    existing_file(args.checkpoint, "checkpoint")
    existing_path(args.data, "data folder")
    if args.split is not None:
        existing_file(args.split, "split file")
    prepare_output_folder(args.out)
    with guarded_run(args.out, "pdd test", resume_command=None):
        done = runner.test(
            args.checkpoint,
            args.data,
            args.out,
            format=args.format,
            split_file=args.split,
            class_name=args.class_name,
            devices=devices,
            batch_size=args.batch_size,
            num_workers=args.num_workers or 0,
            progress=not args.no_progress,
        )
    from pdd.runs.ranks import is_global_zero_from_env

    if is_global_zero_from_env():  # the other processes of a multi-process run stay quiet
        timing = json.loads((done / "metrics.json").read_text(encoding="utf-8"))["timing"]
        print(
            f"throughput: {timing['images_scored']} images scored and evaluated in "
            f"{timing['eval_seconds']:.1f} s ({timing['images_per_second']:.2f} images/s)"
        )
        print(f"run folder: {done}")
    return 0


def _reject_with_resume(args: argparse.Namespace) -> None:
    """--resume continues with the saved configuration; silently ignoring other options would lie."""
    given = [name for name in _FIT_ARGUMENTS if getattr(args, name) is not None]
    if args.overrides:
        given.append("set")
    if given:
        listed = ", ".join("--" + _FLAG_NAMES.get(name, name).replace("_", "-") for name in given)
        raise ConfigError(f"--resume continues the saved configuration; remove {listed}")


def resolve_fit_options(args: argparse.Namespace) -> Any:
    """Merge preset < --config file < command line into the runner's ``FitOptions``.

    Everything a user can get wrong is checked here (paths, preset, override keys), before
    the runner builds a model.
    """
    from pdd.training.runner import FitOptions

    values: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    if args.config is not None:
        file_values, file_overrides = _read_config_file(args.config)
        values.update(file_values)
        _deep_merge(overrides, file_overrides)

    cli_values = {
        "data": args.data,
        "out": args.out,
        "format": args.format,
        "preset": args.preset,
        "teachers": args.teachers,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "split_file": args.split,
        "class_name": args.class_name,
        "accelerator": args.accelerator,
        "num_nodes": args.num_nodes,
        "strategy": args.strategy,
        "precision": args.precision,
        "checkpoint_every_n_steps": args.checkpoint_every_n_steps,
        "joint": args.joint,
    }
    if args.holdout_fraction is not None:
        cli_values["holdout_fraction"] = _as_fraction(args.holdout_fraction, "--holdout-fraction")
    if args.fpr is not None:
        cli_values["fpr"] = _as_rate(args.fpr, "--fpr")
    if args.feature_cache is not None:
        cli_values["feature_cache"] = args.feature_cache
    if args.group_by is not None:
        cli_values["group_by"] = _as_group_pattern(args.group_by, "--group-by")
    if args.logger is not None:
        cli_values["logger"] = _as_logger(args.logger, "--logger")
    if args.seed is not None:
        cli_values["seeds"] = [args.seed]
    if args.seeds is not None:
        cli_values["seeds"] = parse_seeds(args.seeds)
    if args.devices is not None:
        cli_values["devices"] = parse_devices(args.devices)
    if args.num_workers is not None:
        cli_values["num_workers"] = _as_count(args.num_workers, "--num-workers")
    values.update({key: value for key, value in cli_values.items() if value is not None})
    _deep_merge(overrides, parse_overrides(args.overrides))
    if "teachers" in overrides:
        # The runner sets the model's teachers from the fit option; a `teachers` model override
        # (from --set or a model: section) must not be silently replaced by its default.
        teachers = _FIT_OPTIONS["teachers"].check(overrides.pop("teachers"), "teachers")
        values.setdefault("teachers", teachers)

    for required in ("data", "out"):
        if required not in values:
            raise ConfigError(f"--{required} is required (on the command line or in --config)")
    preset = values.setdefault("preset", "pdd")
    check_preset(preset)
    check_model_config(values, overrides)
    # Absolute input paths, so the config.yaml saved in the run folder works from any folder.
    values["data"] = existing_path(values["data"], "data folder").resolve()
    if values.get("split_file") is not None:
        values["split_file"] = existing_file(values["split_file"], "split file").resolve()
    check_hardware(values.get("accelerator", "auto"), values.get("precision", "32-true"))
    if values.get("teachers", "pretrained") == "pretrained":
        check_cache_dir()
    prepare_output_folder(values["out"])
    return FitOptions(**values, model_overrides=overrides, progress=not args.no_progress)


def _read_config_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a --config YAML file into fit options and model overrides (both validated)."""
    from pdd.config import read_yaml_file

    existing_file(path, "config file")
    loaded = read_yaml_file(path)  # a duplicate key is an error naming the file and line
    if loaded is None:
        return {}, {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value at the top level")

    values: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for raw_key, value in loaded.items():
        key = str(raw_key).replace("-", "_")
        where = f"{path}: {raw_key}"
        if key == _MODEL_SECTION:
            _deep_merge(overrides, _mapping(value, where))
        elif key == _OPTIONS_SECTION:  # a run folder's config.yaml: {options, model, provenance}
            for option_key, option_value in _mapping(value, where).items():
                _take_option(str(option_key), option_value, f"{where}.{option_key}", values, overrides)
        elif key in ("pdd_version", "global_batch_size"):
            continue  # provenance of a saved run configuration; nothing to apply
        elif key in _FIT_OPTIONS:
            _take_option(key, value, where, values, overrides)
        else:
            overrides[key] = value  # a preset key; checked against the preset later
    for field_name in _PATH_FIELDS:
        if field_name in values and not values[field_name].is_absolute():
            values[field_name] = (path.parent / values[field_name]).resolve()
    return values, overrides


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping")
    return value


def _take_option(
    key: str, value: Any, where: str, values: dict[str, Any], overrides: dict[str, Any]
) -> None:
    """Store one fit option from a config file; ``null`` leaves the option unset."""
    key = key.replace("-", "_")
    if key == "model_overrides":
        _deep_merge(overrides, _mapping(value, where))
    elif key == "progress":
        return  # how a run is watched, not what it computes
    elif key not in _FIT_OPTIONS:
        raise ConfigError(f"{where}: unknown option (known: {', '.join(sorted(_FIT_OPTIONS))})")
    elif value is not None:
        option = _FIT_OPTIONS[key]
        values[option.key] = option.check(value, where)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=0.001", "students=shared"]`` -> nested dict; values are parsed as YAML."""
    from pdd.config import parse_yaml

    result: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. students=shared")
        value = parse_yaml(text, f"--set {item!r}") if text else ""
        _deep_merge(result, _nest(key.split("."), value))
    return result


def _nest(parts: list[str], value: Any) -> dict[str, Any]:
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    return nested


def _deep_merge(target: dict[str, Any], update: dict[str, Any]) -> None:
    """Merge ``update`` into ``target``; nested mappings merge, anything else replaces."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_merge(target[key], value)
        else:
            target[key] = value


def check_preset(name: str) -> None:
    """Unknown presets fail here with the list of known ones."""
    from pdd.config import list_presets

    known = list_presets()
    if name not in known:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(known)}")


def check_model_config(values: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Resolve the model configuration now, so a bad key or value fails before any training.

    The fit options that are also model settings (image size, teachers, epochs, batch size) are
    checked together with the overrides, as the runner will combine them.
    """
    from pdd.config import resolve_config

    combined = copy.deepcopy(overrides)
    for key in ("image_size", "teachers"):
        if values.get(key) is not None:
            combined[key] = values[key]
    if not isinstance(combined.get("train", {}), dict):
        raise ConfigError(f"config key 'train': must be a mapping, got {combined['train']!r}")
    for key in ("epochs", "batch_size"):
        if values.get(key) is not None:
            combined.setdefault("train", {})[key] = values[key]
    resolve_config(values["preset"], combined)


def _describe_batch(options: Any) -> str:
    """Batch per device, accumulation and the global batch the optimiser sees (one line)."""
    from pdd.config import resolve_config
    from pdd.training.options import model_overrides
    from pdd.training.trainer import accumulation, planned_global_batch

    train = resolve_config(options.preset, model_overrides(options))["train"]
    batch, total = int(train["batch_size"]), planned_global_batch(options, train)
    if total is None:
        return f"batch {batch} per device; global batch set by the devices found"
    world = options.devices * options.num_nodes
    steps = accumulation(int(train.get("accumulate_grad_batches", 1)), world)
    return (
        f"batch {batch} per device x {world} device(s) x {steps} accumulated = "
        f"global batch {total}"
    )


def _describe(options: Any) -> str:
    """The one-paragraph summary printed before training, random teachers called out loudly."""
    size = options.image_size if options.image_size is not None else "preset default"
    epochs = options.epochs if options.epochs is not None else "preset default"
    seeds = ",".join(map(str, options.seeds))
    lines = [
        (
            f"fit: preset {options.preset}, data {options.data} ({options.format}), "
            f"image size {size}, epochs {epochs}, seeds {seeds}"
            + (", joint (one model for every class)" if options.joint else "")
        ),
        f"     {_describe_batch(options)}",
        f"     run folder {options.out}",
    ]
    if options.holdout_fraction == 0:
        lines.append("     holdout fraction 0: every training normal trains; no threshold, no decisions")
    if options.teachers == "random":
        lines.append(
            "WARNING: teachers are RANDOMLY initialised (--teachers random): results are a "
            "smoke test, not the method's accuracy"
        )
    return "\n".join(lines)
