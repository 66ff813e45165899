"""Issue 11, the command-line and run-level cases: bad option values, seeds, hardware, YAML with a
duplicate key, two runs into one folder, Ctrl-C / SIGTERM, and a failed start that must not block
its own corrected rerun. Each ends in a one-line error naming the input, or the correct result.

Training uses the tiny ``fake`` preset of tests/engine (32 px, 1-2 epochs, a dozen images).
"""

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

from pdd.cli import main
from pdd.cli.signals import Interrupted, interruptible
from pdd.runs.lock import LOCK_NAME, run_lock

ENGINE_TESTS = Path(__file__).resolve().parents[1] / "engine"
sys.path.insert(0, str(ENGINE_TESTS))

import engine_fakes

FAKE = ["--preset", "fake", "--teachers", "random", "--epochs", "1", "--batch-size", "4",
        "--accelerator", "cpu", "--no-progress"]


def _err_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def _install_fake(patch: pytest.MonkeyPatch) -> None:
    """`pdd fit --preset fake` builds engine_fakes.FakeModel (the CLI's preset checks stand aside)."""
    from pdd import models
    from pdd.cli import fit as fit_cli
    from pdd.training import runner

    create_model = engine_fakes.fake_router(models.create_model)
    patch.setattr(models, "create_model", create_model)
    patch.setattr(runner, "create_model", create_model)
    patch.setattr(fit_cli, "check_preset", lambda name: None)
    patch.setattr(fit_cli, "check_model_config", lambda values, overrides: None)
    patch.setattr(fit_cli, "_describe", lambda options: "fit (fake preset)")


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake(monkeypatch)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pdd.data.synthetic import make_phantom_dataset

    return make_phantom_dataset(
        tmp_path_factory.mktemp("tiny"), n_train=12, n_test_normal=2, n_test_abnormal=2, size=32
    )


