"""A tiny stand-in for ``AnomalyModel`` (preset ``fake``) so engine tests run in seconds.

It keeps the whole contract (config, loss terms, maps and scores, trainable state without the
teachers, teacher identity and its check) with a frozen random conv "teacher" and a small conv
student. ``install()`` makes ``create_model("fake", ...)`` build it; everything else still goes to the
real registry. Subprocess scripts import this file and call ``install()`` themselves (DDP children
re-run the script, so they get it too). ``PDD_FAKE_STEP_SECONDS`` slows each training step down so a
test can kill a run mid-epoch.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pdd.errors import CheckpointError

SMALL_VMAMBA: dict[str, Any] = {"dims": 8, "depths": [1, 1, 1, 1], "ssm_d_state": 4}
"""A VMamba-Tiny with the real wiring but few channels and blocks: real presets, CPU-test cheap."""

DEFAULT_CONFIG: dict[str, Any] = {
    "preset": "fake",
    "family": "fake",
    "image_size": 32,
    "teachers": "random",
    "teacher_seed": 0,
    "norm": "batch",  # batch | none (none: DDP equals one process exactly, up to rounding)
    "train": {
        "optimizer": "adam",
        "lr": 1.0e-2,
        "betas": [0.5, 0.999],
        "weight_decay": 0.0,
        "epochs": 2,
        "batch_size": 4,
        "scheduler": {"name": "cosine", "t_max": 2, "eta_min_ratio": 0.1},
    },
}


def _merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


class FakeModel(nn.Module):
    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        teacher = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        generator = torch.Generator().manual_seed(int(config["teacher_seed"]))
        with torch.no_grad():
            for parameter in teacher.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
                parameter.requires_grad_(False)
        self.teachers = nn.ModuleDict({"fake": teacher})
        norm: nn.Module = (
            nn.BatchNorm2d(16) if config["norm"] == "batch" else nn.Identity()
        )
        self.student = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            norm,
            nn.ReLU(),
            nn.Conv2d(16, 8, 1),
        )

    def train(self, mode: bool = True) -> FakeModel:
        super().train(mode)
        self.teachers.eval()
        return self

    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            target = self.teachers["fake"](images)
        return self.student(images), target

    def loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        delay = float(os.environ.get("PDD_FAKE_STEP_SECONDS", "0"))
        if delay:
            time.sleep(delay)
        student, target = self._features(images)
        mse = F.mse_loss(student, target)
        cos = (1 - F.cosine_similarity(student.flatten(1), target.flatten(1))).mean()
        return {"loss": mse + 0.1 * cos, "mse": mse, "cos": cos}

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        student, target = self._features(images)
        maps = 1 - F.cosine_similarity(student, target, dim=1)
        maps = F.interpolate(
            maps[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False
        )[:, 0]
        return maps, maps.amax(dim=(1, 2))

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {
            k: v for k, v in self.state_dict().items() if not k.startswith("teachers.")
        }

    def load_trainable_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        own = self.trainable_state_dict()
        if set(own) != set(state_dict) or any(
            own[k].shape != state_dict[k].shape for k in own
        ):
            raise CheckpointError("trainable weights do not fit this fake model")
        self.load_state_dict(dict(state_dict), strict=False)

    def teacher_identity(self) -> dict[str, dict[str, Any]]:
        weight = self.teachers["fake"].weight
        return {
            "fake": {
                "weights": "random",
                "seed": self.config["teacher_seed"],
                "fingerprint": [float(weight.double().sum())],
            }
        }

    def check_teacher_identity(self, expected: Mapping[str, Any]) -> None:
        if dict(expected) != self.teacher_identity():
            raise CheckpointError("teacher fake differs from the checkpoint's")


def create_fake(**overrides: Any) -> FakeModel:
    overrides.pop("preset", None)
    return FakeModel(_merge(DEFAULT_CONFIG, overrides))


def fake_router(real: Any) -> Any:
    """A ``create_model`` that builds ``FakeModel`` for preset ``fake`` and defers to ``real``."""

    def create_model(preset: str, **overrides: Any) -> nn.Module:
        return create_fake(**overrides) if preset == "fake" else real(preset, **overrides)

    create_model.is_fake_router = True  # type: ignore[attr-defined]
    return create_model


def install() -> None:
    """Route ``create_model("fake", ...)`` to ``FakeModel`` in the runner and checkpoint loader."""
    from pdd import models
    from pdd.training import runner

    if getattr(models.create_model, "is_fake_router", False):
        return
    create_model = fake_router(models.create_model)
    models.create_model = create_model  # type: ignore[assignment]
    runner.create_model = create_model  # type: ignore[assignment]


def logged_cli_script(folder: Path) -> Path:
    """A ``pdd`` command line with the fake preset whose forward logs ``<pid> <batch size>`` per
    call to ``$PDD_TEST_FORWARD_LOG`` (after sleeping ``$PDD_TEST_FORWARD_SECONDS``): the log
    proves which process scored how many images. DDP children re-run this script, so they log too.
    """
    script = folder / "pdd_logged.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        import engine_fakes
        engine_fakes.install()
        original = engine_fakes.FakeModel.forward
        def forward(self, images):
            time.sleep(float(os.environ.get("PDD_TEST_FORWARD_SECONDS", "0")))
            out = original(self, images)
            with open(os.environ["PDD_TEST_FORWARD_LOG"], "a") as handle:
                handle.write(f"{{os.getpid()}} {{images.shape[0]}}\\n")
            return out
        engine_fakes.FakeModel.forward = forward
        from pdd.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    )
    return script


def forward_log(path: Path) -> list[tuple[int, int]]:
    """``(pid, batch size)`` per forward call logged by ``logged_cli_script``."""
    if not path.is_file():
        return []
    return [(int(pid), int(size)) for pid, size in (line.split() for line in path.read_text().splitlines())]


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))


def read_scores(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "scores.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def without_timing(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics minus wall-clock times and the teacher-feature cache's hit counts (the only values
    two identical runs may differ in: they depend on what ran before in the process)."""
    result = {k: v for k, v in metrics.items() if k not in ("timing", "feature_cache")}
    if "runs" in result:
        result["runs"] = {
            name: without_timing(run) for name, run in result["runs"].items()
        }
    return result
