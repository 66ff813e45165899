"""`pdd` entry point: exit statuses, one-line errors, --debug, usage errors, option checks.

These tests build no model: every failure here must happen before training would start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pdd.cli.report as cli_report
from pdd.cli import main
from pdd.errors import DataError


def _stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_pdd_error_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["report", str(tmp_path / "no-such-run")])
    assert status == 1
    lines = _stderr_lines(capsys)
    assert len(lines) == 1
    assert lines[0].startswith("error: ") and "no-such-run" in lines[0]


def test_debug_reraises_with_traceback(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no-such-run"):
        main(["--debug", "report", str(tmp_path / "no-such-run")])
    # --debug is also accepted after the command name
    with pytest.raises(DataError):
        main(["report", str(tmp_path / "no-such-run"), "--debug"])


def test_internal_error_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: object) -> int:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli_report, "_run", broken)
    assert main(["report", str(tmp_path)]) == 1
    lines = _stderr_lines(capsys)
    assert lines == [
        "error: internal error: RuntimeError: boom second line (run with --debug for the traceback)"
    ]
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "report", str(tmp_path)])


def test_keyboard_interrupt_exits_130(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_report, "_run", interrupted)
    assert main(["report", str(tmp_path)]) == 130
    assert _stderr_lines(capsys) == ["error: interrupted"]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["no-such-command"],
        ["fit", "--epochs", "0"],
        ["fit", "--seed", "1", "--seeds", "1,2"],
        ["fit", "--teachers", "imagenet"],
        ["predict", "--checkpoint", "x.ckpt", "--out", "o"],  # no INPUT
        ["export", "--checkpoint", "x.ckpt", "--format", "tflite", "--out", "m"],
    ],
)
def test_usage_errors_exit_2_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    lines = _stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: pdd"), lines


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("demo", "fit", "test", "predict", "export", "report", "weights", "presets"):
        assert command in text


def test_predict_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    status = main(["predict", "--checkpoint", str(tmp_path / "m.ckpt"), str(image), "--out", str(tmp_path / "o")])
    assert status == 1
    assert _stderr_lines(capsys) == [f"error: {tmp_path / 'm.ckpt'}: checkpoint does not exist"]


def test_predict_bad_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        ["predict", "--checkpoint", "m.ckpt", "x.dcm", "--out", str(tmp_path), "--window", "40"]
    )
    assert status == 1
    assert "--window" in _stderr_lines(capsys)[0]


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    """The installed `pdd` script, as a user runs it: one line without --debug, traceback with it."""
    script = Path(sys.executable).with_name("pdd")
    command = [str(script), "report", str(tmp_path / "missing")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    plain = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 1
    assert plain.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: run folder does not exist"]
    debug = subprocess.run(command + ["--debug"], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "DataError" in debug.stderr



def test_presets_lists_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    from pdd.config import list_presets

    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_presets()
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)  # every preset has a description


# --------------------------------------------------------------------------- no torch for help

# Runs `pdd ARGS` in a fresh interpreter where importing torch or lightning fails and is recorded:
# a command that does not run a model must answer without them (they take seconds to import).
_WITHOUT_TORCH = """
import importlib.abc, json, sys

HEAVY = ("torch", "lightning", "pytorch_lightning", "torchvision")
tried = []

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            tried.append(name)
            raise ImportError(f"{name} is blocked by the test")
        return None

sys.meta_path.insert(0, Refuse())
from pdd.cli import main
status = main(json.loads(sys.argv[1]))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print("RESULT", json.dumps({"status": status, "tried": tried, "loaded": loaded}), file=sys.stderr)
"""


def _command_lines() -> list[list[str]]:
    """``--help`` of every command and sub-command the parser knows, found by walking it, so a
    command registered later is checked too."""
    import argparse

    from pdd.cli import build_parser

    lines: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    lines.append([*prefix, name, "--help"])
                    walk(child, [*prefix, name])

    walk(build_parser(), [])
    return lines


def _run_without_torch(argv: list[str]) -> tuple[dict[str, object], str]:
    import json

    done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, json.dumps(argv)], check=False,
                          capture_output=True, text=True, timeout=120)
    results = [line for line in done.stderr.splitlines() if line.startswith("RESULT ")]
    assert results, f"pdd {' '.join(argv)} crashed:\n{done.stderr[-3000:]}"
    return json.loads(results[-1].removeprefix("RESULT ")), done.stdout


def test_the_command_table_covers_every_command() -> None:
    commands = {line[0] for line in _command_lines()}
    assert {"demo", "fit", "test", "predict", "export", "report", "presets", "weights"} <= commands


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["presets"], *_command_lines()],
                         ids=" ".join)
def test_commands_that_run_no_model_do_not_import_torch(argv: list[str]) -> None:
    """Kills: a command module (or what its ``register`` reads, such as ``pdd.export``'s opset
    constants) importing torch or lightning at import time."""
    result, out = _run_without_torch(argv)
    assert result == {"status": 0, "tried": [], "loaded": []}
    assert out.strip()


def test_presets_without_torch_lists_the_presets() -> None:
    from pdd.config import list_presets

    _, out = _run_without_torch(["presets"])
    assert [line.split()[0] for line in out.splitlines()] == list_presets()
