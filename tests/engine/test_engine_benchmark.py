"""`pdd benchmark`: the grid runs, its tables equal the runs' metrics.json, a rerun trains nothing,
an interrupted cell is resumed, bad suites fail in one line, and the built-in suites carry
DESIGN.md §6's numbers.

Most tests use the tiny ``fake`` model (two "presets" routed to it); one slow test runs the real
``rd4ad`` and ``pdd`` presets through the command line.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import engine_fakes
import numpy as np
import pytest
import yaml
from engine_fakes import read_metrics
from lightning.pytorch.callbacks import Callback

from pdd.benchmark import grid as benchmark
from pdd.benchmark.grid import run_benchmark
from pdd.benchmark.suite import Suite, load_suite
from pdd.config import resolve_config
from pdd.errors import ConfigError
from pdd.training import runner
from pdd.training.trainer import build_trainer

FAKES = {"fake": {}, "fake-b": {"train": {"lr": 1.0e-3}}}
"""Two stand-in presets: the fake model with two learning rates."""
BUILD_TRAINER = build_trainer


def check_model(preset: str, overrides: Mapping[str, Any]) -> object:
    return None if preset in FAKES else resolve_config(preset, overrides)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Route the fake presets to ``FakeModel``; returns a list that grows by one per Trainer built
    (one per training, fresh or resumed)."""
    from pdd import models

    real = models.create_model

    def create_model(preset: str, **overrides: Any) -> Any:
        if preset in FAKES:
            merged = engine_fakes._merge(FAKES[preset], overrides)
            return engine_fakes.create_fake(**merged)
        return real(preset, **overrides)

    monkeypatch.setattr(models, "create_model", create_model)
    monkeypatch.setattr(runner, "create_model", create_model)
    built: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(1)
        return BUILD_TRAINER(*args, **kwargs)

    monkeypatch.setattr(runner, "build_trainer", counting)
    return built


def write_suite(path: Path, **values: Any) -> Path:
    suite = {"image_size": 32, "epochs": 1, "teachers": "random", **values}
    path.write_text(yaml.safe_dump(suite), encoding="utf-8")
    return path


def load(path: Path, **kwargs: Any) -> Suite:
    return load_suite(path, check_model=check_model, **kwargs)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hrefs += [v for k, v in attrs if tag == "a" and k == "href" and v]


