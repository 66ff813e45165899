"""PDD inside anomalib: ``Pdd`` trains and tests under anomalib's ``Engine`` on an anomalib
``Folder`` datamodule, and for the same weights its raw maps and scores (anomalib's reader and
pre-processor) equal ours (our reader and ``to_model_input``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from pdd.data import Sample
from pdd.data.synthetic import make_phantom_dataset
from pdd.evaluation.scoring import Scorer
from pdd.models import create_model

SMALL_VMAMBA: dict[str, Any] = {"dims": 8, "depths": [1, 1, 1, 1], "ssm_d_state": 4}
"""A VMamba-Tiny with the real wiring but few channels and blocks (as tests/engine uses)."""


def overrides(size: int) -> dict[str, Any]:
    return {
        "teachers": "random",
        "image_size": size,
        "teacher_options": {"vmamba_tiny_v0": dict(SMALL_VMAMBA)},
        "train": {"epochs": 1, "batch_size": 4},
    }


def folder_datamodule(root: Path) -> Any:
    from anomalib.data import Folder

    return Folder(
        name="phantoms",
        root=root,
        normal_dir="train/good",
        abnormal_dir="test/lesion",
        normal_test_dir="test/good",
        mask_dir="ground_truth/lesion",
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
    )


def engine(root: Path) -> Any:
    from anomalib.engine import Engine

    return Engine(
        default_root_dir=root, accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "size"), [("pdd", 64), ("pdd-reference", 32)])
def test_pdd_runs_under_anomalib_engine_and_its_maps_equal_ours(
    anomalib: ModuleType, tmp_path: Path, preset: str, size: int
) -> None:
    from pdd.integrations.anomalib import Pdd

    root = make_phantom_dataset(
        tmp_path / "phantoms", n_train=8, n_test_normal=3, n_test_abnormal=3, size=64
    )
    model = Pdd(preset, **overrides(size))
    assert model.model.pdd.config["preset"] == preset
    runner = engine(tmp_path / "anomalib")
    runner.fit(model=model, datamodule=folder_datamodule(root))
    results = runner.test(model=model, datamodule=folder_datamodule(root))
    assert results and {"image_AUROC", "pixel_AUROC"} <= set(results[0])  # anomalib's metrics

    # The same weights, raw (no post-processing), through anomalib's data path ...
    raw = Pdd(preset, post_processor=False, evaluator=False, visualizer=False, **overrides(size))
    raw.model.load_state_dict(model.model.state_dict())
    datamodule = folder_datamodule(root)
    batches = engine(tmp_path / "raw").predict(model=raw, datamodule=datamodule)
    assert batches
    theirs: dict[str, tuple[np.ndarray, float]] = {}
    for batch in batches:
        for path, amap, score in zip(batch.image_path, batch.anomaly_map, batch.pred_score):
            theirs[str(Path(path).resolve())] = (amap.reshape(size, size).numpy(), float(score))

    # ... and ours: a fresh model from the saved config and trainable weights, our reader.
    ours_model = create_model(preset, **overrides(size))
    ours_model.load_trainable_state_dict(model.model.pdd.trainable_state_dict())
    paths = sorted(theirs)
    # every image of anomalib's test set (the Folder's default keeps half for validation), once
    expected = sorted(str(Path(p).resolve()) for p in datamodule.test_data.samples.image_path)
    assert paths == expected and len(paths) >= 2
    samples = [Sample(path, -1, "test") for path in paths]
    # full float32, as anomalib's Engine runs here
    scorer = Scorer(ours_model, torch.device("cpu"), size, 4, 0, contextlib.nullcontext, False)
    scored = scorer.score(samples, "ours", keep_maps=True)
    assert scored.maps is not None
    their_maps = np.stack([theirs[p][0] for p in paths])
    their_scores = np.array([theirs[p][1] for p in paths])
    span = float(scored.maps.max() - scored.maps.min())
    assert span > 0
    # 1e-4 of the map range, the project's equality bound for maps: the two data paths batch the
    # images differently, and oneDNN's kernels for other batch sizes round differently (a 1-ulp
    # difference at 32 px on an AVX-512 EPYC exceeded 1e-5 of that small random-teacher span).
    np.testing.assert_allclose(their_maps, scored.maps, rtol=0, atol=1e-4 * span)
    np.testing.assert_allclose(their_scores, scored.scores, rtol=0, atol=1e-4 * span)

