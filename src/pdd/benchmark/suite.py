"""A benchmark suite: which datasets, presets and seeds ``pdd benchmark`` runs, and what to compare.

A suite is a YAML file (or the name of one shipped in ``pdd/configs/suites``)::

    name: mine                # optional; default: the file's stem
    image_size: 64            # optional; else each preset's
    epochs: 1                 # optional
    batch_size: 8             # optional
    teachers: random          # optional; default pretrained
    holdout_fraction: 0.1     # optional; the runner's default
    seeds: [0, 1]
    presets:                  # our presets, and anomalib's models (the anomalib extra)
      - pdd
      - rd4ad
      - anomalib:Patchcore
      - {anomalib: Padim, args: {backbone: resnet18}, name: padim-r18, epochs: 1, batch_size: 8}
    datasets:
      - {name: synth, data: /path/a, format: folder}
      - {name: uni, data: /path/b, format: unimedical, joint: true}
    published:                # optional: numbers to show beside ours, in percent
      label: "paper X, Table 2"
      datasets:
        synth: {pdd: {image_auroc: 97.5}}
        uni: {over: classes, pdd: {image_auroc: 81.4}}

An anomalib entry is ``anomalib:<Model>`` or a mapping with ``anomalib`` (a class of
``anomalib.models``), optional ``args`` (its constructor arguments), ``name`` (its label in the
tables; default ``anomalib:<Model>``) and ``epochs`` / ``batch_size`` (this model's, instead of the
suite's). It is checked here too: anomalib installed, the model known, every argument one of its
constructor's (``pdd.integrations.anomalib_models``).

Relative ``data`` / ``split_file`` paths are taken under ``--data-root`` when given, else beside the
suite file; a built-in suite needs ``--data-root``. Every mistake is a ``ConfigError`` naming the
file and the key, raised before anything is trained.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pdd.config import read_yaml_file, resolve_config
from pdd.config.schema import MAX_SEED
from pdd.data import FORMATS
from pdd.errors import ConfigError, PDDError
from pdd.evaluation.aggregate import METRIC_KEYS
from pdd.integrations.anomalib_models import PREFIX as ANOMALIB_PREFIX
from pdd.integrations.anomalib_models import AnomalibEntry, check_entry

__all__ = [
    "BUILTIN_SUITES",
    "OVER_CHOICES",
    "DatasetEntry",
    "Suite",
    "builtin_suite_dir",
    "load_suite",
    "preset_folder",
    "suite_to_dict",
]

BUILTIN_SUITES = ("ablation", "paper")
TEACHERS = ("pretrained", "random")
OVER_CHOICES = ("images", "classes")
"""What a published number is over: the top-level metrics, or the mean over classes."""
_TOP_KEYS = (
    "name", "image_size", "epochs", "batch_size", "teachers", "holdout_fraction",
    "seeds", "presets", "datasets", "published",
)  # fmt: skip
_DATASET_KEYS = ("name", "data", "format", "joint", "class", "split_file")
_ANOMALIB_KEYS = ("anomalib", "name", "args", "epochs", "batch_size")


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of the grid; ``name`` is the folder its runs go to (``runs/<name>/<preset>``)."""

    name: str
    data: Path
    format: str = "auto"
    joint: bool = False
    class_name: str | None = None
    split_file: Path | None = None


@dataclass(frozen=True)
class Suite:
    """A resolved suite: absolute paths, checked presets, published numbers as fractions."""

    name: str
    source: str  # the file, or "built-in <name>"
    seeds: tuple[int, ...]
    presets: tuple[str, ...]
    datasets: tuple[DatasetEntry, ...]
    teachers: str = "pretrained"
    image_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    holdout_fraction: float | None = None
    published_label: str = ""
    # dataset -> preset -> metric -> value in [0, 1]
    published: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)
    published_over: Mapping[str, str] = field(default_factory=dict)  # dataset -> OVER_CHOICES
    # label in ``presets`` -> the anomalib model it names (the other presets are ours)
    anomalib: Mapping[str, AnomalibEntry] = field(default_factory=dict)


def preset_folder(preset: str) -> str:
    """The folder name of a preset's runs (``anomalib:Padim`` -> ``anomalib_Padim``)."""
    return preset.replace(":", "_")


def builtin_suite_dir() -> Path:
    return Path(str(resources.files("pdd") / "configs" / "suites"))


