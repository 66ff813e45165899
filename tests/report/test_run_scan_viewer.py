"""`pdd fit` and `pdd test` on a NIfTI volume dataset: volumes.csv scores each test scan by the scan
rule over its slices (checked by hand from scores.csv), the run keeps viewer frames for the most
anomalous scans only (the bound, lowered to 3 here) on the checkpoint's fixed colour scale, and the
run's report.html shows them in the scan viewer, which loads in headless Chromium without console
errors and moves through slices. Skipped without chromium + chromedriver unless
PDD_REQUIRE_CHROMIUM=1 (the browser test only)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))  # the fake model

import engine_fakes

from pdd.data import ImageDataset, Sample
from pdd.data.synthetic import make_phantom_dataset
from pdd.evaluation import scan_results
from pdd.runs import checkpoint

KEPT = 3  # viewer frames kept (MAX_SCANS, lowered so that the bound shows with 4 test scans)
SLICES = 4  # the phantom writer's slices per volume


def _install_fake(patch: pytest.MonkeyPatch) -> None:
    from pdd import models
    from pdd.training import runner

    create_model = engine_fakes.fake_router(models.create_model)
    patch.setattr(models, "create_model", create_model)
    patch.setattr(runner, "create_model", create_model)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fit (fake model, 32 px, 1 epoch) and a test of its checkpoint on a phantom NIfTI set:
    4 training volumes (one held out), 2 normal and 2 lesion test volumes of 4 slices."""
    from pdd.training.runner import FitOptions, fit, test

    root = tmp_path_factory.mktemp("volumes")
    data = make_phantom_dataset(
        root / "data", image_format="nifti", n_train=16, n_test_normal=8, n_test_abnormal=8, size=48
    )
    options = FitOptions(data=data, out=root / "fit", preset="fake", teachers="random",
                         accelerator="cpu", progress=False, holdout_fraction=0.25, epochs=1)
    with pytest.MonkeyPatch.context() as patch:
        _install_fake(patch)
        patch.setattr(scan_results, "MAX_SCANS", KEPT)
        with pytest.warns(UserWarning, match="cannot promise"):  # 1 held-out volume, 4 slices
            fit(options)
        test(root / "fit" / "model.ckpt", data, root / "test", progress=False)
    return {"fit": root / "fit", "test": root / "test"}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake(monkeypatch)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _slice_scores(folder: Path) -> dict[str, dict[int, float]]:
    """Per volume, its slices' scores from scores.csv (rows ``volume#k``)."""
    volumes: dict[str, dict[int, float]] = {}
    for row in _rows(folder / "scores.csv"):
        path, _, k = row["path"].rpartition("#")
        volumes.setdefault(path, {})[int(k)] = float(row["score"])
    return volumes


def _hand_p(score: float, normals: list[float]) -> float:
    return (1 + sum(1 for v in normals if v >= score)) / (len(normals) + 1)


def test_volumes_csv_scores_each_test_scan_by_hand(runs: dict[str, Path], fake: None) -> None:
    _, meta = checkpoint.load(runs["fit"] / "model.ckpt")
    scan_normals = meta["scan_calibration"]["normal_scores"]
    slices = _slice_scores(runs["fit"])
    rows = _rows(runs["fit"] / "volumes.csv")
    assert len(rows) == len(slices) == 4
    for row in rows:
        values = slices[row["scan"]]
        top3 = sorted(values.values(), reverse=True)[:3]
        assert float(row["score"]) == pytest.approx(np.mean(top3), rel=1e-12)
        assert int(row["max_slice"]) == max(values, key=values.__getitem__)
        assert int(row["num_slices"]) == SLICES
        assert row["label"] == ("1" if "/lesion/" in row["scan"] else "0")
        expected = "anomalous" if float(row["score"]) > meta["scan_threshold"] else "normal"
        assert row["decision"] == expected
        assert float(row["p_value"]) == pytest.approx(_hand_p(float(row["score"]), scan_normals))
    # `pdd test` of the checkpoint finds the same scans with the same scores
    tested = {row["scan"]: row for row in _rows(runs["test"] / "volumes.csv")}
    for row in rows:
        assert float(tested[row["scan"]]["score"]) == pytest.approx(float(row["score"]), abs=1e-6)
        assert tested[row["scan"]]["p_value"] == row["p_value"]


