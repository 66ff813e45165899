"""Every architecture size is bounded and every number finite before any model is built
(issue 20, cases 7 and 8): a typo such as ``decoder_blocks: [100000, 1, 1]`` or ``sigma: 1.0e+300``
is a one-line ConfigError naming the key, not an OverflowError or a machine out of memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pdd.cli import main
from pdd.config import resolve_config
from pdd.errors import ConfigError

VMAMBA = "teacher_options.vmamba_tiny_v0"


def _no_building(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any model construction fail loudly: the check must come first."""
    from pdd.models import base

    def build_teachers(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was built before the config was checked")

    monkeypatch.setattr(base, "build_teachers", build_teachers)


@pytest.mark.parametrize(
    ("preset", "overrides", "message"),
    [
        ("pdd", {"sigma": 1.0e300}, r"config key 'sigma': must be <= 256\.0, got 1e\+300"),
        ("pdd", {"decoder_blocks": [100000, 1, 1]}, r"'decoder_blocks\[0\]': must be <= 16, got 100000"),
        ("rd4ad", {"bottleneck_blocks": 100000}, r"'bottleneck_blocks': must be <= 16"),
        ("pdd", {f"{VMAMBA}.dims": 100000}, rf"'{VMAMBA}\.dims': must be <= 4096"),
        ("pdd", {f"{VMAMBA}.dims": [512, 1024, 2048, 8192]}, rf"'{VMAMBA}\.dims\[3\]': must be <= 4096"),
        ("pdd", {f"{VMAMBA}.dims": 1024}, rf"'{VMAMBA}\.dims': 1024 doubled over 4 stages is 8192"),
        ("pdd", {f"{VMAMBA}.depths": [2, 2, 100000, 2]}, rf"'{VMAMBA}\.depths\[2\]': must be <= 32"),
        ("pdd", {f"{VMAMBA}.depths": [1] * 100}, rf"'{VMAMBA}\.depths': must have at most 8"),
        ("pdd", {f"{VMAMBA}.ssm_d_state": 10**6}, rf"'{VMAMBA}\.ssm_d_state': must be <= 256"),
        ("pdd", {f"{VMAMBA}.ssm_ratio": 1.0e6}, rf"'{VMAMBA}\.ssm_ratio': must be <= 16\.0"),
        ("pdd", {f"{VMAMBA}.ssm_dt_rank": 10**7}, rf"'{VMAMBA}\.ssm_dt_rank': must be <= 4096"),
        ("pdd", {f"{VMAMBA}.ssm_conv": 10**5 + 1}, rf"'{VMAMBA}\.ssm_conv': must be <= 31"),
        ("pdd", {f"{VMAMBA}.patch_size": 10**5}, rf"'{VMAMBA}\.patch_size': must be <= 32"),
        ("pdd", {f"{VMAMBA}.in_chans": 10**5}, rf"'{VMAMBA}\.in_chans': must be <= 16"),
        ("pdd", {f"{VMAMBA}.mlp_ratio": 1.0e9}, rf"'{VMAMBA}\.mlp_ratio': must be <= 16\.0"),
        ("pdd", {"teacher_seed": 2**70}, r"'teacher_seed': must be <= 4294967295"),
    ],
)  # fmt: skip
def test_sizes_and_numbers_are_bounded_before_building(
    monkeypatch: pytest.MonkeyPatch, preset: str, overrides: dict[str, Any], message: str
) -> None:
    """Kills: removing any one bound in ``config.schema`` (the old schema had none of them)."""
    _no_building(monkeypatch)
    from pdd.models import create_model

    with pytest.raises(ConfigError, match=message) as caught:
        create_model(preset, teachers="random", **overrides)
    assert "\n" not in str(caught.value)


def test_bounds_are_generous_for_real_architectures() -> None:
    """VMamba-Base's layout (dims 128, depths 2-2-27-2) and RD4AD's deepest decoder stay valid."""
    config = resolve_config(
        "pdd", {VMAMBA: {"dims": 128, "depths": [2, 2, 27, 2], "ssm_d_state": 16}, "sigma": 256.0}
    )
    assert config["teacher_options"]["vmamba_tiny_v0"]["depths"] == [2, 2, 27, 2]
    assert resolve_config("rd4ad", {"decoder_blocks": [16, 16, 16]})["decoder_blocks"] == [16, 16, 16]


def test_yaml_exponent_hint_asks_for_a_dot_and_a_sign(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case 7: YAML 1.1 reads ``1e300`` and ``1.0e300`` as text; the hint must name both the dot
    and the sign. ``1.0e+300`` itself is a number and now fails on the bound, not in the model."""
    out = tmp_path / "run"
    base = ["fit", "--data", str(tmp_path), "--out", str(out), "--teachers", "random"]
    assert main([*base, "--set", "sigma=1.0e300"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config key 'sigma': must be a number"), lines
    assert "with a dot and a sign" in lines[0] and "1.0e+3" in lines[0]
    assert main([*base, "--set", "sigma=1.0e+300"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: config key 'sigma': must be <= 256.0, got 1e+300"
    ]
    assert not out.exists() or not any(out.iterdir())


def test_sizes_that_multiply_past_the_parameter_budget_fail_before_building(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each key within its bound, together ~18 billion parameters (68 GB): the meta-device count
    refuses it before any real tensor is allocated or anything is written.
    Kills: dropping ``check_parameter_budget`` from ``pdd fit``."""
    from pdd.models import base

    real_build = base.build_teachers

    def build_teachers(config: Any, names: Any) -> Any:
        if torch.nn.Linear(1, 1).weight.device.type != "meta":
            raise AssertionError("a real model was built before its size was checked")
        return real_build(config, names)

    monkeypatch.setattr(base, "build_teachers", build_teachers)
    huge = "{dims: [512, 1024, 2048, 4096], depths: [32, 32, 32, 32], ssm_ratio: 16.0}"
    out = tmp_path / "run"
    argv = ["fit", "--data", str(tmp_path), "--out", str(out), "--teachers", "random",
            "--set", f"teacher_options.vmamba_tiny_v0={huge}"]  # fmt: skip
    assert main(argv) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model 'pdd' would have "), lines
    assert "billion parameters" in lines[0]
    assert not out.exists()