def load_suite(
    suite: str | Path,
    *,
    data_root: Path | None = None,
    teachers: str | None = None,
    check_model: Callable[[str, Mapping[str, Any]], object] = resolve_config,
) -> Suite:
    """Read and check a suite file or built-in name; ``teachers`` overrides the file's.

    ``check_model(preset, overrides)`` validates each preset with the suite's model settings
    (``pdd.config.resolve_config``; tests pass a stand-in for their fake preset).
    """
    path = Path(suite)
    builtin = not path.is_file() and str(suite) in BUILTIN_SUITES
    if builtin:
        path = builtin_suite_dir() / f"{suite}.yaml"
        if data_root is None:
            raise ConfigError(
                f"built-in suite {suite!r}: give --data-root, the folder holding its datasets"
            )
    elif not path.is_file():
        raise ConfigError(
            f"{suite}: no such suite file, and not a built-in suite ({', '.join(BUILTIN_SUITES)})"
        )
    loaded = read_yaml_file(path, "suite file")  # the shared loader: duplicate keys are errors
    return _parse(
        loaded,
        _Where(str(path)),
        name=str(suite) if builtin else path.stem,
        source=f"built-in {suite}" if builtin else str(path.resolve()),
        base=data_root if data_root is not None else path.parent,
        teachers=teachers,
        check_model=check_model,
    )


def suite_to_dict(suite: Suite) -> dict[str, Any]:
    """Plain data for ``suite.yaml`` in the output folder (published numbers in percent)."""
    values: dict[str, Any] = {"name": suite.name, "source": suite.source}
    for key in ("image_size", "epochs", "batch_size", "holdout_fraction"):
        if getattr(suite, key) is not None:
            values[key] = getattr(suite, key)
    values["teachers"] = suite.teachers
    values["seeds"] = list(suite.seeds)
    values["presets"] = [
        _anomalib_to_dict(suite.anomalib[p]) if p in suite.anomalib else p for p in suite.presets
    ]
    values["datasets"] = [_dataset_to_dict(entry) for entry in suite.datasets]
    if suite.published:
        datasets: dict[str, Any] = {}
        for name, by_preset in suite.published.items():
            entry: dict[str, Any] = {}
            if suite.published_over.get(name, "images") != "images":
                entry["over"] = suite.published_over[name]
            for preset, numbers in by_preset.items():
                entry[preset] = {k: round(100 * v, 6) for k, v in numbers.items()}
            datasets[name] = entry
        values["published"] = {"label": suite.published_label, "datasets": datasets}
    return values


def _anomalib_to_dict(entry: AnomalibEntry) -> str | dict[str, Any]:
    """The entry as a suite file writes it (the short form when it has nothing but the model)."""
    values: dict[str, Any] = {"anomalib": entry.model}
    if entry.label != ANOMALIB_PREFIX + entry.model:
        values["name"] = entry.label
    if entry.args:
        values["args"] = dict(entry.args)
    for key in ("epochs", "batch_size"):
        if getattr(entry, key) is not None:
            values[key] = getattr(entry, key)
    return values if len(values) > 1 else ANOMALIB_PREFIX + entry.model


def _dataset_to_dict(entry: DatasetEntry) -> dict[str, Any]:
    values: dict[str, Any] = {"name": entry.name, "data": str(entry.data), "format": entry.format}
    if entry.joint:
        values["joint"] = True
    if entry.class_name is not None:
        values["class"] = entry.class_name
    if entry.split_file is not None:
        values["split_file"] = str(entry.split_file)
    return values


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Where:
    """``file: key`` prefixes for one-line errors."""

    file: str
    key: str = ""

    def __truediv__(self, key: str | int) -> _Where:
        part = f"[{key}]" if isinstance(key, int) else str(key)
        joined = (
            part
            if not self.key
            else (f"{self.key}{part}" if isinstance(key, int) else f"{self.key}.{part}")
        )
        return _Where(self.file, joined)

    def fail(self, problem: str) -> ConfigError:
        return ConfigError(
            f"{self.file}: {self.key}: {problem}" if self.key else f"{self.file}: {problem}"
        )