def _empty_or_absent(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


# --------------------------------------------------------------------------- option values


@pytest.mark.parametrize(
    ("extra", "status", "expected"),
    [
        (["--set", "train=5", "--epochs", "1"], 1, "error: config key 'train': must be a mapping, got 5"),
        (["--set", "sigma=.nan"], 1, "error: config key 'sigma': must be a finite number, got nan"),
        (["--set", "sigma=.inf"], 1, "error: config key 'sigma': must be a finite number, got inf"),
        (["--set", "teacher_options.vmamba_tiny_v0.dims=abc"], 1,
         "error: config key 'teacher_options.vmamba_tiny_v0.dims': must be an integer, got 'abc'"),
        (["--set", "teacher_options.vmamba_tiny_v0.depths=[1, x]"], 1,
         "error: config key 'teacher_options.vmamba_tiny_v0.depths[1]': must be an integer"),
        (["--set", "image_size=8192000"], 1, "error: config key 'image_size': must be at most 1024"),
        (["--image-size", "8192"], 1, "error: config key 'image_size': must be at most 1024"),
        (["--seed", "99999999999999999999"], 2,
         "error: pdd fit: argument --seed: a seed must be between 0 and 4294967295"),
        (["--seed=-5"], 2, "error: pdd fit: argument --seed: a seed must be between 0 and 4294967295"),
        (["--seeds=-1"], 1, "error: --seeds: a seed must be between 0 and 4294967295 (2**32 - 1), got -1"),
        (["--seeds", "0,4294967296"], 1, "error: --seeds: a seed must be between 0 and 4294967295"),
        (["--precision", "16-mixed", "--accelerator", "cpu"], 1,
         "error: --precision 16-mixed: float16 mixed precision needs a GPU"),
    ],
    ids=["train-number", "sigma-nan", "sigma-inf", "dims-text", "depths-text", "size-set",
         "size-option", "seed-huge", "seed-negative", "seeds-negative", "seeds-2**32", "fp16-cpu"],
)
def test_bad_values_fail_in_one_line_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], status: int, expected: str
) -> None:
    """Cases 1, 2, 9, 23: each used to be an internal error (TypeError, ValueError from numpy or the
    model), pass the pre-check and fail later (nan), allocate gigabytes (8192 px) or silently run
    bf16 while recording 16-mixed. Kills: removing the finite check in ``config._float``, the
    teacher option types, ``MAX_IMAGE_SIZE``, ``check_seed`` or ``check_hardware``."""
    out = tmp_path / "run"
    argv = ["fit", "--data", str(tmp_path), "--out", str(out), "--teachers", "random", *extra]
    assert main(argv) == status
    lines = _err_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert _empty_or_absent(out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_without_a_gpu_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case 3: Lightning's MisconfigurationException came after config.yaml and split.csv were
    written, and the corrected rerun was refused. Kills: removing the gpu test in ``check_hardware``."""
    out = tmp_path / "run"
    assert main(["fit", "--data", str(tmp_path), "--out", str(out), "--accelerator", "gpu"]) == 1
    assert _err_lines(capsys) == [
        (
            "error: --accelerator gpu: this process sees no GPU (torch.cuda.is_available() is "
            "False); use --accelerator cpu or auto"
        )
    ]
    assert _empty_or_absent(out)


def test_a_seed_out_of_range_in_a_config_file_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "fit.yaml"
    config.write_text("seeds: [0, -1]\n")
    assert main(["fit", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(config)]) == 1
    assert _err_lines(capsys) == [f"error: {config}: seeds: a seed must be between 0 and 4294967295 (2**32 - 1), got -1"]


# --------------------------------------------------------------------------- YAML duplicate keys


@pytest.mark.parametrize(
    ("text", "line", "key", "first"),
    [
        ("epochs: 1\nteachers: random\nepochs: 3\n", 3, "epochs", 1),
        ("model:\n  train:\n    lr: 0.1\n    lr: 0.2\n", 4, "lr", 3),
    ],
    ids=["top-level", "nested"],
)
def test_a_duplicate_key_in_a_config_file_is_named_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, line: int, key: str, first: int
) -> None:
    """Case 8: PyYAML keeps the last value without a word. Kills: removing the duplicate test in
    ``config._StrictLoader`` or reading --config with ``yaml.safe_load``."""
    config = tmp_path / "fit.yaml"
    config.write_text(text)
    assert main(["fit", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(config)]) == 1
    assert _err_lines(capsys) == [
        f"error: {config}: not valid YAML (line {line}: duplicate key '{key}' (first on line {first}))"
    ]


def test_every_user_yaml_reader_refuses_duplicate_keys(tmp_path: Path) -> None:
    """One loader for all: a saved config (``load_config_file``) and --set values too."""
    from pdd.cli.fit import parse_overrides
    from pdd.config import load_config_file
    from pdd.errors import ConfigError

    saved = tmp_path / "config.yaml"
    saved.write_text("preset: pdd\nsigma: 4\nsigma: 5\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: not valid YAML \(line 3: duplicate key 'sigma'"):
        load_config_file(saved)
    with pytest.raises(ConfigError, match=r"--set 'train=\{lr: 1, lr: 2\}': not valid YAML .*duplicate key 'lr'"):
        parse_overrides(["train={lr: 1, lr: 2}"])
    assert parse_overrides(["train={lr: 1, epochs: 2}"]) == {"train": {"lr": 1, "epochs": 2}}


# --------------------------------------------------------------------------- failed starts, locks


def test_a_fit_failing_before_training_does_not_block_its_rerun(
    fake_cli: None, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Case 3 in general, and case 10's stale lock: Lightning refusing the hardware after
    config.yaml and split.csv were written gives one line; the folder is emptied, so the corrected
    rerun into the same --out works, and takes over the lock file a killed run left behind.
    Kills: removing ``_clear`` in ``guarded_run`` (the rerun is refused: "holds a run")."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from pdd.training import runner
    from pdd.training.trainer import build_trainer

    out = tmp_path / "run"
    real_build = build_trainer

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise MisconfigurationException("No supported gpu backend found!")

    monkeypatch.setattr(runner, "build_trainer", refuse)
    argv = ["fit", "--data", str(tiny_data), "--out", str(out), *FAKE]
    assert main(argv) == 1
    assert _err_lines(capsys) == ["error: pdd fit: No supported gpu backend found!"]
    assert _empty_or_absent(out)

    monkeypatch.setattr(runner, "build_trainer", real_build)
    out.mkdir(exist_ok=True)
    (out / LOCK_NAME).write_text("999999999\n")  # left by a killed run: no process holds it
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "metrics.json").is_file() and (out / "model.ckpt").is_file()
    assert not (out / LOCK_NAME).exists()


def test_a_second_run_into_a_locked_folder_names_the_holder(
    fake_cli: None, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case 10: two fits into one --out both passed the empty-folder check. Here the folder is
    held (flock on a separate open file, exactly as another process holds it) and the second fit
    is refused with the holder's pid, writing nothing. Kills: not taking the lock in ``guarded_run``."""
    out = tmp_path / "run"
    with run_lock(out) as lock:
        assert lock.read_text() == f"{os.getpid()}\n"
        assert main(["fit", "--data", str(tiny_data), "--out", str(out), *FAKE]) == 1
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    assert _err_lines(capsys) == [
        (
            f"error: {out}: another pdd run (pid {os.getpid()}) is writing this folder; "
            "wait for it to finish or choose another --out"
        )
    ]
    assert not (out / LOCK_NAME).exists()


def test_two_processes_cannot_hold_one_folder(tmp_path: Path) -> None:
    """The lock across real processes: a child holding the folder blocks us until it exits."""
    out = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from pdd.runs.lock import run_lock
            with run_lock(Path({str(out)!r})):
                print("held", flush=True)
                sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        from pdd.errors import ConfigError

        with pytest.raises(ConfigError, match=rf"another pdd run \(pid {child.pid}\)"), run_lock(out):
            pass
    finally:
        child.communicate("\n", timeout=60)
    with run_lock(out):  # released when the holder is gone
        pass


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize(
    ("signum", "via_system_exit"),
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, True)],
    ids=["term", "int", "int-then-lightning-exit", "term-then-lightning-exit"],
)
def test_interruptible_turns_signals_into_exit_status(signum: int, via_system_exit: bool) -> None:
    """SIGINT -> 130, SIGTERM -> 143, also when a layer in between (Lightning: ``sys.exit(1)``
    after its graceful shutdown) turned the interrupt into something else. Handlers are restored.
    Kills: deciding by exception type instead of the recorded signal."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    advice = "continue with `pdd fit --resume R`"
    with pytest.raises(Interrupted) as stopped, interruptible("pdd fit", lambda: advice):
        try:
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises long before this ends
        except KeyboardInterrupt:
            if via_system_exit:
                sys.exit(1)
            raise
    name = signal.Signals(signum).name
    assert stopped.value.status == 128 + signum
    assert stopped.value.message == f"pdd fit stopped by {name}; continue with `pdd fit --resume R`"
    assert {s: signal.getsignal(s) for s in before} == before


def test_interrupted_before_training_empties_the_folder(
    fake_cli: None, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Case 11 (fit, nothing resumable yet): exit 130, one line naming the folder, and the folder
    holds nothing that blocks running the same command again."""
    from pdd.training import runner

    def stopped_early(options: Any) -> Path:
        (options.out / "config.yaml").write_text("options: {}\n")
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        raise AssertionError("not interrupted")

    out = tmp_path / "run"
    monkeypatch.setattr(runner, "fit", stopped_early)
    assert main(["fit", "--data", str(tiny_data), "--out", str(out), *FAKE]) == 130
    assert _err_lines(capsys) == [
        (
            f"error: pdd fit stopped by SIGINT; nothing that can be resumed had been saved, so "
            f"{out} was emptied; run the same command again"
        )
    ]
    assert _empty_or_absent(out)


