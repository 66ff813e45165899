"""Crash-safe resume: a fit killed mid-epoch continues from its training state and ends with exactly
the metrics and scores of an uninterrupted run (CPU: every kernel is deterministic and the data
order is a function of seed and epoch, so exact equality is expected, not a tolerance)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_fakes import read_metrics, without_timing
from lightning.pytorch.callbacks import Callback

from pdd.errors import ConfigError
from pdd.training import runner
from pdd.training.runner import FitOptions, fit, resume
from pdd.training.trainer import build_trainer

ENGINE_TESTS = Path(__file__).resolve().parent
TRAINER = build_trainer


class Crash(RuntimeError):
    pass


class CrashAtStep(Callback):
    """Fails the run right after the training state of optimiser step ``step`` was saved."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise Crash(f"simulated crash after step {self.step}")


def options(data: Path, out: Path, **changes: Any) -> FitOptions:
    values: dict[str, Any] = {
        "data": data,
        "out": out,
        "preset": "fake",
        "teachers": "random",
        "accelerator": "cpu",
        "epochs": 3,
        "batch_size": 4,
        "checkpoint_every_n_steps": 1,
        "progress": False,
    }
    values.update(changes)
    return FitOptions(**values)


def crash_at(
    monkeypatch: pytest.MonkeyPatch, step: int, *, after_runs: int = 0
) -> None:
    """Make the run's Trainer crash after ``step``, in the sub-run number ``after_runs`` (0-based)."""
    built = []

    def trainer_with_crash(*args: Any, **kwargs: Any) -> Any:
        trainer = TRAINER(*args, **kwargs)
        if len(built) == after_runs:
            trainer.callbacks.append(CrashAtStep(step))
        built.append(trainer)
        return trainer

    monkeypatch.setattr(runner, "build_trainer", trainer_with_crash)


def assert_same_run(resumed: Path, reference: Path) -> None:
    assert without_timing(read_metrics(resumed)) == without_timing(
        read_metrics(reference)
    )
    assert (resumed / "scores.csv").read_text() == (
        reference / "scores.csv"
    ).read_text()
    assert not list(resumed.rglob("*.tmp")), "partial files left behind"
    assert not list(resumed.rglob(runner.TRAINING_STATE)), "training state left behind"


@pytest.fixture(scope="module")
def reference_runs(
    tmp_path_factory: pytest.TempPathFactory, phantoms: Path
) -> dict[str, Path]:
    """Uninterrupted runs to compare against (built once; the fake preset is installed here)."""
    import engine_fakes

    with pytest.MonkeyPatch.context() as patch:
        from pdd import models

        create_model = engine_fakes.fake_router(models.create_model)
        patch.setattr(models, "create_model", create_model)
        patch.setattr(runner, "create_model", create_model)
        base = tmp_path_factory.mktemp("reference")
        return {
            "one": fit(options(phantoms, base / "one")),
            "seeds": fit(options(phantoms, base / "seeds", seeds=[0, 1], epochs=2)),
        }


# 14 training images (16 minus the holdout) in batches of 4: 4 steps per epoch, 12 in all.
@pytest.mark.parametrize(
    "step",
    [2, 4, 9, 12],
    ids=["mid-epoch-1", "end-of-epoch-1", "mid-epoch-3", "end-of-training"],
)
def test_resume_after_a_crash_equals_an_uninterrupted_run(
    fake_model: None,
    phantoms: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reference_runs: dict[str, Path],
    step: int,
) -> None:
    out = tmp_path / "run"
    crash_at(monkeypatch, step)
    with pytest.raises(Crash):
        fit(options(phantoms, out))
    state = torch.load(out / runner.TRAINING_STATE, weights_only=True)
    assert state["global_step"] == step
    monkeypatch.setattr(runner, "build_trainer", TRAINER)
    assert resume(out, progress=False) == out
    assert_same_run(out, reference_runs["one"])


def test_resume_keeps_finished_seeds_and_continues_the_killed_one(
    fake_model: None,
    phantoms: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reference_runs: dict[str, Path],
) -> None:
    out = tmp_path / "run"
    crash_at(monkeypatch, 3, after_runs=1)
    with pytest.raises(Crash):
        fit(options(phantoms, out, seeds=[0, 1], epochs=2))
    finished = (out / "seed_0" / "metrics.json").stat().st_mtime_ns
    assert (out / "seed_1" / runner.TRAINING_STATE).is_file()
    (out / "seed_1" / ".metrics.json.x1y2.tmp").write_text("half a file from a kill")
    monkeypatch.setattr(runner, "build_trainer", TRAINER)
    resume(out, progress=False)
    assert (out / "seed_0" / "metrics.json").stat().st_mtime_ns == finished
    for name in ("seed_0", "seed_1"):
        assert_same_run(out / name, reference_runs["seeds"] / name)
    assert without_timing(read_metrics(out)) == without_timing(
        read_metrics(reference_runs["seeds"])
    )


def test_resume_refuses_a_folder_without_a_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to resume"):
        resume(tmp_path)


def test_resume_after_sigkill_mid_epoch(
    fake_model: None, phantoms: Path, tmp_path: Path, reference_runs: dict[str, Path]
) -> None:
    """A real process, killed with SIGKILL while it trains, then resumed here."""
    out = tmp_path / "run"
    script = tmp_path / "fit.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(ENGINE_TESTS)!r})
        import engine_fakes
        engine_fakes.install()
        from pdd.training.runner import FitOptions, fit
        fit(FitOptions(data=Path({str(phantoms)!r}), out=Path({str(out)!r}), preset="fake",
                       teachers="random", accelerator="cpu", epochs=3, batch_size=4,
                       checkpoint_every_n_steps=1, progress=False))
    """)
    )
    env = dict(os.environ, PDD_FAKE_STEP_SECONDS="0.4")
    process = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    state_path = out / runner.TRAINING_STATE
    deadline = time.monotonic() + 240
    try:
        while True:  # kill once the saved state is inside the second epoch, after its first batch
            assert process.poll() is None, (
                process.stderr.read().decode()[-2000:] if process.stderr else ""
            )
            assert time.monotonic() < deadline, (
                "the training state never reached the second epoch"
            )
            if state_path.is_file():
                step = torch.load(state_path, weights_only=True)["global_step"]
                if 5 <= step <= 6:
                    break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    state = torch.load(state_path, weights_only=True)
    loader = state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader["epoch"] == 1 and 0 < loader["batches"] < 4, (
        loader
    )  # killed mid-epoch
    assert not (out / "metrics.json").exists()

    resume(out, progress=False)
    assert_same_run(out, reference_runs["one"])
