"""The paper's experiment settings: joint multi-class training, training without a holdout, the
released global batch (gradient accumulation), CSV training logs and group-aware splits in `fit`.

Metrics are recomputed here with scikit-learn from ``scores.csv``, never with our own formulas.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from engine_fakes import SMALL_VMAMBA, read_metrics, read_scores
from lightning.pytorch.callbacks import Callback
from sklearn.metrics import average_precision_score, roc_auc_score

from pdd.cli import main
from pdd.data import load_dataset
from pdd.data.synthetic import make_phantom_dataset
from pdd.errors import ConfigError
from pdd.runs.checkpoint import load
from pdd.runs.folder import read_step_losses
from pdd.training import loggers, runner
from pdd.training.runner import FitOptions, fit
from pdd.training.trainer import (
    TrainData,
    accumulation,
    build_trainer,
    planned_global_batch,
)


@pytest.fixture(scope="module")
def unimedical(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Uni-Medical-style set (meta.json; brain, liver, retinal), 4 + 3 + 3 images per class."""
    return make_phantom_dataset(
        tmp_path_factory.mktemp("unimedical"),
        layout="unimedical",
        n_train=6,
        n_test_normal=3,
        n_test_abnormal=3,
        size=64,
        seed=5,
    )


def fake_options(data: Path, out: Path, **changes: Any) -> FitOptions:
    values: dict[str, Any] = {
        "data": data,
        "out": out,
        "preset": "fake",
        "teachers": "random",
        "accelerator": "cpu",
        "epochs": 1,
        "progress": False,
    }
    values.update(changes)
    return FitOptions(**values)


def sklearn_image_metrics(rows: list[dict[str, str]]) -> dict[str, float]:
    labels = [int(r["label"]) for r in rows]
    scores = [float(r["score"]) for r in rows]
    return {
        "image_auroc": roc_auc_score(labels, scores),
        "image_ap": average_precision_score(labels, scores),
    }


@pytest.mark.slow
def test_joint_fit_trains_one_pdd_model_and_reports_pooled_per_class_and_mean(
    unimedical: Path, tmp_path: Path
) -> None:
    """The issue's command on a Uni-Medical-style set. Kills: per-class models instead of one
    (several checkpoints / class folders), pooled metrics replaced by the class mean, per-class
    metrics computed over the wrong images, scores.csv without the class of each row."""
    out = tmp_path / "joint"
    status = main([
        "fit", "--data", str(unimedical), "--format", "unimedical", "--joint",
        "--teachers", "random", "--image-size", "64", "--epochs", "1", "--batch-size", "6",
        "--out", str(out), "--no-progress",
    ])  # fmt: skip
    assert status == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.ckpt")) == ["model.ckpt"]
    assert not any((out / name).exists() for name in ("brain", "liver", "retinal"))

    metrics = read_metrics(out)
    rows = read_scores(out)
    assert sorted({r["class_name"] for r in rows}) == ["brain", "liver", "retinal"]
    assert metrics["joint"] is True
    pooled = sklearn_image_metrics(rows)
    for key, value in pooled.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
    per_class = {}
    for name in ("brain", "liver", "retinal"):
        mine = [r for r in rows if r["class_name"] == name]
        per_class[name] = sklearn_image_metrics(mine)
        for key, value in per_class[name].items():
            assert metrics["classes"][name][key] == pytest.approx(value, abs=1e-12), (name, key)
        assert metrics["classes"][name]["num_test"] == len(mine)
    for key in ("image_auroc", "image_ap"):
        expected = np.mean([per_class[name][key] for name in per_class])
        assert metrics["class_mean"][key] == pytest.approx(expected, abs=1e-12)
    # The pooled values are not the class mean (the phantom classes score on different scales).
    assert metrics["image_auroc"] != pytest.approx(metrics["class_mean"]["image_auroc"])

    # One threshold from the pooled held-out normals, and one per class, all in the checkpoint.
    _, meta = load(out / "model.ckpt")
    assert meta["threshold"] == metrics["threshold"]
    assert set(meta["class_thresholds"]) == {"brain", "liver", "retinal"}
    for name, value in meta["class_thresholds"].items():
        assert metrics["classes"][name]["threshold"] == value

    # `pdd test` with the joint checkpoint evaluates every class again, with the same numbers.
    tested = tmp_path / "tested"
    assert main(["test", "--checkpoint", str(out / "model.ckpt"), "--data", str(unimedical),
                 "--out", str(tested), "--no-progress"]) == 0  # fmt: skip
    again = read_metrics(tested)
    assert [r["score"] for r in read_scores(tested)] == [r["score"] for r in rows]
    for key in ("image_auroc", "image_ap", "threshold"):
        assert again[key] == metrics[key]
    assert again["class_mean"] == metrics["class_mean"]
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "Pooled (all test images)" in report and "Mean over classes" in report


