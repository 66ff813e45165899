"""`pdd test` through Lightning's predict loop: two DDP processes give the same run folder as one,
with every image scored exactly once.

The real command line runs in a subprocess (DDP children re-run the script) with the tiny
``fake`` model, whose forward logs ``<pid> <batch size>`` per call.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from engine_fakes import (
    create_fake,
    forward_log,
    logged_cli_script,
    read_metrics,
    read_scores,
)

from pdd.evaluation.scoring_loop import Devices
from pdd.runs import checkpoint
from pdd.training import runner

# What may differ between a one- and a two-process run of the same evaluation.
RUN_DETAILS = ("timing", "world_size")  # timing: seconds and images/s


def _flat(value: object, prefix: str = "") -> dict[str, object]:
    """Nested metrics as ``{"a.b": leaf}``, without the run details."""
    if isinstance(value, dict):
        flat: dict[str, object] = {}
        for key, item in value.items():
            if key not in RUN_DETAILS:
                flat.update(_flat(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def _assert_same_metrics(metrics: dict, expected: dict) -> None:
    flat, reference = _flat(metrics), _flat(expected)
    assert flat.keys() == reference.keys()
    for key, value in reference.items():
        if isinstance(value, float):
            assert flat[key] == pytest.approx(value, rel=1e-6), key
        else:
            assert flat[key] == value, key


@pytest.mark.parametrize("calibrated", [True, False], ids=["fitted", "imported"])
def test_two_ddp_processes_test_every_image_once(
    fake_model: None, phantoms: Path, tmp_path: Path, calibrated: bool
) -> None:
    """``imported``: a checkpoint without threshold or colour scale makes the run score the
    dataset's normals first (a second predict loop in the same processes)."""
    meta = {"threshold": 1.0, "map_stats": {"vmin": 0.0, "vmax": 2.0}} if calibrated else {}
    ckpt = checkpoint.save(tmp_path / "model.ckpt", create_fake(), **meta)
    single = runner.test(ckpt, phantoms, tmp_path / "single", batch_size=3, progress=False)
    log = tmp_path / "forward.log"
    done = subprocess.run(
        [sys.executable, str(logged_cli_script(tmp_path)), "test", "--checkpoint", str(ckpt),
         "--data", str(phantoms), "--out", str(tmp_path / "ddp"), "--accelerator", "cpu",
         "--devices", "2", "--strategy", "ddp", "--batch-size", "3", "--no-progress"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PDD_TEST_FORWARD_LOG": str(log)},
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = tmp_path / "ddp"
    metrics, expected = read_metrics(ddp), read_metrics(single)
    calls = forward_log(log)
    normals = 0 if calibrated else metrics["num_holdout"]
    assert sum(n for _, n in calls) == metrics["num_test"] + normals  # each image once
    assert len({pid for pid, _ in calls}) == 2  # and the work was shared
    assert metrics["world_size"] == 2 and expected["world_size"] == 1
    _assert_same_metrics(metrics, expected)
    rows, expected_rows = read_scores(ddp), read_scores(single)
    assert [r["path"] for r in rows] == [r["path"] for r in expected_rows]
    assert [float(r["score"]) for r in rows] == pytest.approx(
        [float(r["score"]) for r in expected_rows], rel=1e-6
    )
    assert [r["heatmap"] for r in rows] == [r["heatmap"] for r in expected_rows]
    assert all((ddp / r["heatmap"]).is_file() for r in rows if r["heatmap"])
    assert not (ddp / ".scoring").exists()
    assert done.stdout.count("run folder:") == 1  # rank 0 reports alone
    assert done.stdout.count("throughput:") == 1 and "images/s" in done.stdout
    assert metrics["timing"]["images_scored"] == metrics["num_test"] + normals


def test_test_records_the_devices_and_precision_it_ran_with(
    fake_model: None, phantoms: Path, tmp_path: Path
) -> None:
    ckpt = checkpoint.save(tmp_path / "model.ckpt", create_fake(), threshold=1.0,
                           map_stats={"vmin": 0.0, "vmax": 2.0})  # fmt: skip
    tested = runner.test(
        ckpt, phantoms, tmp_path / "bf16", devices=Devices(accelerator="cpu", precision="bf16-mixed"),
        progress=False,
    )
    metrics = read_metrics(tested)
    assert metrics["precision"] == "bf16-mixed" and metrics["world_size"] == 1
    config = (tested / "config.yaml").read_text()
    assert "precision: bf16-mixed" in config and "accelerator: cpu" in config
