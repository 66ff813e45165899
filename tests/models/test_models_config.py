"""Presets, overrides and validation (pdd.config)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pdd.config import config_to_yaml, list_presets, load_config_file, resolve_config
from pdd.errors import ConfigError

REQUIRED = {
    "pdd",
    "pdd-reference",
    "rd4ad",
    "pdd-one-teacher",
    "pdd-no-ina",
    "pdd-no-mpa",
    "pdd-one-student",
    "pdd-one-student-no-mpa",
    "pdd-no-div",
}


def test_required_presets_ship_and_validate() -> None:
    assert REQUIRED <= set(list_presets())
    for name in list_presets():
        config = resolve_config(name)
        assert config["preset"] == name
        json.dumps(config)  # plain data only


def test_pdd_is_the_paper_reading() -> None:
    config = resolve_config("pdd")
    assert (config["students"], config["cos_term"], config["num_students"]) == (
        "separate",
        "one_minus",
        2,
    )
    assert (
        config["dual_teacher"]
        and config["ina"]
        and config["mpa"]
        and config["diversity"]
    )
    assert config["loss"] == {
        "a": 0.02,
        "b": 0.05,
        "w": 0.5,
        "tau_low": 0.75,
        "tau_high": 0.3,
    }
    train = config["train"]
    assert (
        train["lr"] == 2e-3
        and train["betas"] == [0.5, 0.999]
        and train["batch_size"] == 10
    )
    assert train["scheduler"] == {"name": "cosine", "t_max": 40, "eta_min_ratio": 0.1}


def test_reference_and_rd4ad_training_settings() -> None:
    reference = resolve_config("pdd-reference")
    assert (reference["students"], reference["cos_term"]) == ("shared", "plus")
    assert reference["train"]["epochs"] == 100 and reference["train"]["lr"] == 2e-3
    rd4ad = resolve_config("rd4ad")
    assert rd4ad["family"] == "rd4ad"
    assert rd4ad["train"]["lr"] == 5e-3 and rd4ad["train"]["epochs"] == 200
    assert rd4ad["train"]["batch_size"] == 16 and rd4ad["train"]["betas"] == [
        0.5,
        0.999,
    ]
    assert rd4ad["train"]["scheduler"] == {"name": "none"}


def test_ablations_change_one_thing_each() -> None:
    base = resolve_config("pdd")
    changed = {
        "pdd-one-teacher": {"dual_teacher": False, "ina": False},
        "pdd-no-ina": {"ina": False},
        "pdd-no-mpa": {"mpa": False},
        "pdd-one-student": {"num_students": 1, "diversity": False},
        "pdd-one-student-no-mpa": {"num_students": 1, "diversity": False, "mpa": False},
        "pdd-no-div": {"diversity": False},
    }
    for name, expected in changed.items():
        config = resolve_config(name)
        diff = {
            k: v
            for k, v in config.items()
            if k not in ("preset", "description") and v != base[k]
        }
        assert diff == expected, name


def test_nested_and_dotted_overrides_merge() -> None:
    config = resolve_config(
        "pdd", {"train": {"lr": 1e-3}, "loss.w": 0.25, "image_size": 128}
    )
    assert config["train"]["lr"] == 1e-3 and config["train"]["epochs"] == 100
    assert config["loss"]["w"] == 0.25 and config["loss"]["a"] == 0.02
    assert config["image_size"] == 128


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"foo": 1}, "unknown config key 'foo'"),
        ({"train": {"momentum": 0.9}}, "unknown config key 'train.momentum'"),
        ({"bottleneck_blocks": 3}, "unknown config key 'bottleneck_blocks'"),
        ({"image_size": 100}, "'image_size': must be a multiple of 32"),
        ({"train.lr": "2e-3"}, "'train.lr': must be a number"),
        ({"train.betas": [0.5, 1.0]}, "'train.betas'"),
        ({"students": "both"}, "'students': must be one of separate, shared"),
        ({"ina": 1}, "'ina': must be true or false"),
        ({"dual_teacher": False}, "'ina'"),
        ({"num_students": 1}, "'diversity'"),
        ({"mpa": False, "students": "shared"}, "'students'"),
        ({"teacher_weights": {"resnet18": "x.pth"}}, "'teacher_weights.resnet18'"),
        ({"family": "rd4ad"}, "'family'"),
    ],
)
def test_bad_overrides_name_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")
    ):
        resolve_config("pdd", overrides)


def test_unknown_preset_lists_known() -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'pdd-xl' \(known: .*rd4ad"):
        resolve_config("pdd-xl")


def test_constant_rate_drops_schedule_parameters() -> None:
    config = resolve_config("pdd", {"train.scheduler.name": "none"})
    assert config["train"]["scheduler"] == {"name": "none"}
    with pytest.raises(ConfigError, match="t_max"):
        resolve_config("rd4ad", {"train.scheduler.name": "cosine"})


def test_yaml_round_trip(tmp_path: Path) -> None:
    config = resolve_config(
        "pdd-reference",
        {"teachers": "random", "teacher_weights": {"wide_resnet50_2": "/w.pth"}},
    )
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(config))
    assert load_config_file(path) == config
    path.write_text(config_to_yaml({**config, "sigma": -1}))
    with pytest.raises(ConfigError, match=f"{path}: config key 'sigma'"):
        load_config_file(path)