def test_joint_multi_seed_aggregates_pooled_and_class_means(
    fake_model: None, phantom_classes: Path, tmp_path: Path
) -> None:
    """--joint with several seeds: one model per seed, and mean/std of the pooled, per-class and
    class-mean values. Kills: seeds averaged over the wrong records, class_mean dropped."""
    out = fit(fake_options(phantom_classes, tmp_path / "run", joint=True, seeds=[0, 1]))
    top = read_metrics(out)
    seeds = [read_metrics(out / f"seed_{seed}") for seed in (0, 1)]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("model.ckpt")) == [
        "seed_0/model.ckpt", "seed_1/model.ckpt",
    ]  # fmt: skip
    for key in ("image_auroc", "pixel_auroc"):
        assert top[key] == pytest.approx(np.mean([s[key] for s in seeds]))
        assert top["std"][key] == pytest.approx(np.std([s[key] for s in seeds]))
        assert top["class_mean"][key] == pytest.approx(
            np.mean([s["class_mean"][key] for s in seeds])
        )
        for name in ("a", "b"):
            assert top["classes"][name][key] == pytest.approx(
                np.mean([s["classes"][name][key] for s in seeds])
            )


def test_joint_needs_a_multi_class_set(fake_model: None, phantoms: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="multi-class"):
        fit(fake_options(phantoms, tmp_path / "run", joint=True))
    with pytest.raises(ConfigError, match="--class"):
        fit(fake_options(phantoms, tmp_path / "run2", joint=True, class_name="a"))


def test_holdout_fraction_zero_trains_on_every_normal_and_makes_no_decisions(
    fake_model: None, phantoms: Path, tmp_path: Path
) -> None:
    """Released-protocol reproduction: every training normal trains, no threshold is chosen and
    nothing pretends otherwise. Kills: a holdout still drawn, a fake threshold or sensitivity."""
    out = fit(fake_options(phantoms, tmp_path / "run", holdout_fraction=0.0))
    metrics = read_metrics(out)
    with_holdout = load_dataset(phantoms, seed=0)
    assert metrics["num_holdout"] == 0
    assert metrics["num_train"] == len(with_holdout.train) + len(with_holdout.holdout)
    assert metrics["threshold"] is None and "holdout" in metrics["threshold_note"]
    assert "sensitivity" not in metrics and "specificity" not in metrics
    assert metrics["map_stats_from"].startswith("training normals")
    _, meta = load(out / "model.ckpt")
    assert "threshold" not in meta and "map_stats" in meta
    tested = runner.test(out / "model.ckpt", phantoms, tmp_path / "test", progress=False)
    again = read_metrics(tested)
    assert again["threshold"] is None and "sensitivity" not in again
    assert [r["score"] for r in read_scores(tested)] == [r["score"] for r in read_scores(out)]


def test_pdd_reference_runs_the_released_global_batch_of_20(tmp_path: Path) -> None:
    """pdd-reference: batch 10 x 2 accumulated on one device; with --devices 2 nothing is
    accumulated. Kills: the preset's accumulation lost, or applied on top of 2 devices."""
    from pdd.config import resolve_config

    train = resolve_config("pdd-reference", {})["train"]
    assert (train["batch_size"], train["accumulate_grad_batches"]) == (10, 2)
    assert resolve_config("pdd", {})["train"].get("accumulate_grad_batches", 1) == 1
    options = fake_options(tmp_path, tmp_path / "out")
    trainer = build_trainer(options, tmp_path / "state.ckpt", 1, accumulate=2)
    assert trainer.accumulate_grad_batches == 2
    assert accumulation(2, 2) == 1
    assert accumulation(2, 1) == 2
    assert planned_global_batch(options, train) == 20
    two = fake_options(tmp_path, tmp_path / "out", devices=2)
    assert planned_global_batch(two, train) == 20


class _GradientCapture(Callback):
    """Keeps the accumulated gradients at the first optimiser step and freezes BatchNorm (so the
    comparison is about accumulation, not about statistics of 10 vs 20 images)."""

    def __init__(self) -> None:
        self.gradients: dict[str, torch.Tensor] | None = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        for module in pl_module.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.gradients is None:
            self.gradients = {
                name: p.grad.detach().clone()
                for name, p in pl_module.model.named_parameters()
                if p.grad is not None
            }