def test_pdd_test_stopped_by_sigterm_leaves_nothing_that_looks_complete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Case 11 (test): 143 and a message naming the folder; partial scores are removed."""
    from pdd.training import runner

    def stopped(checkpoint: Path, data: Path, out: Path, **kwargs: Any) -> Path:
        (out / "scores.csv").write_text("path,label,score\n")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("not interrupted")

    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"PK")
    out = tmp_path / "tested"
    monkeypatch.setattr(runner, "test", stopped)
    assert main(["test", "--checkpoint", str(checkpoint), "--data", str(tmp_path), "--out", str(out)]) == 143
    lines = _err_lines(capsys)
    assert lines == [
        (
            f"error: pdd test stopped by SIGTERM; nothing that can be resumed had been saved, so "
            f"{out} was emptied; run the same command again"
        )
    ]
    assert _empty_or_absent(out)


_FIT_SCRIPT = """
import sys
sys.path.insert(0, {engine!r})
import engine_fakes
engine_fakes.install()
from pdd.cli import fit as fit_cli
fit_cli.check_preset = lambda name: None
fit_cli.check_model_config = lambda values, overrides: None
fit_cli._describe = lambda options: "fit (fake preset)"
from pdd.cli import main
sys.exit(main({argv!r}))
"""


@pytest.fixture(scope="module")
def reference_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    with pytest.MonkeyPatch.context() as patch:
        _install_fake(patch)
        assert main(["fit", "--data", str(tiny_data), "--out", str(out), *FAKE[:4],
                     "--epochs", "2", *FAKE[6:]]) == 0
    return out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_signal_mid_training_exits_nonzero_and_resume_gives_the_same_result(
    fake_cli: None, tiny_data: Path, tmp_path: Path, reference_run: Path, signum: int
) -> None:
    """Case 11, a real `pdd fit` process: SIGTERM used to exit 0 without a word (Lightning's
    SIGTERMException is a SystemExit), Ctrl-C exit 1. Now 143 / 130 with the folder and the resume
    command; no metrics.json; `pdd fit --resume` then ends with the uninterrupted run's metrics
    and scores. Kills: removing ``interruptible`` from ``guarded_run`` (exit 0 / 1, no message)."""
    out = tmp_path / "run"
    argv = ["fit", "--data", str(tiny_data), "--out", str(out), *FAKE[:4], "--epochs", "2",
            *FAKE[6:], "--checkpoint-every", "1"]
    script = tmp_path / "fit.py"
    script.write_text(_FIT_SCRIPT.format(engine=str(ENGINE_TESTS), argv=argv))
    process = subprocess.Popen(
        [sys.executable, str(script)], env=dict(os.environ, PDD_FAKE_STEP_SECONDS="0.3"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    state = out / "training_state.ckpt"
    deadline = time.monotonic() + 300
    try:
        while not state.is_file() or torch.load(state, weights_only=True)["global_step"] < 2:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "training never reached step 2"
            time.sleep(0.05)
        process.send_signal(signum)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum, err
    assert err.splitlines()[-1] == (
        f"error: pdd fit stopped by {name}; the run folder {out} is incomplete; "
        f"continue with `pdd fit --resume {out}`"
    )
    assert not (out / "metrics.json").exists() and state.is_file()
    assert not (out / LOCK_NAME).exists()

    assert main(["fit", "--resume", str(out), "--no-progress"]) == 0
    resumed = engine_fakes.without_timing(engine_fakes.read_metrics(out))
    assert resumed == engine_fakes.without_timing(engine_fakes.read_metrics(reference_run))
    assert (out / "scores.csv").read_text() == (reference_run / "scores.csv").read_text()
    assert not state.exists()


# --------------------------------------------------------------------------- extras


@pytest.mark.parametrize("command", [["weights", "list"], ["weights", "verify"], ["fit"]])
def test_a_cache_dir_that_is_a_file_is_named_as_the_cause(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    """PDD_CACHE_DIR pointing at a file was an internal NotADirectoryError (download) or a
    misleading "not cached". Kills: removing ``check_cache_dir``."""
    blocker = tmp_path / "cache.txt"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PDD_CACHE_DIR", str(blocker))
    out = tmp_path / "run"
    if command == ["fit"]:
        command = ["fit", "--data", str(tmp_path), "--out", str(out)]  # pretrained teachers
    assert main(command) == 1
    assert _err_lines(capsys) == [
        (
            f"error: {blocker}: is a file, so the weight cache {blocker / 'weights'} cannot be a "
            f"folder (from PDD_CACHE_DIR={blocker}; point it at a folder)"
        )
    ]
    assert _empty_or_absent(out)


def test_a_non_checkpoint_never_suggests_weights_only_false(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch's refusal advises retrying with weights_only=False, which runs the file's code: the
    message keeps the reason and drops the advice. Kills: quoting torch's first line again."""
    evil = tmp_path / "evil.ckpt"
    torch.save({"format": "pdd-model", "payload": Path("/etc/passwd")}, evil)
    out = tmp_path / "tested"
    assert main(["test", "--checkpoint", str(evil), "--data", str(tmp_path), "--out", str(out)]) == 1
    lines = _err_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: {evil}: not a safe PDD checkpoint: ")
    assert "weights_only" not in lines[0] and "Re-running" not in lines[0]
    assert "Unsupported global" in lines[0]
    assert _empty_or_absent(out)


