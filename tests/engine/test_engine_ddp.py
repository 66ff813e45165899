"""Multi-process training: options reach Lightning's Trainer, and a 2-process DDP fit (CPU, gloo)
trains on the same global batches as one process and scores every test image exactly once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from engine_fakes import read_metrics, read_scores
from lightning.pytorch.strategies import DDPStrategy

from pdd.training import runner
from pdd.training.runner import FitOptions, fit
from pdd.training.trainer import AtomicCheckpointIO, build_trainer

ENGINE_TESTS = Path(__file__).resolve().parent


def test_options_map_onto_the_trainer(tmp_path: Path) -> None:
    options = FitOptions(
        data=tmp_path,
        out=tmp_path,
        accelerator="cpu",
        devices=2,
        num_nodes=1,
        strategy="ddp",
        precision="bf16-mixed",
        checkpoint_every_n_steps=5,
        progress=False,
    )
    trainer = build_trainer(options, tmp_path / runner.TRAINING_STATE, epochs=7)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.num_devices == 2 and trainer.num_nodes == 1
    assert trainer.precision == "bf16-mixed" and trainer.max_epochs == 7
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_bf16_mixed_precision_trains_and_evaluates(
    fake_model: None, phantoms: Path, tmp_path: Path
) -> None:
    out = fit(
        FitOptions(
            data=phantoms,
            out=tmp_path / "run",
            preset="fake",
            teachers="random",
            accelerator="cpu",
            precision="bf16-mixed",
            epochs=1,
            progress=False,
        )
    )
    metrics = read_metrics(out)
    assert metrics["precision"] == "bf16-mixed" and 0.0 <= metrics["image_auroc"] <= 1.0
    assert len(read_scores(out)) == metrics["num_test"]


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(
    fake_model: None, phantoms: Path, tmp_path: Path
) -> None:
    """2 processes x batch 2 against 1 process x batch 4, without BatchNorm (whose statistics are
    per process under DDP): the same images per step and the averaged gradient of two half-batch
    means equals the full-batch mean, so scores agree up to float rounding (rtol 1e-4)."""
    ddp_out = tmp_path / "ddp"
    script = tmp_path / "fit_ddp.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(ENGINE_TESTS)!r})
        import engine_fakes
        engine_fakes.install()
        from pdd.training.runner import FitOptions, fit
        fit(FitOptions(data=Path({str(phantoms)!r}), out=Path({str(ddp_out)!r}), preset="fake",
                       teachers="random", accelerator="cpu", devices=2, strategy="ddp",
                       batch_size=2, epochs=2, model_overrides={{"norm": "none"}},
                       checkpoint_every_n_steps=2, progress=False))
    """)
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    single = fit(
        FitOptions(
            data=phantoms,
            out=tmp_path / "single",
            preset="fake",
            teachers="random",
            accelerator="cpu",
            batch_size=4,
            epochs=2,
            model_overrides={"norm": "none"},
            progress=False,
        )
    )
    ddp, one = read_metrics(ddp_out), read_metrics(single)
    assert (ddp["world_size"], ddp["global_batch_size"]) == (2, 4)
    assert (one["world_size"], one["global_batch_size"]) == (1, 4)

    ddp_scores, one_scores = read_scores(ddp_out), read_scores(single)
    assert (
        len(ddp_scores) == ddp["num_test"] == len({row["path"] for row in ddp_scores})
    )
    assert [row["path"] for row in ddp_scores] == [row["path"] for row in one_scores]
    assert [float(r["score"]) for r in ddp_scores] == pytest.approx(
        [float(r["score"]) for r in one_scores], rel=1e-4
    )
    for a, b in zip(ddp["train_history"], one["train_history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    for key in ("image_auroc", "image_ap", "pixel_auroc", "pixel_aupro"):
        assert ddp[key] == pytest.approx(one[key], abs=1e-3), key