@pytest.mark.slow
def test_one_accumulated_step_equals_one_batch_of_20(tmp_path: Path) -> None:
    """pdd-reference (small VMamba, 32 px): the gradient of 2 accumulated batches of 10 equals the gradient of
    the mean loss over all 20 images (BatchNorm frozen) to 1e-5. In float64: in float32 the two
    summation orders alone differ by up to 2e-4 of the largest gradient in this model (measured
    with plain PyTorch, no Lightning). Kills: accumulated losses summed instead of averaged, an
    optimiser step after every batch."""
    from pdd import create_model
    from pdd.training.module import AnomalyModule

    data = make_phantom_dataset(
        tmp_path / "data", n_train=20, n_test_normal=1, n_test_abnormal=1, size=32, seed=1
    )
    samples = load_dataset(data, seed=0, holdout_fraction=0.0).train
    assert len(samples) == 20
    overrides = {
        "teachers": "random",
        "image_size": 32,
        "teacher_options": {"vmamba_tiny_v0": dict(SMALL_VMAMBA)},
    }
    torch.manual_seed(0)
    model = create_model("pdd-reference", **overrides)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    capture = _GradientCapture()
    options = fake_options(data, tmp_path / "run", precision="64-true")
    trainer = build_trainer(options, tmp_path / "state.ckpt", 1, accumulate=2)
    trainer.callbacks.append(capture)
    trainer.fit(AnomalyModule(model), datamodule=TrainData(samples, 32, 10, 0, 0))
    assert trainer.global_step == 1  # 20 images, batch 10, 2 batches per step
    assert capture.gradients

    reference = create_model("pdd-reference", **overrides)
    reference.load_state_dict(initial)
    reference.double().train()
    for module in reference.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    from pdd.data import ImageDataset

    images = torch.stack([ImageDataset(samples, 32)[i]["image"] for i in range(20)]).double()
    reference.loss(images)["loss"].backward()
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert set(expected) == set(capture.gradients)
    scale = max(float(g.abs().max()) for g in expected.values())
    worst = max(float((capture.gradients[n] - g).abs().max()) for n, g in expected.items())
    assert worst <= 1e-5 * scale, (worst, scale)


def test_training_curve_is_logged_as_csv_and_read_back(
    fake_model: None, phantoms: Path, tmp_path: Path
) -> None:
    """Lightning's CSV logger writes one loss per optimiser step into the run folder; the report's
    loss curve reads it. Kills: logging switched off, steps dropped."""
    out = fit(fake_options(phantoms, tmp_path / "run", epochs=2, batch_size=4))
    metrics = read_metrics(out)
    assert metrics["global_batch_size"] == 4
    assert yaml.safe_load((out / "config.yaml").read_text())["global_batch_size"] == 4
    steps = read_step_losses(out)
    expected_steps = 2 * int(np.ceil(metrics["num_train"] / 4))
    assert [step for step, _ in steps] == list(range(expected_steps))
    with (out / "logs" / "version_0" / "metrics.csv").open(newline="") as handle:
        assert "loss" in next(csv.reader(handle))
    report = (out / "report.html").read_text(encoding="utf-8")
    assert f"each of the {expected_steps} optimiser steps" in report


def test_a_missing_logger_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pdd\[tensorboard\]"):
        loggers.check_logger("tensorboard")
    with pytest.raises(ConfigError, match=r"pdd\[mlflow\]"):
        loggers.check_logger("mlflow")
    with pytest.raises(ConfigError, match="expected one of"):
        loggers.check_logger("wandb")


def test_group_by_reaches_the_split_and_pdd_test_reproduces_it(
    fake_model: None, tmp_path: Path
) -> None:
    """`fit --group-by` groups the split (split.csv records groups, metrics.json counts them) and
    `pdd test` redraws exactly that split from the checkpoint. Kills: group_by not passed to the
    split, or not stored for `pdd test`."""
    data = make_phantom_dataset(
        tmp_path / "data", layout="headct", n_train=24, n_test_normal=8, n_test_abnormal=6,
        size=32, seed=2,
    )  # fmt: skip
    pattern = r"(\d)\.png$"  # HeadCT-style names 000.png ...: ten groups by the last digit
    out = fit(fake_options(data, tmp_path / "run", group_by=pattern, seeds=[3], format="headct"))
    with (out / "split.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    by_group: dict[str, set[str]] = {}
    for row in rows:
        by_group.setdefault(Path(row["path"]).name[-5], set()).add(row["split"])
    assert len(by_group) > 2 and all(len(sets) == 1 for sets in by_group.values()), by_group
    metrics = read_metrics(out)
    assert metrics["group_by"] == pattern
    assert set(metrics["groups"]) == {"train", "holdout", "test"}
    assert sum(metrics["groups"].values()) == len(by_group)
    tested = runner.test(out / "model.ckpt", data, tmp_path / "test", progress=False)
    assert (tested / "split.csv").read_text() == (out / "split.csv").read_text()


@pytest.mark.parametrize("kind", ["tensorboard", "mlflow"])
def test_optional_loggers_record_the_training_loss(
    kind: str, fake_model: None, phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--logger tensorboard|mlflow` (the extras, installed with `dev`) receive the losses besides
    the CSV log. Kills: the option accepted but no logger attached."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = fit(fake_options(phantoms, tmp_path / "run", logger=kind))
    assert read_step_losses(out)  # the CSV log is always there
    if kind == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import (
            EventAccumulator,
        )

        (events,) = (out / "logs").rglob("events.out.tfevents.*")
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        assert "loss" in accumulator.Tags()["scalars"]
    else:
        import mlflow

        client = mlflow.tracking.MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
        (experiment,) = [e for e in client.search_experiments() if e.name == "pdd"]
        (run,) = client.search_runs([experiment.experiment_id])
        assert client.get_metric_history(run.info.run_id, "loss")