def test_a_duplicate_key_in_a_benchmark_suite_is_named(tmp_path: Path) -> None:
    """Case 8 for `pdd benchmark` suite files, read by the same loader.
    Kills: reading suites with ``yaml.safe_load`` again."""
    from pdd.benchmark.suite import load_suite
    from pdd.errors import ConfigError

    suite = tmp_path / "grid.yaml"
    suite.write_text("presets: [pdd]\nseeds: [0]\nseeds: [1]\n")
    with pytest.raises(ConfigError) as error:
        load_suite(suite)
    assert str(error.value) == f"{suite}: not valid YAML (line 3: duplicate key 'seeds' (first on line 2))"


def test_a_file_name_that_is_not_utf8_survives_a_fit(
    fake_cli: None, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case 4 (fit): a POSIX file name with bytes that are not UTF-8 killed `pdd fit` while it
    wrote split.csv. Now split.csv and scores.csv hold the name's own bytes (surrogateescape, the
    documented spelling), and the report is built. Kills: ``errors="strict"`` in ``pdd.fileio``."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    odd = b"caf\xe9.png"  # Latin-1 e-acute: not valid UTF-8
    for part in ("train/good", "test/good"):
        first = min((data / part).iterdir())
        os.rename(first, os.path.join(os.fsencode(data / part), odd))
    out = tmp_path / "run"
    assert main(["fit", "--data", str(data), "--out", str(out), *FAKE]) == 0, capsys.readouterr().err
    assert b"good/" + odd in (out / "split.csv").read_bytes()
    assert b"good/" + odd in (out / "scores.csv").read_bytes()
    assert (out / "report.html").is_file()


