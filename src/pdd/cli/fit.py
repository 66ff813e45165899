"""`pdd fit` and `pdd test`: argument parsing, then the runner.

The options are checked by the one schema (``pdd.config.schema.FitSettings``); merging a
``--config`` file, the command line and ``--set`` is ``pdd.config.fit_options`` (precedence and
the file format are described there). The runner saves the resolved configuration as
``config.yaml`` in every run folder.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pdd.cli._common import (
    check_cache_dir,
    check_hardware,
    existing_file,
    existing_path,
    positive_int,
    prepare_output_folder,
    seed_int,
    user_path,
)
from pdd.cli.device_options import add_device_options, parse_devices
from pdd.cli.run_guard import guarded_run
from pdd.config.fit_options import (
    check_model_config,
    check_preset,
    flag,
    gather_fit_settings,
    parse_overrides,
)
from pdd.config.schema import DATASET_FORMATS as FORMATS
from pdd.config.schema import FEATURE_CACHE_DTYPES, FEATURE_CACHE_MODES, LOGGERS
from pdd.config.schema import TEACHER_KINDS as TEACHERS
from pdd.errors import ConfigError

__all__ = ["check_model_config", "check_preset", "parse_overrides", "register", "resolve_fit_options"]



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
        "--feature-cache-dtype",
        choices=FEATURE_CACHE_DTYPES,
        help="how the cache stores float32 teacher features: float32 (default: exact) or "
        "bfloat16 (half the memory and disk; the scores change slightly)",
    )
    fit.add_argument(
        "--group-by",
        metavar="REGEX",
        help="the group (patient) of a 2-D image from its file name; a group never crosses sets",
    )
    fit.add_argument(
        "--logger",
        choices=LOGGERS,
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


def _command_line(args: argparse.Namespace) -> dict[str, Any]:
    """The `pdd fit` arguments as FitSettings fields (None: not given)."""
    return {
        "data": args.data,
        "out": args.out,
        "format": args.format,
        "preset": args.preset,
        "teachers": args.teachers,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seeds": args.seeds if args.seeds is not None else args.seed,
        "split_file": args.split,
        "class_name": args.class_name,
        "joint": args.joint,
        "holdout_fraction": args.holdout_fraction,
        "fpr": args.fpr,
        "feature_cache": args.feature_cache,
        "feature_cache_dtype": args.feature_cache_dtype,
        "group_by": args.group_by,
        "logger": args.logger,
        "accelerator": args.accelerator,
        "devices": parse_devices(args.devices),
        "num_nodes": args.num_nodes,
        "strategy": args.strategy,
        "precision": args.precision,
        "num_workers": args.num_workers,
        "checkpoint_every_n_steps": args.checkpoint_every_n_steps,
    }


def _reject_with_resume(args: argparse.Namespace) -> None:
    """--resume continues with the saved configuration; silently ignoring other options would lie."""
    given = [flag(name) for name, value in _command_line(args).items() if value is not None]
    if args.config is not None:
        given.append("--config")
    if args.overrides:
        given.append("--set")
    if given:
        raise ConfigError(f"--resume continues the saved configuration; remove {', '.join(given)}")


def resolve_fit_options(args: argparse.Namespace) -> Any:
    """The runner's ``FitOptions`` from preset < --config file < command line.

    Everything a user can get wrong is checked here (values, paths, preset, model keys, hardware),
    before the runner builds a model or writes a file.
    """
    from pdd.models.size import check_parameter_budget
    from pdd.training.loggers import check_logger
    from pdd.training.options import FitOptions, model_overrides

    if args.config is not None:
        existing_file(args.config, "config file")
    values, overrides = gather_fit_settings(args.config, _command_line(args), args.overrides)
    for required in ("data", "out"):
        if required not in values:
            raise ConfigError(f"--{required} is required (on the command line or in --config)")
    if "logger" in values:
        check_logger(values["logger"])  # the extra it needs must be installed
    check_preset(values.setdefault("preset", "pdd"))
    check_model_config(values, overrides)
    # Absolute input paths, so the config.yaml saved in the run folder works from any folder.
    values["data"] = existing_path(values["data"], "data folder").resolve()
    if values.get("split_file") is not None:
        values["split_file"] = existing_file(values["split_file"], "split file").resolve()
    check_hardware(values.get("accelerator", "auto"), values.get("precision", "32-true"))
    if values.get("teachers", "pretrained") == "pretrained":
        check_cache_dir()
    options = FitOptions(**values, model_overrides=overrides, progress=not args.no_progress)
    check_parameter_budget(options.preset, model_overrides(options))
    prepare_output_folder(options.out)
    return options


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