def _mapping(value: Any, where: _Where, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise where.fail(f"expected a mapping, got {type(value).__name__}")
    if keys is not None:
        unknown = [str(k) for k in value if k not in keys]
        if unknown:
            raise (where / unknown[0]).fail(f"unknown key (known: {', '.join(keys)})")
    return value


def _positive_int(value: Any, where: _Where) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise where.fail(f"expected a whole number >= 1, got {value!r}")
    return value


def _text(value: Any, where: _Where) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.fail(f"expected text, got {value!r}")
    return value


def _folder_name(value: Any, where: _Where) -> str:
    text = _text(value, where)
    if Path(text).name != text or text.startswith(".") or not text.isprintable():
        raise where.fail(f"{text!r} cannot be a folder name")
    return text


def _unique_list(value: Any, where: _Where, item: Callable[[Any, _Where], Any]) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise where.fail(f"expected a non-empty list, got {value!r}")
    items = [item(v, where / i) for i, v in enumerate(value)]
    repeated = sorted({str(v) for v in items if items.count(v) > 1})
    if repeated:
        raise where.fail(f"repeated: {', '.join(repeated)}")
    return items


def _seed(value: Any, where: _Where) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.fail(f"expected a whole number, got {value!r}")
    if not 0 <= value <= MAX_SEED:  # as pdd fit's --seeds: what the random generators accept
        raise where.fail(f"a seed must be between 0 and {MAX_SEED} (2**32 - 1), got {value}")
    return value


def _path(value: Any, where: _Where, base: Path) -> Path:
    text = _text(value, where)
    path = Path(text).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise where.fail(f"{path} does not exist")
    return path.resolve()


def _parse(
    loaded: Any,
    where: _Where,
    *,
    name: str,
    source: str,
    base: Path,
    teachers: str | None,
    check_model: Callable[[str, Mapping[str, Any]], object],
) -> Suite:
    top = _mapping(loaded, where, _TOP_KEYS)
    for required in ("seeds", "presets", "datasets"):
        if required not in top:
            raise (where / required).fail("required key missing")
    sizes = {
        key: _positive_int(top[key], where / key)
        for key in ("image_size", "epochs", "batch_size")
        if top.get(key) is not None
    }
    file_teachers = top.get("teachers", "pretrained")
    if file_teachers not in TEACHERS:
        raise (where / "teachers").fail(
            f"expected one of {', '.join(TEACHERS)}, got {file_teachers!r}"
        )
    holdout = top.get("holdout_fraction")
    if holdout is not None and (
        isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1
    ):
        raise (where / "holdout_fraction").fail(f"expected a number in [0, 1), got {holdout!r}")
    seeds = _unique_list(top["seeds"], where / "seeds", _seed)
    items = _unique_list(top["presets"], where / "presets", _preset)
    presets = [item if isinstance(item, str) else item.label for item in items]
    repeated_labels = sorted({p for p in presets if presets.count(p) > 1})
    if repeated_labels:
        raise (where / "presets").fail(f"repeated: {', '.join(repeated_labels)}")
    anomalib = {item.label: item for item in items if isinstance(item, AnomalibEntry)}
    suite_teachers = teachers if teachers is not None else file_teachers
    ours = [(i, p) for i, p in enumerate(presets) if p not in anomalib]
    _check_presets(ours, where / "presets", sizes, suite_teachers, check_model)
    for i, item in enumerate(items):
        if isinstance(item, AnomalibEntry):
            try:
                check_entry(item, suite_teachers)
            except PDDError as exc:
                raise (where / "presets" / i).fail(str(exc)) from exc
    datasets = [
        _dataset(value, where / "datasets" / i, base)
        for i, value in enumerate(_list(top["datasets"], where / "datasets"))
    ]
    names = [entry.name for entry in datasets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise (where / "datasets").fail(f"dataset names repeat: {', '.join(repeated)}")
    label, published, over = _published(top.get("published"), where / "published", names, presets)
    return Suite(
        name=_text(top.get("name", name), where / "name"),
        source=source,
        seeds=tuple(seeds),
        presets=tuple(presets),
        datasets=tuple(datasets),
        teachers=suite_teachers,
        image_size=sizes.get("image_size"),
        epochs=sizes.get("epochs"),
        batch_size=sizes.get("batch_size"),
        holdout_fraction=None if holdout is None else float(holdout),
        published_label=label,
        published=published,
        published_over=over,
        anomalib=anomalib,
    )


def _list(value: Any, where: _Where) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise where.fail(f"expected a non-empty list, got {value!r}")
    return value


def _preset(value: Any, where: _Where) -> str | AnomalibEntry:
    """One item of ``presets``: our preset's name, or an anomalib model (either form)."""
    if isinstance(value, str) and value.startswith(ANOMALIB_PREFIX):
        return _anomalib_entry({"anomalib": value[len(ANOMALIB_PREFIX) :]}, where)
    if isinstance(value, dict):
        return _anomalib_entry(value, where)
    return _text(value, where)


def _anomalib_entry(value: dict[str, Any], where: _Where) -> AnomalibEntry:
    entry = _mapping(value, where, _ANOMALIB_KEYS)
    if "anomalib" not in entry:
        raise (where / "anomalib").fail("required key missing (the anomalib model's class name)")
    model = _text(entry["anomalib"], where / "anomalib")
    if not model.isidentifier():
        raise (where / "anomalib").fail(f"{model!r} is not a class name of anomalib.models")
    label = ANOMALIB_PREFIX + model
    if "name" in entry:
        label = _text(entry["name"], where / "name")
    if Path(preset_folder(label)).name != preset_folder(label) or label.startswith("."):
        raise (where / "name").fail(f"{label!r} cannot be a folder name")
    args = _mapping(entry.get("args", {}), where / "args")
    for key in args:
        if not isinstance(key, str):
            raise (where / "args").fail(f"argument names are text, got {key!r}")
    sizes = {
        key: _positive_int(entry[key], where / key)
        for key in ("epochs", "batch_size")
        if entry.get(key) is not None
    }
    return AnomalibEntry(label=label, model=model, args=dict(args), **sizes)


def _check_presets(
    presets: list[tuple[int, str]],
    where: _Where,
    sizes: Mapping[str, int],
    teachers: str,
    check_model: Callable[[str, Mapping[str, Any]], object],
) -> None:
    """Each preset resolved with the suite's settings now, so a typo fails before any training."""
    overrides: dict[str, Any] = {"teachers": teachers}
    if "image_size" in sizes:
        overrides["image_size"] = sizes["image_size"]
    train = {k: sizes[k] for k in ("epochs", "batch_size") if k in sizes}
    if train:
        overrides["train"] = train
    for i, preset in presets:
        try:
            check_model(preset, copy.deepcopy(overrides))
        except PDDError as exc:
            raise (where / i).fail(str(exc)) from exc


def _dataset(value: Any, where: _Where, base: Path) -> DatasetEntry:
    entry = _mapping(value, where, _DATASET_KEYS)
    for required in ("name", "data"):
        if required not in entry:
            raise (where / required).fail("required key missing")
    fmt = entry.get("format", "auto")
    if fmt != "auto" and fmt not in FORMATS:
        raise (where / "format").fail(f"expected one of auto, {', '.join(FORMATS)}, got {fmt!r}")
    joint = entry.get("joint", False)
    if not isinstance(joint, bool):
        raise (where / "joint").fail(f"expected true or false, got {joint!r}")
    class_name = entry.get("class")
    if class_name is not None:
        class_name = _text(class_name, where / "class")
        if joint:
            raise (where / "class").fail(
                "a joint dataset trains on every class; drop class or joint"
            )
    split = entry.get("split_file")
    return DatasetEntry(
        name=_folder_name(entry["name"], where / "name"),
        data=_path(entry["data"], where / "data", base),
        format=str(fmt),
        joint=joint,
        class_name=class_name,
        split_file=None if split is None else _path(split, where / "split_file", base),
    )


def _percent(value: Any, where: _Where) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and 0 <= value <= 100)
    ):
        raise where.fail(f"expected a percentage in [0, 100], got {value!r}")
    return round(float(value) / 100, 10)  # 96.7 -> 0.967, not 0.9670000000000001