def test_ddp_worker_processes_do_not_take_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning's DDP launcher re-runs `pdd fit` in each worker (LOCAL_RANK > 0): they must not
    contend for the folder's lock that rank 0 holds. Kills: locking in every process."""
    from pdd.cli.run_guard import guarded_run

    out = tmp_path / "run"
    with run_lock(out):
        monkeypatch.setenv("LOCAL_RANK", "1")
        with guarded_run(out, "pdd fit", resume_command=None):
            pass
        monkeypatch.setenv("LOCAL_RANK", "0")
        from pdd.errors import ConfigError

        with (
            pytest.raises(ConfigError, match="another pdd run"),
            guarded_run(out, "pdd fit", resume_command=None),
        ):
            pass


def test_a_full_disk_while_fitting_is_one_line_naming_the_file(
    fake_cli: None, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Case 6: torch's zip writer reported a full disk as ``RuntimeError: [enforce fail at
    inline_container.cc...]``, an internal error. Kills: removing the translation in
    ``fileio.atomic_torch_save``."""

    def disk_full(obj: object, handle: object, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter "
                           "failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", disk_full)
    out = tmp_path / "run"
    assert main(["fit", "--data", str(tiny_data), "--out", str(out), *FAKE]) == 1
    lines = _err_lines(capsys)
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {out / 'training_state.ckpt'}: cannot write: ")
    assert "No space left on device" in lines[0]
    assert _empty_or_absent(out)  # nothing resumable was saved: the rerun is not blocked


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--devices", "abc"], "error: --devices: expected a number or auto, got 'abc'"),
        (["--devices", "0"], "error: --devices: expected a number >= 1, got 0"),
        (["--precision", "16-mixed", "--accelerator", "cpu"],
         "error: --precision 16-mixed: float16 mixed precision needs a GPU"),
        (["--num-workers", "-1"], "error: --num-workers: expected a number >= 0, got -1"),
    ],
    ids=["devices-text", "devices-zero", "fp16-cpu", "workers-negative"],
)
def test_test_device_options_fail_in_one_line_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: str
) -> None:
    """`pdd test` takes fit's device options and checks them the same way, before it reads the
    checkpoint (a placeholder file here: reaching it would be a different error)."""
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not read")
    out = tmp_path / "tested"
    argv = ["test", "--checkpoint", str(checkpoint), "--data", str(tmp_path), "--out", str(out), *extra]
    assert main(argv) == 1
    lines = _err_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert _empty_or_absent(out)
