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
    from pdd.engine import runner

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
