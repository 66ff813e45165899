"""Files written before the package move (commit 5c62abc) still work with the current code.

``tests/fixtures/pre_move/`` holds a checkpoint and an interrupted ``pdd predict`` run folder made
by that commit's code (see its README). The run records absolute paths under the root it was made
in (``/tmp/pdd-pre-move``); the test relocates them to where it lays the files, changing only
those path strings, as a user moving a run folder by hand would.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from pdd.cli import main
from pdd.prediction import loop
from pdd.runs import checkpoint

FIXTURE = Path(__file__).parent.parent / "fixtures" / "pre_move"
OLD_ROOT = "/tmp/pdd-pre-move"
TOTAL_INPUTS = 7  # four PNGs and a three-slice NIfTI


def _relocated(value: Any, root: Path) -> Any:
    """``value`` with every string under OLD_ROOT moved under ``root``; nothing else changes."""
    if isinstance(value, str) and (value == OLD_ROOT or value.startswith(OLD_ROOT + "/")):
        return str(root) + value[len(OLD_ROOT):]
    if isinstance(value, list):
        return [_relocated(v, root) for v in value]
    if isinstance(value, dict):
        return {k: _relocated(v, root) for k, v in value.items()}
    return value


def _lay_out(root: Path) -> Path:
    """The fixture copied under ``root`` with its recorded paths relocated; returns the run folder."""
    for name in ("inputs", "run"):
        shutil.copytree(FIXTURE / name, root / name)
    shutil.copy(FIXTURE / "model.ckpt", root / "model.ckpt")
    run = root / "run"
    record_file = run / "predict.json"
    record = _relocated(json.loads(record_file.read_text(encoding="utf-8")), root)
    record_file.write_text(json.dumps(record, indent=2), encoding="utf-8")
    for plan_file in (run / ".partial" / "items.csv", run / ".partial" / "scans.csv"):
        with plan_file.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        with plan_file.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle, lineterminator="\n").writerows(_relocated(rows, root))
    # A git checkout does not keep file times; the run checks the checkpoint's size and mtime, so
    # give the copy the recorded time (the size is the file's own).
    os.utime(root / "model.ckpt", ns=(record["checkpoint_mtime_ns"], record["checkpoint_mtime_ns"]))
    return run


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_relocation_changes_only_the_old_root(tmp_path: Path) -> None:
    run = _lay_out(tmp_path)
    old = json.loads((FIXTURE / "run" / "predict.json").read_text(encoding="utf-8"))
    new = json.loads((run / "predict.json").read_text(encoding="utf-8"))
    changed = {k for k in old if old[k] != new[k]}
    assert changed == {"checkpoint", "inputs", "out"}
    assert new["checkpoint"] == str(tmp_path / "model.ckpt")
    old_items = (FIXTURE / "run" / ".partial" / "items.csv").read_text(encoding="utf-8")
    assert (run / ".partial" / "items.csv").read_text(encoding="utf-8") == old_items.replace(OLD_ROOT, str(tmp_path))


def test_a_pre_move_checkpoint_loads_with_its_meta() -> None:
    stored = torch.load(FIXTURE / "model.ckpt", weights_only=True)
    model, meta = checkpoint.load(FIXTURE / "model.ckpt")
    assert meta["threshold"] == stored["meta"]["threshold"]
    assert meta["map_stats"] == stored["meta"]["map_stats"]
    assert meta["provenance"] == stored["meta"]["provenance"]
    assert meta["config"] == stored["config"]
    assert meta["teachers"] == stored["teachers"]
    assert (meta["format_version"], meta["preset"], meta["pdd_version"]) == (
        stored["format_version"], stored["preset"], stored["pdd_version"])
    weights = model.trainable_state_dict()
    assert weights.keys() == stored["state_dict"].keys()
    for key, tensor in stored["state_dict"].items():
        assert torch.equal(weights[key], tensor), key
    assert not model.training


def test_pre_move_interrupted_predict_resumes_and_equals_a_fresh_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kills: rescoring what the old run finished, losing its rows or its open volume's slice,
    old records the new code misreads (options, plan, part files), and scores drifting."""
    run = _lay_out(tmp_path / "old")
    finished_before = {int(r["index"]): float(r["score"]) for r in _rows_no_header(run)}
    open_slices = sorted(int(p.stem) for p in (run / ".partial" / "slices").glob("*/*.npz"))
    assert sorted(finished_before) == [0, 1, 2, 3] and open_slices == [4]

    scored: list[int] = []
    step = loop.ScoringModule.predict_step

    def counting_step(self, batch, *args, **kwargs):  # type: ignore[no-untyped-def]
        scored.extend(batch["index"])
        return step(self, batch, *args, **kwargs)

    monkeypatch.setattr(loop.ScoringModule, "predict_step", counting_step)
    assert main(["predict", "--resume", str(run), "--no-progress"]) == 0
    assert sorted(scored) == [5, 6]  # only the unfinished slices of the volume
    assert not (run / ".partial").exists()
    assert json.loads((run / "predict.json").read_text(encoding="utf-8"))["status"] != "running"

    scored.clear()
    fresh = tmp_path / "fresh"
    inputs, ckpt = tmp_path / "old" / "inputs", tmp_path / "old" / "model.ckpt"
    assert main(["predict", "--checkpoint", str(ckpt), str(inputs), "--out", str(fresh),
                 "--accelerator", "cpu", "--batch-size", "1", "--no-progress"]) == 0
    assert sorted(scored) == list(range(TOTAL_INPUTS))

    rows, expected = _rows(run / "scores.csv"), _rows(fresh / "scores.csv")
    assert len(rows) == TOTAL_INPUTS
    for row, reference in zip(rows, expected, strict=True):
        assert (row["path"], row["scan"], row["slice"], row["decision"]) == (
            reference["path"], reference["scan"], reference["slice"], reference["decision"])
        assert float(row["score"]) == pytest.approx(float(reference["score"]), rel=1e-6, abs=1e-6)
        # The old plan's output names are kept (a fresh run may name its files differently).
        assert bool(row["heatmap"]) == bool(reference["heatmap"]) and (run / row["heatmap"]).exists()
    for index, score in finished_before.items():  # the old run's rows are kept, not recomputed
        assert float(rows[index]["score"]) == score
    assert {r["decision"] for r in rows} == {"anomalous", "normal"}

    volumes, expected_volumes = _rows(run / "volumes.csv"), _rows(fresh / "volumes.csv")
    assert [(v["scan"], v["num_slices"], v["max_slice"], v["decision"]) for v in volumes] == [
        (v["scan"], v["num_slices"], v["max_slice"], v["decision"]) for v in expected_volumes]
    assert float(volumes[0]["score"]) == pytest.approx(float(expected_volumes[0]["score"]), rel=1e-6, abs=1e-6)
    assert volumes[0]["map"] == "maps/vol_anomaly.nii.gz"  # the name the old plan chose
    volume_map = np.asarray(nib.load(run / volumes[0]["map"]).dataobj)
    fresh_map = np.asarray(nib.load(fresh / expected_volumes[0]["map"]).dataobj)
    np.testing.assert_allclose(volume_map, fresh_map, rtol=1e-6, atol=1e-6)
    overlays = [(r["heatmap"], e["heatmap"]) for r, e in zip(rows, expected) if r["heatmap"].endswith(".png")]
    assert len(overlays) == 4  # the old run's overlays, kept
    for old_name, fresh_name in overlays:
        old_pixels = np.asarray(Image.open(run / old_name), dtype=np.int16)
        new_pixels = np.asarray(Image.open(fresh / fresh_name), dtype=np.int16)
        # The old overlays were drawn on another CPU: a map value on a colormap step's edge may
        # land one step over (seen: one value of 4800 off by 2 on an AVX-512 EPYC). A wrong scale or
        # map moves most pixels.
        difference = np.abs(old_pixels - new_pixels)
        assert difference.max() <= 3 and (difference > 1).mean() < 0.01, old_name


def _rows_no_header(run: Path) -> list[dict[str, str]]:
    """The old run's part-file rows (``index,score``, no header), complete lines only."""
    rows = []
    for part in (run / ".partial").glob("scores-*.csv"):
        for line in part.read_text(encoding="utf-8").splitlines(keepends=True):
            if line.endswith("\n"):
                index, score = line.strip().split(",")
                rows.append({"index": index, "score": score})
    return rows