def _published(
    value: Any, where: _Where, datasets: list[str], presets: list[str]
) -> tuple[str, dict[str, dict[str, dict[str, float]]], dict[str, str]]:
    """``(label, {dataset: {preset: {metric: fraction}}}, {dataset: over})``."""
    if value is None:
        return "", {}, {}
    top = _mapping(value, where, ("label", "datasets"))
    label = _text(top.get("label", "published"), where / "label")
    numbers: dict[str, dict[str, dict[str, float]]] = {}
    over: dict[str, str] = {}
    for dataset, by_preset in _mapping(top.get("datasets", {}), where / "datasets").items():
        at = where / "datasets" / str(dataset)
        if dataset not in datasets:
            raise at.fail(f"not a dataset of this suite ({', '.join(datasets)})")
        for preset, metrics in _mapping(by_preset, at).items():
            if preset == "over":
                if metrics not in OVER_CHOICES:
                    raise (at / "over").fail(
                        f"expected one of {', '.join(OVER_CHOICES)}, got {metrics!r}"
                    )
                over[dataset] = metrics
                continue
            if preset not in presets:
                raise (at / str(preset)).fail(f"not a preset of this suite ({', '.join(presets)})")
            checked = {}
            for metric, number in _mapping(metrics, at / preset, METRIC_KEYS).items():
                checked[metric] = _percent(number, at / preset / metric)
            numbers.setdefault(dataset, {})[preset] = checked
    return label, numbers, over
