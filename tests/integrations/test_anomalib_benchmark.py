"""anomalib's detectors as `pdd benchmark` entries: trained and scored by anomalib on OUR split,
judged by OUR metric code, one row each beside our presets, with the cost of each model.

The end-to-end test runs the real ``pdd`` and ``rd4ad`` presets and four anomalib models
(untrained backbones, 64 px, 1 epoch) on synthetic phantoms through the command line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
import yaml
from sklearn.metrics import roc_auc_score

from pdd.benchmark.suite import load_suite
from pdd.data import read_manifest
from pdd.errors import ConfigError

ANOMALIB_MODELS = {
    "Patchcore": {"backbone": "resnet18", "layers": ["layer2", "layer3"]},
    "Padim": {"backbone": "resnet18"},
    "ReverseDistillation": {"backbone": "resnet18"},
    "Dfm": {"backbone": "resnet18"},
}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_suite(path: Path, presets: list[Any], data: Path, **values: Any) -> Path:
    suite = {
        "image_size": 64, "epochs": 1, "batch_size": 8, "teachers": "random", "seeds": [0],
        "presets": presets, "datasets": [{"name": "phantoms", "data": str(data)}], **values,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(suite), encoding="utf-8")
    return path


@pytest.fixture
def phantoms(tmp_path: Path) -> Path:
    from pdd.data.synthetic import make_phantom_dataset

    return make_phantom_dataset(
        tmp_path / "phantoms", n_train=20, n_test_normal=5, n_test_abnormal=5, size=64
    )


@pytest.mark.slow
def test_suite_with_our_presets_and_four_anomalib_models_runs_on_our_split(
    anomalib: ModuleType, phantoms: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pdd.cli import main

    presets: list[Any] = ["pdd", "rd4ad"]
    presets += [{"anomalib": name, "args": args} for name, args in ANOMALIB_MODELS.items()]
    suite = write_suite(tmp_path / "suite.yaml", presets, phantoms)
    out = tmp_path / "out"
    args = ["benchmark", "--suite", str(suite), "--out", str(out), "--accelerator", "cpu",
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "[6/6] phantoms / anomalib:Dfm" in capsys.readouterr().err

    rows = read_csv(out / "results.csv")
    labels = ["pdd", "rd4ad", *(f"anomalib:{name}" for name in ANOMALIB_MODELS)]
    assert [row["preset"] for row in rows] == labels  # one row per model

    reference_split = (out / "runs" / "phantoms" / "pdd" / "split.csv").read_text()
    for row in rows:
        folder = out / row["run_folder"]
        metrics = json.loads((folder / "metrics.json").read_text())
        assert float(row["image_auroc_mean"]) == metrics["image_auroc"]
        # cost columns, from the same run
        assert float(row["train_seconds"]) == metrics["timing"]["train_seconds"]
        assert float(row["images_per_second"]) > 0
        # every model was split the same way
        assert (folder / "split.csv").read_text() == reference_split
        if not row["preset"].startswith("anomalib:"):
            assert row["model"].startswith("pdd ")
            continue
        name = row["preset"].removeprefix("anomalib:")
        assert metrics["framework"] == "anomalib"
        assert metrics["anomalib_version"] == anomalib.__version__
        assert metrics["anomalib_args"] == {**ANOMALIB_MODELS[name], "pre_trained": False}
        assert row["model"].startswith(f"anomalib {anomalib.__version__} {name}(")
        assert "pre_trained=False" in row["model"]

        # our metric code made the number: scikit-learn on the model's own scores.csv agrees
        scores = read_csv(folder / "scores.csv")
        labels_ = [int(r["label"]) for r in scores]
        values = [float(r["score"]) for r in scores]
        assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels_, values), abs=1e-12)
        assert "pixel_aupro" in metrics and "threshold_calibration" in metrics

        # the model saw exactly our split: trained on the train rows, scored the test rows
        split = read_manifest(folder / "split.csv", phantoms)
        trained = (folder / "trained_images.txt").read_text().split("\n")[:-1]
        assert sorted(trained) == sorted(s.key for s in split["train"])
        assert metrics["trained_images"]["seen"] == len(split["train"])  # 1 epoch, each once
        assert sorted(r["path"] for r in scores) == sorted(s.key for s in split["test"])
        assert len(scores) == len(split["test"])

    table = (out / "results.md").read_text()
    assert f"anomalib {anomalib.__version__} Padim(" in table and "images/s" in table
    assert f"anomalib {anomalib.__version__}" in (out / "report.html").read_text()

    # a rerun trains nothing: every cell is complete
    assert main(args) == 0
    assert capsys.readouterr().err.count("complete, skipped") == len(labels)


def test_anomalib_entries_are_checked_when_the_suite_is_read(
    anomalib: ModuleType, phantoms: Path, tmp_path: Path
) -> None:
    cases = [
        ("anomalib:NoSuchModel",
         r"presets\[0\]: anomalib:NoSuchModel: anomalib .* has no model 'NoSuchModel' \(known: .*Padim"),
        ({"anomalib": "Padim", "args": {"backbon": "resnet18"}},
         r"presets\[0\]: anomalib:Padim: args.backbon: not an argument of anomalib's Padim"),
        ({"anomalib": "Padim", "args": {"post_processor": True}},
         r"args.post_processor: is set by pdd benchmark"),
        ({"anomalib": "Padim", "epochs": 0}, r"presets\[0\].epochs: expected a whole number"),
        ({"anomalib": "Padim", "colour": 1}, r"presets\[0\].colour: unknown key"),
        ("anomalib:Stfpm", r"Stfpm always loads pretrained weights .* teachers are random"),
        (["anomalib:Padim", {"anomalib": "Padim", "args": {"n_features": 10}}],
         r"presets: repeated: anomalib:Padim"),
    ]  # fmt: skip
    for preset, message in cases:
        presets = preset if isinstance(preset, list) else [preset]
        path = write_suite(tmp_path / "bad.yaml", presets, phantoms)
        with pytest.raises(ConfigError, match=message) as caught:
            load_suite(path)
        assert "\n" not in str(caught.value)

    named = [{"anomalib": "Padim", "name": "padim-small", "args": {"n_features": 10}},
             "anomalib:Padim", "rd4ad"]  # fmt: skip
    suite = load_suite(write_suite(tmp_path / "ok.yaml", named, phantoms))
    assert suite.presets == ("padim-small", "anomalib:Padim", "rd4ad")
    assert suite.anomalib["padim-small"].args == {"n_features": 10}
    assert set(suite.anomalib) == {"padim-small", "anomalib:Padim"}


def test_a_suite_naming_an_anomalib_model_without_anomalib_fails_in_one_line(
    phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "anomalib", None)  # import anomalib -> ImportError
    path = write_suite(tmp_path / "s.yaml", ["rd4ad", "anomalib:Patchcore"], phantoms)
    with pytest.raises(ConfigError) as caught:
        load_suite(path)
    message = str(caught.value)
    assert "\n" not in message
    assert "presets[1]: anomalib:Patchcore: anomalib is not installed" in message
    assert 'pip install -e ".[anomalib]"' in message


def test_a_multi_class_dataset_needs_class_or_joint_for_anomalib_models(
    anomalib: ModuleType, tmp_path: Path
) -> None:
    from pdd.benchmark.grid import run_benchmark
    from pdd.data.synthetic import make_phantom_dataset

    data = make_phantom_dataset(
        tmp_path / "multi", n_train=4, n_test_normal=1, n_test_abnormal=1, size=32,
        classes=["a", "b"],
    )  # fmt: skip
    suite = load_suite(write_suite(tmp_path / "s.yaml", ["anomalib:Padim"], data))
    with pytest.raises(ConfigError, match=r"has 2 classes; .*need `class: <name>` or `joint"):
        run_benchmark(suite, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_the_anomalib_scorer_gives_each_image_its_own_score_and_map(
    anomalib: ModuleType, phantoms: Path, tmp_path: Path
) -> None:
    """A stand-in anomalib model whose score is the image's mean intensity and whose map is the
    image itself: the scores and maps come back in the samples' order, each image's own."""
    from anomalib.data import InferenceBatch
    from anomalib.engine import Engine
    from anomalib.models.components import AnomalibModule
    from torch import nn

    from pdd.data import ImageDataset, load_dataset, to_display
    from pdd.integrations.anomalib_runs import AnomalibScorer

    class Mean(nn.Module):
        def forward(self, images: Any) -> Any:
            return InferenceBatch(pred_score=images.mean(dim=(1, 2, 3)), anomaly_map=images[:, :1])

    class StandIn(AnomalibModule):
        learning_type = anomalib.LearningType.ONE_CLASS
        trainer_arguments: ClassVar[dict[str, Any]] = {}

        def __init__(self) -> None:
            super().__init__(pre_processor=False, post_processor=False, evaluator=False,
                             visualizer=False)  # fmt: skip
            self.model = Mean()

    split = load_dataset(phantoms, "folder", seed=0)
    samples = list(reversed(split.test))  # not the files' order
    engine = Engine(default_root_dir=tmp_path / "a", logger=False, accelerator="cpu",
                    enable_progress_bar=False)  # fmt: skip
    scored = AnomalibScorer(engine, StandIn(), 64, 3, 0).score(
        samples, "test", keep_maps=True, keep_masks=True, extremes=2
    )
    ours = ImageDataset(samples, 64)
    for i in range(len(samples)):
        image = to_display(ours[i]["image"])  # [0, 1] RGB, as the scorer hands it to anomalib
        assert scored.scores[i] == pytest.approx(float(image.mean()), abs=1e-6)
        assert abs(scored.maps[i] - image[..., 0]).max() < 1e-6
        assert (scored.masks[i] == (ours[i]["mask"][0].numpy() > 0.5)).all()
    assert len(scored.extremes) == 4


def test_offline_pretrained_weights_missing_is_one_line_before_anything_runs(
    anomalib: ModuleType, phantoms: Path, tmp_path: Path
) -> None:
    """Pretrained backbone, empty weight cache, no network: `pdd benchmark` stops with one line
    naming the model and the backbone, and nothing is written."""
    import os
    import subprocess
    import sys

    suite = write_suite(
        tmp_path / "s.yaml", [{"anomalib": "Padim", "args": {"backbone": "resnet18"}}], phantoms,
        teachers="pretrained",
    )  # fmt: skip
    env = {**os.environ, "HF_HOME": str(tmp_path / "empty_cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pdd.cli", "benchmark", "--suite", str(suite), "--out",
         str(tmp_path / "out"), "--accelerator", "cpu", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert "anomalib:Padim: cannot load the pretrained weights of resnet18" in errors[0]
    assert "pre_trained: false" in errors[0]
    assert not (tmp_path / "out").exists()