def links_of(page: Path) -> list[str]:
    parser = Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.hrefs


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny one-class phantom sets (different seeds), 64 px."""
    from pdd.data.synthetic import make_phantom_dataset

    root = tmp_path_factory.mktemp("sets")
    return tuple(  # type: ignore[return-value]
        make_phantom_dataset(
            root / name, n_train=10, n_test_normal=3, n_test_abnormal=3, size=64, seed=seed
        )
        for seed, name in enumerate(("a", "b"))
    )


def grid_suite(tmp_path: Path, two_sets: tuple[Path, Path], **values: Any) -> Path:
    return write_suite(
        tmp_path / "grid.yaml",
        seeds=[0, 1],
        presets=["fake", "fake-b"],
        datasets=[
            {"name": "set_a", "data": str(two_sets[0]), "format": "folder"},
            {"name": "set_b", "data": str(two_sets[1]), "format": "folder"},
        ],
        **values,
    )


def test_grid_tables_equal_the_runs_metrics_and_a_rerun_trains_nothing(
    fakes: list[int], two_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    """2 datasets x 2 presets x 2 seeds: every table number is the run folders' number.

    Kills: a mean or std read from the wrong key or the wrong run (compared with numpy over the
    seed folders' own metrics.json), rows attached to the wrong cell, a rerun that refits
    complete cells (counted Trainers), progress that does not count cells.
    """
    suite_file = grid_suite(
        tmp_path, two_sets,
        published={"label": "their paper", "datasets": {"set_b": {"fake-b": {"image_auroc": 97.5}}}},
    )  # fmt: skip
    out = tmp_path / "bench"
    log: list[str] = []
    rows = run_benchmark(load(suite_file), out, log=log.append)
    assert len(fakes) == 8  # 2 x 2 cells, 2 seeds each
    assert log == [
        "[1/4] set_a / fake", "[2/4] set_a / fake-b", "[3/4] set_b / fake", "[4/4] set_b / fake-b",
    ]  # fmt: skip
    assert len(rows) == 4

    table = read_csv(out / "results.csv")
    assert [(r["dataset"], r["preset"]) for r in table] == [
        ("set_a", "fake"), ("set_a", "fake-b"), ("set_b", "fake"), ("set_b", "fake-b"),
    ]  # fmt: skip
    markdown = (out / "results.md").read_text(encoding="utf-8")
    for row in table:
        folder = out / "runs" / row["dataset"] / row["preset"]
        assert row["run_folder"] == f"runs/{row['dataset']}/{row['preset']}"
        assert row["n_seeds"] == "2" and row["seeds"] == "0;1"
        assert row["teachers"] == "random" and row["over"] == "images"
        seed_metrics = [read_metrics(folder / f"seed_{s}") for s in (0, 1)]
        for key in ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_aupro"):
            values = [m[key] for m in seed_metrics]
            assert float(row[f"{key}_mean"]) == pytest.approx(np.mean(values), abs=1e-12)
            assert float(row[f"{key}_std"]) == pytest.approx(np.std(values), abs=1e-12)
            assert float(row[f"{key}_mean"]) == read_metrics(folder)[key]  # exactly as written
        auroc = f"{100 * np.mean([m['image_auroc'] for m in seed_metrics]):.1f} ± "
        assert auroc in markdown
        assert row["seed_folders"] == f"{row['run_folder']}/seed_0;{row['run_folder']}/seed_1"
        # cost, from the same runs: mean over seeds of training seconds and of the images the
        # evaluation scored (held-out normals and test images) per second of it
        timing = [m["timing"] for m in seed_metrics]
        train = np.mean([t["train_seconds"] for t in timing])
        assert float(row["train_seconds"]) == pytest.approx(train, rel=1e-12)
        rates = [(m["num_test"] + m["num_holdout"]) / m["timing"]["eval_seconds"]
                 for m in seed_metrics]  # fmt: skip
        assert float(row["images_per_second"]) == pytest.approx(np.mean(rates), rel=1e-12)
        assert row["model"] == f"pdd {seed_metrics[0]['pdd_version']}"
    published = [row["published_image_auroc"] for row in table]
    assert published == ["", "", "", "0.975"]
    assert "image AUROC % (their paper)" in markdown and "| 97.5 |" in markdown
    assert "random teachers" in markdown

    page = out / "report.html"
    hrefs = [h for h in links_of(page) if h.endswith("report.html")]
    assert len(hrefs) == 4 * 3  # each cell: the run and its two seeds
    assert all(not Path(h).is_absolute() and (out / h).is_file() for h in hrefs)
    assert "their paper" in page.read_text(encoding="utf-8")
    assert yaml.safe_load((out / "suite.yaml").read_text())["presets"] == ["fake", "fake-b"]

    before = {name: (out / name).read_text() for name in ("results.csv", "results.md")}
    log.clear()
    run_benchmark(load(suite_file), out, log=log.append)
    assert len(fakes) == 8, "a complete cell was trained again"
    assert all(line.endswith(": complete, skipped") for line in log) and len(log) == 4
    assert {name: (out / name).read_text() for name in before} == before


class CrashAfterStep(Callback):
    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step == 1:
            raise RuntimeError("simulated kill")


def test_an_interrupted_cell_is_resumed_and_finished_cells_kept(
    fakes: list[int], two_sets: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kills: resuming by refitting (fit refuses the folder), or retraining the finished cell."""
    suite_file = write_suite(
        tmp_path / "s.yaml",
        seeds=[0],
        epochs=2,
        presets=["fake", "fake-b"],
        datasets=[{"name": "a", "data": str(two_sets[0])}],
    )
    out = tmp_path / "bench"
    counting = runner.build_trainer

    def crash_second(*args: Any, **kwargs: Any) -> Any:
        trainer = counting(*args, **kwargs)
        if len(fakes) == 2:
            trainer.callbacks.append(CrashAfterStep())
        return trainer

    monkeypatch.setattr(runner, "build_trainer", crash_second)
    # Save the training state every step, so the kill leaves one to resume from.
    monkeypatch.setattr(
        benchmark, "fit_options", _with({"checkpoint_every_n_steps": 1}, benchmark.fit_options)
    )
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_benchmark(load(suite_file), out)
    first = out / "runs/a/fake/metrics.json"
    stamp = first.stat().st_mtime_ns
    assert (out / "runs/a/fake-b" / runner.TRAINING_STATE).is_file()

    monkeypatch.setattr(runner, "build_trainer", counting)
    log: list[str] = []
    run_benchmark(load(suite_file), out, log=log.append)
    assert log == [
        "[1/2] a / fake: complete, skipped",
        "[2/2] a / fake-b: resuming the interrupted run",
    ]
    assert len(fakes) == 3 and first.stat().st_mtime_ns == stamp
    resumed = read_metrics(out / "runs/a/fake-b")
    assert [row["image_auroc_mean"] for row in read_csv(out / "results.csv")][1] == str(
        resumed["image_auroc"]
    )


def _with(extra: dict[str, Any], make: Callable[..., Any]) -> Callable[..., Any]:
    import dataclasses

    return lambda *args, **kwargs: dataclasses.replace(make(*args, **kwargs), **extra)


def test_a_different_suite_in_the_same_folder_is_refused(
    fakes: list[int], two_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    """Kills: a rerun that mixes two suites' results in one folder, or overwrites suite.yaml;
    a moved or renamed suite file with the same content is not refused."""
    one = write_suite(
        tmp_path / "one.yaml",
        seeds=[0],
        presets=["fake"],
        datasets=[{"name": "a", "data": str(two_sets[0])}],
    )
    out = tmp_path / "bench"
    run_benchmark(load(one), out)
    saved = (out / "suite.yaml").read_text()
    other = write_suite(
        tmp_path / "other.yaml",
        seeds=[0, 1],
        presets=["fake"],
        datasets=[{"name": "a", "data": str(two_sets[0])}],
    )
    with pytest.raises(ConfigError, match=r"different suite .* differs in seeds\)") as caught:
        run_benchmark(load(other), out)
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="differs in teachers"):
        run_benchmark(load(one, teachers="pretrained"), out)
    assert (out / "suite.yaml").read_text() == saved and len(fakes) == 1
    moved = tmp_path / "renamed.yaml"  # the same content elsewhere: the same benchmark
    moved.write_text(one.read_text())
    run_benchmark(load(moved), out)
    assert len(fakes) == 1

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and holds no suite.yaml"):
        run_benchmark(load(one), foreign)


def test_a_multi_class_set_reports_its_class_mean(
    fakes: list[int], phantom_classes: Path, tmp_path: Path
) -> None:
    """Per-class training: the row is the mean over classes, as the run folder's top level."""
    suite = write_suite(
        tmp_path / "s.yaml", seeds=[0], presets=["fake"],
        datasets=[{"name": "ab", "data": str(phantom_classes)}],
        published={"label": "p", "datasets": {"ab": {"over": "classes", "fake": {"image_ap": 50}}}},
    )  # fmt: skip
    out = tmp_path / "bench"
    run_benchmark(load(suite), out)
    (row,) = read_csv(out / "results.csv")
    metrics = read_metrics(out / "runs/ab/fake")
    assert row["over"] == "classes" and row["published_image_ap"] == "0.5"
    assert float(row["image_auroc_mean"]) == metrics["image_auroc"]
    classes = metrics["classes"]
    assert float(row["image_auroc_mean"]) == pytest.approx(
        np.mean([classes[c]["image_auroc"] for c in ("a", "b")]), abs=1e-12
    )
    assert row["image_auroc_std"] == ""  # one seed: no spread measured
    assert "class mean" in (out / "results.md").read_text()


def test_a_joint_set_reports_pooled_and_class_mean_rows(fakes: list[int], tmp_path: Path) -> None:
    """``joint: true`` reaches the runner: one model per seed, a pooled row and a class-mean row
    whose numbers are metrics.json's (the paper's Uni-Medical numbers sit beside the class mean).

    Kills: joint not passed to FitOptions (per-class runs, no class_mean), the published numbers
    attached to the pooled row.
    """
    from pdd.data.synthetic import make_phantom_dataset

    data = make_phantom_dataset(
        tmp_path / "uni", "unimedical", n_train=10, n_test_normal=3, n_test_abnormal=3, size=64
    )
    suite = write_suite(
        tmp_path / "s.yaml", seeds=[0, 1], presets=["fake"],
        datasets=[{"name": "uni", "data": str(data), "format": "unimedical", "joint": True}],
        published={"label": "p", "datasets": {"uni": {"over": "classes", "fake": {"image_auroc": 81.4}}}},
    )  # fmt: skip
    out = tmp_path / "bench"
    run_benchmark(load(suite), out)
    assert len(fakes) == 2  # one model per seed, not per class
    pooled, by_class = read_csv(out / "results.csv")
    metrics = read_metrics(out / "runs/uni/fake")
    assert (pooled["over"], by_class["over"]) == ("pooled", "classes")
    assert float(pooled["image_auroc_mean"]) == metrics["image_auroc"]
    seed_means = [metrics["runs"][f"seed_{s}"]["class_mean"]["image_auroc"] for s in (0, 1)]
    assert float(by_class["image_auroc_mean"]) == pytest.approx(np.mean(seed_means), abs=1e-12)
    assert float(by_class["image_auroc_std"]) == pytest.approx(np.std(seed_means), abs=1e-12)
    assert (pooled["published_image_auroc"], by_class["published_image_auroc"]) == ("", "0.814")


def test_each_cell_fits_with_the_suites_settings(tmp_path: Path) -> None:
    """Kills: ``joint``, a class, the split file or a shared setting not reaching ``fit``."""
    from pdd.benchmark.grid import RunSettings, fit_options, plan

    for name in ("one", "uni"):
        (tmp_path / name).mkdir()
    (tmp_path / "split.csv").write_text("path,label,split\n")
    suite = load(
        write_suite(
            tmp_path / "s.yaml",
            seeds=[3, 1],
            presets=["fake", "fake-b"],
            batch_size=6,
            holdout_fraction=0.2,
            datasets=[
                {"name": "one", "data": "one", "class": "liver", "split_file": "split.csv"},
                {"name": "uni", "data": "uni", "format": "unimedical", "joint": True},
            ],
        )
    )
    cells = plan(suite, tmp_path / "bench")
    assert [(c.dataset.name, c.preset) for c in cells] == [
        ("one", "fake"), ("one", "fake-b"), ("uni", "fake"), ("uni", "fake-b"),
    ]  # fmt: skip
    settings = RunSettings(accelerator="cpu", num_workers=2, progress=False)
    first, _, joint, _ = (fit_options(suite, cell, settings) for cell in cells)
    assert (first.out, joint.out) == (
        tmp_path / "bench/runs/one/fake",
        tmp_path / "bench/runs/uni/fake",
    )
    assert (first.data, first.format, first.class_name, first.split_file, first.joint) == (
        (tmp_path / "one").resolve(),
        "auto",
        "liver",
        (tmp_path / "split.csv").resolve(),
        False,
    )
    assert (joint.format, joint.joint, joint.class_name) == ("unimedical", True, None)
    for options in (first, joint):
        assert (options.seeds, options.teachers, options.image_size, options.epochs) == (
            [3, 1],
            "random",
            32,
            1,
        )
        assert (options.batch_size, options.holdout_fraction) == (6, 0.2)
        assert (options.accelerator, options.num_workers, options.progress) == ("cpu", 2, False)


def test_joint_rows_read_pooled_metrics_and_the_class_mean_over_seeds(tmp_path: Path) -> None:
    """Reading a joint run folder as the runner describes it (hand-written metrics.json: pooled
    top level with ``std``, per seed ``runs`` with ``class_mean``), without training anything.

    Kills: the class-mean row averaging the pooled values, a sample (ddof=1) instead of the
    runner's population std, the published numbers attached to the pooled row.
    """
    from pdd.benchmark.grid import collect_results, plan

    (tmp_path / "uni").mkdir()
    suite = load(
        write_suite(
            tmp_path / "s.yaml",
            seeds=[0, 1],
            presets=["fake"],
            datasets=[{"name": "uni", "data": "uni", "format": "unimedical", "joint": True}],
            published={"datasets": {"uni": {"over": "classes", "fake": {"image_ap": 80.0}}}},
        )
    )
    out = tmp_path / "bench"
    (cell,) = plan(suite, out)
    seeds = {
        "seed_0": {"image_auroc": 0.9, "image_ap": 0.8, "class_mean": {"image_auroc": 0.7, "image_ap": 0.6}},
        "seed_1": {"image_auroc": 0.8, "image_ap": 0.6, "class_mean": {"image_auroc": 0.5, "image_ap": 0.2}},
    }  # fmt: skip
    record = {
        "image_auroc": 0.85, "image_ap": 0.7, "std": {"image_auroc": 0.05, "image_ap": 0.1},
        "seeds": [0, 1], "runs": seeds, "teachers": "random",
        "classes": {"brain": {"image_auroc": 0.6}, "liver": {"image_auroc": 0.6}},
    }  # fmt: skip
    cell.folder.mkdir(parents=True)
    (cell.folder / "metrics.json").write_text(json.dumps(record))
    pooled, by_class = collect_results(suite, out, [cell])
    assert (pooled.over, pooled.mean, pooled.std) == (
        "pooled",
        {"image_auroc": 0.85, "image_ap": 0.7},
        {"image_auroc": 0.05, "image_ap": 0.1},
    )
    assert by_class.over == "classes" and by_class.seeds == (0, 1)
    assert by_class.mean == pytest.approx({"image_auroc": 0.6, "image_ap": 0.4})
    assert by_class.std == pytest.approx({"image_auroc": 0.1, "image_ap": 0.2})  # |a - b| / 2
    assert (pooled.published, by_class.published) == ({}, {"image_ap": 0.8})
    assert by_class.seed_folders == ("runs/uni/fake/seed_0", "runs/uni/fake/seed_1")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seeds": None}, r"seeds: required key missing"),
        ({"sedes": [0]}, r"sedes: unknown key"),
        ({"seeds": [0, 0]}, r"seeds: repeated: 0"),
        ({"presets": ["fake", "pdd-nope"]}, r"presets\[1\]: unknown preset 'pdd-nope'"),
        ({"epochs": 0}, r"epochs: expected a whole number >= 1"),
        ({"teachers": "imagenet"}, r"teachers: expected one of pretrained, random"),
        ({"datasets": [{"name": "a", "data": "nowhere"}]}, r"datasets\[0\]\.data: .*nowhere does not exist"),
        ({"datasets": [{"name": "a", "data": ".", "format": "png"}]}, r"datasets\[0\]\.format: expected one of"),
        ({"datasets": [{"name": "../a", "data": "."}]}, r"datasets\[0\]\.name: '../a' cannot be a folder name"),
        ({"datasets": [{"name": "a", "data": "."}, {"name": "a", "data": "."}]}, r"datasets: dataset names repeat: a"),
        ({"published": {"datasets": {"a": {"rd4ad": {"image_auroc": 90}}}}}, r"published\.datasets\.a\.rd4ad: not a preset"),
        ({"published": {"datasets": {"a": {"fake": {"image_auroc": 0.9e3}}}}}, r"published\.datasets\.a\.fake\.image_auroc: expected a percentage"),
        ({"published": {"datasets": {"a": {"fake": {"auroc": 90}}}}}, r"published\.datasets\.a\.fake\.auroc: unknown key"),
    ],
)  # fmt: skip
def test_bad_suite_files_fail_in_one_line_naming_file_and_key(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    values: dict[str, Any] = {
        "seeds": [0],
        "presets": ["fake"],
        "datasets": [{"name": "a", "data": "."}],
    }
    values.update(change)
    path = write_suite(tmp_path / "bad.yaml", **{k: v for k, v in values.items() if v is not None})
    with pytest.raises(ConfigError) as caught:
        load(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert re.search(message, text), text


def test_unreadable_and_unknown_suites(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("seeds: [0\n")
    with pytest.raises(ConfigError, match=rf"{broken}: not valid YAML"):
        load(broken)
    with pytest.raises(ConfigError, match="not a built-in suite \\(ablation, paper\\)"):
        load(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="built-in suite 'paper': give --data-root"):
        load_suite("paper")


def test_builtin_suites_carry_the_published_numbers(tmp_path: Path) -> None:
    """The paper's numbers (DESIGN.md §6, typed here by hand) and grids of the built-in suites.

    Kills: a typo in the shipped YAML, a wrong dataset name or a missing joint flag.
    """
    for name in ("headct", "brainmri", "zhanglab", "unimedical"):
        (tmp_path / name).mkdir()
    paper = load_suite("paper", data_root=tmp_path)
    assert paper.seeds == (0, 1, 2) and paper.presets == ("pdd", "pdd-reference", "rd4ad")
    assert [(d.name, d.format, d.joint, d.data) for d in paper.datasets] == [
        (n, n, n == "unimedical", (tmp_path / n).resolve())
        for n in ("headct", "brainmri", "zhanglab", "unimedical")
    ]
    assert paper.teachers == "pretrained" and "as reported" in paper.published_label
    auroc = {
        d: {p: v.get("image_auroc") for p, v in by.items()} for d, by in paper.published.items()
    }
    assert auroc == {
        "headct": {"pdd": 0.975, "pdd-reference": 0.975, "rd4ad": 0.743},
        "brainmri": {"pdd": 0.967, "pdd-reference": 0.967, "rd4ad": 0.809},
        "zhanglab": {"pdd": 0.94, "pdd-reference": 0.94, "rd4ad": 0.875},
        "unimedical": {"pdd": 0.814, "pdd-reference": 0.814},
    }
    assert paper.published["unimedical"]["pdd"] == pytest.approx(
        {"image_auroc": 0.814, "image_ap": 0.80, "image_f1_max": 0.854}
    )
    assert paper.published_over == {"unimedical": "classes"}

    ablation = load_suite("ablation", data_root=tmp_path, teachers="random")
    chain = ("rd4ad", "pdd-one-student-no-mpa", "pdd-one-student", "pdd")
    assert ablation.presets == chain and ablation.teachers == "random"
    assert [d.name for d in ablation.datasets] == ["zhanglab"]
    assert [ablation.published["zhanglab"][p]["image_auroc"] for p in chain] == pytest.approx(
        [0.815, 0.908, 0.929, 0.94]
    )


def test_cli_reports_a_bad_suite_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pdd.cli import main

    path = write_suite(
        tmp_path / "s.yaml", seeds=[0], presets=["rd4ad"], datasets=[{"name": "a", "data": "x"}]
    )
    assert main(["benchmark", "--suite", str(path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: datasets[0].data: ")


@pytest.mark.slow
def test_cli_runs_real_presets_and_reruns_without_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pdd benchmark` end to end with the real ``rd4ad`` and ``pdd`` presets (random teachers,
    64 px, 1 epoch, one seed, a tiny set); the second call trains nothing."""
    from pdd.cli import main
    from pdd.data.synthetic import make_phantom_dataset

    built: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(1)
        return BUILD_TRAINER(*args, **kwargs)

    monkeypatch.setattr(runner, "build_trainer", counting)
    make_phantom_dataset(
        tmp_path / "data" / "tiny", n_train=10, n_test_normal=2, n_test_abnormal=2, size=64
    )
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "image_size": 64, "epochs": 1, "batch_size": 5, "seeds": [0],
                "presets": ["rd4ad", "pdd"], "datasets": [{"name": "tiny", "data": "tiny"}],
            }
        )
    )  # fmt: skip
    args = ["benchmark", "--suite", str(suite), "--out", str(tmp_path / "out"),
            "--data-root", str(tmp_path / "data"), "--teachers", "random",
            "--accelerator", "cpu", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "[1/2] tiny / rd4ad" in captured.err and "[2/2] tiny / pdd" in captured.err
    assert captured.out.split() == [
        str(tmp_path / "out" / n) for n in ("results.csv", "results.md", "report.html")
    ]
    assert len(built) == 2
    rows = read_csv(tmp_path / "out" / "results.csv")
    for row in rows:
        metrics = read_metrics(tmp_path / "out" / row["run_folder"])
        assert metrics["preset"] == row["preset"] and metrics["teachers"] == "random"
        assert float(row["image_auroc_mean"]) == metrics["image_auroc"]
        assert float(row["pixel_aupro_mean"]) == metrics["pixel_aupro"]
    assert "rd4ad (random teachers)" in (tmp_path / "out" / "results.md").read_text()
    assert main(args) == 0
    assert len(built) == 2 and capsys.readouterr().err.count("complete, skipped") == 2
