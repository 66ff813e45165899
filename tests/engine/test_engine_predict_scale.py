"""`pdd predict` at scale: two DDP processes equal one, and a killed run resumes without rescoring.

Both run the real command line in a subprocess (DDP children re-run the script) with the tiny
``fake`` model, whose forward is wrapped to log ``<pid> <batch size>`` per call: the log proves
each input was scored exactly once and by which process.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dicom_series import write_series
from engine_fakes import create_fake, forward_log, logged_cli_script
from PIL import Image

from pdd.data.synthetic import make_phantom, write_nifti
from pdd.prediction.predict import PredictOptions, predict
from pdd.runs import checkpoint


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path, int]:
    """(input folder, checkpoint, number of slices): 6 PNGs, a 4-slice NIfTI, a 3-file series."""
    rng = np.random.default_rng(2)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        image = make_phantom(rng, 40, lesion=i % 2 == 1)[0]
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    write_nifti(folder / "vol.nii.gz", np.stack([make_phantom(rng, 36)[0] for _ in range(4)], axis=2))
    write_series(folder / "series", [np.full((24, 24), 40 * k, np.int16) for k in range(3)])
    ckpt = checkpoint.save(tmp_path / "model.ckpt", create_fake(norm="none"), threshold=1.0,
                           map_stats={"vmin": 0.0, "vmax": 2.0})
    return folder, ckpt, 13


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _assert_same_results(out: Path, reference: Path) -> None:
    rows, expected = _rows(out / "scores.csv"), _rows(reference / "scores.csv")
    assert [r["path"] for r in rows] == [r["path"] for r in expected]
    assert len({r["path"] for r in rows}) == len(rows)
    assert [float(r["score"]) for r in rows] == pytest.approx([float(r["score"]) for r in expected], rel=1e-5)
    assert [r["decision"] for r in rows] == [r["decision"] for r in expected]
    volumes, expected_volumes = _rows(out / "volumes.csv"), _rows(reference / "volumes.csv")
    assert [(v["scan"], v["max_slice"]) for v in volumes] == [(v["scan"], v["max_slice"]) for v in expected_volumes]
    assert [float(v["score"]) for v in volumes] == pytest.approx([float(v["score"]) for v in expected_volumes], rel=1e-5)


def test_two_ddp_processes_score_every_input_once(fake_model: None, data, tmp_path: Path) -> None:
    folder, ckpt, total = data
    single = tmp_path / "single"
    predict(PredictOptions(ckpt, (folder,), single, accelerator="cpu", batch_size=2))
    log = tmp_path / "ddp.log"
    done = subprocess.run(
        [sys.executable, str(logged_cli_script(tmp_path)), "predict", "--checkpoint", str(ckpt), str(folder),
         "--out", str(tmp_path / "ddp"), "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
         "--batch-size", "2", "--no-progress"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PDD_TEST_FORWARD_LOG": str(log)},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    calls = forward_log(log)
    assert sum(n for _, n in calls) == total  # each slice through the model exactly once
    assert len({pid for pid, _ in calls}) == 2  # and the work was shared
    _assert_same_results(tmp_path / "ddp", single)
    assert "images/s" in done.stdout and done.stdout.count("scored") == 1  # rank 0 reports alone


def _finished(out: Path) -> set[int]:
    """Inputs a killed run saved: complete rows of its part files, per-slice maps of open scans."""
    work = out / ".partial"
    finished: set[int] = set()
    for part in work.glob("scores-*.csv"):
        finished |= {int(line.split(",")[0]) for line in part.read_text().splitlines(keepends=True) if line.endswith("\n")}
    return finished | {int(p.stem) for p in work.glob("slices/*/*.npz")}


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_without_rescoring(fake_model: None, data, tmp_path: Path, stop: int) -> None:
    """SIGKILL (cut-off part files) and SIGTERM (exit 143 naming the resume command).
    Kills: rescoring finished inputs on resume (the forward log would exceed the pending
    count), duplicated rows (the merge would differ from the uninterrupted run)."""
    folder, ckpt, total = data
    out, log = tmp_path / "out", tmp_path / "first.log"
    script = logged_cli_script(tmp_path)
    env = {**os.environ, "PDD_TEST_FORWARD_LOG": str(log), "PDD_TEST_FORWARD_SECONDS": "0.4"}
    process = subprocess.Popen(
        [sys.executable, str(script), "predict", "--checkpoint", str(ckpt), str(folder), "--out", str(out),
         "--accelerator", "cpu", "--batch-size", "2", "--no-progress"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 300
    while sum(n for _, n in forward_log(log)) < 6 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    if stop == signal.SIGTERM:
        assert process.returncode == 143
        assert stderr.strip().splitlines()[-1] == (
            f"error: predict terminated (SIGTERM); finished scans are kept in {out}; "
            f"continue with `pdd predict --resume {out}`"
        )
    assert not (out / "scores.csv").exists(), "the run finished before it could be killed"
    finished = _finished(out)
    assert 0 < len(finished) < total

    resumed_log = tmp_path / "resumed.log"
    done = subprocess.run(
        [sys.executable, str(script), "predict", "--resume", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PDD_TEST_FORWARD_LOG": str(resumed_log)},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sum(n for _, n in forward_log(resumed_log)) == total - len(finished)
    reference = tmp_path / "reference"
    predict(PredictOptions(ckpt, (folder,), reference, accelerator="cpu", batch_size=2))
    _assert_same_results(out, reference)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _two_nodes(script: Path, arguments: list[str], log: Path, **env: str) -> list[subprocess.Popen]:
    """Two one-process "machines" on this host, as a cluster launcher starts them (SLURM, torchrun:
    the rank variables set from outside); they share the output folder as nodes share a file system."""
    common = {**os.environ, **env, "PDD_TEST_FORWARD_LOG": str(log), "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2", "LOCAL_RANK": "0"}  # fmt: skip
    return [
        subprocess.Popen(
            [sys.executable, str(script), "predict", *arguments, "--accelerator", "cpu", "--devices", "1",
             "--num-nodes", "2", "--strategy", "ddp", "--no-progress"],
            env={**common, "NODE_RANK": str(node)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for node in (0, 1)
    ]


def test_two_node_run_killed_and_resumed_scores_each_input_once(fake_model: None, data, tmp_path: Path) -> None:
    """A multi-node run whose every process is killed part-way continues on two nodes again: no
    input is scored twice across both attempts, and the results equal an uninterrupted run."""
    folder, ckpt, total = data
    out, log = tmp_path / "out", tmp_path / "first.log"
    script = logged_cli_script(tmp_path)
    nodes = _two_nodes(script, ["--checkpoint", str(ckpt), str(folder), "--out", str(out), "--batch-size", "1"],
                       log, PDD_TEST_FORWARD_SECONDS="0.4")  # fmt: skip
    deadline = time.monotonic() + 300
    while sum(n for _, n in forward_log(log)) < 6 and time.monotonic() < deadline:
        assert all(node.poll() is None for node in nodes), [node.communicate()[1][-2000:] for node in nodes]
        time.sleep(0.1)
    assert len({pid for pid, _ in forward_log(log)}) == 2  # both nodes were scoring
    for node in nodes:
        node.kill()
        node.communicate(timeout=60)
    assert not (out / "scores.csv").exists(), "the run finished before it could be killed"
    finished = _finished(out)
    assert 0 < len(finished) < total

    resumed_log = tmp_path / "resumed.log"
    nodes = _two_nodes(script, ["--resume", str(out)], resumed_log)
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sum(n for _, n in forward_log(resumed_log)) == total - len(finished)
    reference = tmp_path / "reference"
    predict(PredictOptions(ckpt, (folder,), reference, accelerator="cpu", batch_size=2))
    _assert_same_results(out, reference)
    assert outputs[0][0].count("scored") == 1 and "scored" not in outputs[1][0]