def test_viewer_frames_are_the_most_anomalous_scans_on_the_fixed_scale(
    runs: dict[str, Path], fake: None
) -> None:
    model, meta = checkpoint.load(runs["fit"] / "model.ckpt")
    vmin, vmax = meta["map_stats"]["vmin"], meta["map_stats"]["vmax"]
    rows = sorted(_rows(runs["fit"] / "volumes.csv"), key=lambda r: -float(r["score"]))
    slices = _slice_scores(runs["fit"])
    for name in ("fit", "test"):
        frames = sorted((runs[name] / "viewer").glob("*.npz"))
        assert len(frames) == KEPT
        keys = []
        for path in frames:
            with np.load(path) as saved:
                key = str(saved["key"])
                keys.append(key)
                assert saved["images"].shape == saved["levels"].shape == (SLICES, 32, 32)
                assert list(saved["positions"]) == list(range(SLICES))
                wanted = [slices[key][k] for k in range(SLICES)]
                np.testing.assert_allclose(saved["scores"], wanted, rtol=0, atol=1e-6)
                levels = saved["levels"]
            # the map of one slice, recomputed, quantised on the checkpoint's colour scale
            image = ImageDataset([Sample(key, 0, "x", slice_index=1)], 32)[0]["image"]
            with torch.inference_mode():
                amap = model.eval()(image[None])[0][0].numpy()
            expected = np.round(np.clip((amap - vmin) / (vmax - vmin), 0, 1) * 255)
            assert np.abs(levels[1].astype(int) - expected).max() <= 1
        assert keys == [row["scan"] for row in rows[:KEPT]]

        page = (runs[name] / "report.html").read_text(encoding="utf-8")
        assert page.count('class="pdd-scan"') == KEPT
        assert f"the {KEPT} most anomalous of 4 scans" in page
        positions = [page.index(f"<h3>{row['scan']}</h3>") for row in rows[:KEPT]]
        assert positions == sorted(positions)
        assert f"<h3>{rows[KEPT]['scan']}</h3>" not in page


def test_fit_report_viewer_loads_and_moves_through_slices(runs: dict[str, Path], logged_browser: Any) -> None:
    command = logged_browser
    top = max(_rows(runs["fit"] / "volumes.csv"), key=lambda r: float(r["score"]))
    slices = _slice_scores(runs["fit"])[top["scan"]]
    command("POST", "/url", {"url": (runs["fit"] / "report.html").resolve().as_uri()})

    def state() -> dict[str, Any]:
        return command("POST", "/execute/sync", {"script": """
            const viewer = document.querySelector('.pdd-scan');
            return {key: viewer.querySelector('h3').textContent,
                    index: viewer.querySelector('.pdd-index').textContent,
                    score: viewer.querySelector('.pdd-slice-score').textContent,
                    src: viewer.querySelector('.pdd-slice').src,
                    viewers: document.querySelectorAll('.pdd-scan').length,
                    loaded: Array.from(document.querySelectorAll('.pdd-scan img'))
                        .every(i => i.complete && i.naturalWidth > 0)};
        """, "args": []})

    first = state()
    assert first["viewers"] == KEPT and first["loaded"]
    assert first["key"] == top["scan"]
    start = int(top["max_slice"])  # the viewer opens on the scan's most anomalous slice
    assert first["index"] == f"slice {start} ({start + 1} of {SLICES})"
    assert float(first["score"]) == slices[start]
    move = "\ue013" if start == SLICES - 1 else "\ue015"  # ArrowUp from the last slice, else down
    command("POST", "/execute/sync", {"script": "document.querySelector('.pdd-scan').focus();", "args": []})
    command("POST", "/actions", {"actions": [{"type": "key", "id": "keyboard", "actions": [
        {"type": "keyDown", "value": move}, {"type": "keyUp", "value": move}]}]})
    second = state()
    shown = start - 1 if start == SLICES - 1 else start + 1
    assert second["index"] == f"slice {shown} ({shown + 1} of {SLICES})"
    assert second["src"] != first["src"] and float(second["score"]) == slices[shown]
    errors = [e for e in command("POST", "/se/log", {"type": "browser"}) if e["level"] == "SEVERE"]
    assert errors == []
