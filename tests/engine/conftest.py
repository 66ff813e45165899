"""Engine test fixtures: the tiny ``fake`` model preset and small synthetic phantom datasets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ENGINE_TESTS = Path(__file__).resolve().parent
sys.path.insert(
    0, str(ENGINE_TESTS)
)  # engine_fakes, also imported by the subprocess scripts

import engine_fakes


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """``create_model("fake", ...)`` builds ``engine_fakes.FakeModel`` for this test."""
    from pdd import models
    from pdd.training import runner

    create_model = engine_fakes.fake_router(models.create_model)
    monkeypatch.setattr(models, "create_model", create_model)
    monkeypatch.setattr(runner, "create_model", create_model)


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small folder-layout phantom set with lesion masks: 16 train, 6 + 6 test images, 64 px."""
    from pdd.data.synthetic import make_phantom_dataset

    return make_phantom_dataset(
        tmp_path_factory.mktemp("phantoms"),
        n_train=16,
        n_test_normal=6,
        n_test_abnormal=6,
        size=64,
    )


@pytest.fixture(scope="session")
def phantom_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-class folder-layout phantom set (classes ``a`` and ``b``)."""
    from pdd.data.synthetic import make_phantom_dataset

    return make_phantom_dataset(
        tmp_path_factory.mktemp("phantom_classes"),
        n_train=12,
        n_test_normal=4,
        n_test_abnormal=4,
        size=64,
        classes=["a", "b"],
    )


SMALL_VMAMBA = engine_fakes.SMALL_VMAMBA


@pytest.fixture(scope="session")
def real_options():
    """``real_options(preset, data, out, **changes)``: FitOptions of a REAL preset at test size
    (random teachers, small VMamba, 32 px, 1 epoch, batch 8, CPU, quiet)."""
    from pdd.training.options import FitOptions

    def build(preset: str, data: Path, out: Path, **changes: object) -> FitOptions:
        values: dict[str, object] = {
            "data": data,
            "out": out,
            "preset": preset,
            "teachers": "random",
            "image_size": 32,
            "epochs": 1,
            "batch_size": 8,
            "accelerator": "cpu",
            "progress": False,
            "model_overrides": {"teacher_options": {"vmamba_tiny_v0": dict(SMALL_VMAMBA)}},
        }
        values.update(changes)
        return FitOptions(**values)  # type: ignore[arg-type]

    return build


@pytest.fixture(scope="session")
def headct_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HeadCT-layout phantom set (no official split: the seed draws the normal test images)."""
    from pdd.data.synthetic import make_phantom_dataset

    return make_phantom_dataset(
        tmp_path_factory.mktemp("headct_phantoms"),
        "headct",
        n_train=14,
        n_test_normal=4,
        n_test_abnormal=4,
        size=64,
    )
