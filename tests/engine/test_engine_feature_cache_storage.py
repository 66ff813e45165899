"""Teacher-feature cache options: bfloat16 storage (half the bytes, widened back to float32 in the
same layout when served, never mixed with float32 entries), and ``auto`` when the disk store's
folder is unusable (memory when the features fit, with one warning; else an error naming it).

Real rd4ad at test size (random teachers, 32 px, CPU)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from engine_fakes import read_metrics

from pdd import create_model
from pdd.cli import build_parser
from pdd.cli.fit import resolve_fit_options
from pdd.errors import ConfigError
from pdd.training import feature_cache
from pdd.training.feature_cache import FeatureCache, read_entry, teacher_features
from pdd.training.runner import fit

SIZE, SEED = 32, 0
KEYS = ["a", "b"]
REAL_FEATURES_DIR = feature_cache.features_dir


@pytest.fixture(autouse=True)
def _fresh_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with an empty in-process store and its own disk folder."""
    feature_cache.clear_memory()
    monkeypatch.setattr(
        feature_cache, "features_dir", lambda root=None: tmp_path / "features"
    )


@pytest.fixture(scope="module")
def model() -> Any:
    L.seed_everything(SEED, verbose=False)
    return create_model("rd4ad", teachers="random", image_size=SIZE)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(
        len(KEYS), 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)
    )


def _bytes(features: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in features.values())


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_bfloat16_entries_round_trip_widened_to_float32_in_the_same_layout(
    mode: str, model: Any, images: torch.Tensor, tmp_path: Path
) -> None:
    exact = teacher_features(model, images, len(KEYS))
    cache = FeatureCache(mode, len(KEYS), batch_size=len(KEYS), dtype="bfloat16")
    computed = cache.features(model, images, KEYS)  # epoch 1: computed, then rounded
    served = cache.features(model, images, KEYS)  # epoch 2: from the store
    assert (cache.misses, cache.hits) == (2, 2)
    for name, value in exact.items():
        want = value.to(torch.bfloat16).to(torch.float32)
        assert not torch.equal(want, value)  # the rounding is real
        for got in (computed[name], served[name]):
            assert got.dtype == torch.float32 and got.stride() == value.stride(), name
            assert torch.equal(got, want), name
    # Stored as bfloat16: half the bytes of the float32 features.
    context = cache.context(model, images.device)
    for key in KEYS:
        entry = cache.store.get(cache.key(context, key))
        assert all(t.dtype == torch.bfloat16 for t, _, _ in entry.values())
        stored = sum(t.numel() * t.element_size() for t, _, _ in entry.values())
        assert stored * 2 == _bytes(exact) // len(KEYS)
    record = cache.record()
    assert record["dtype"] == "bfloat16" and "bfloat16" in cache.describe()
    if mode == "disk":
        files = sorted((tmp_path / "features").glob("*/*.pddf"))
        assert len(files) == 2
        assert all(read_entry(path, path.stem) for path in files)
        # A later fit (a new cache object) reads the files back to the same numbers.
        later = FeatureCache("disk", len(KEYS), batch_size=len(KEYS), dtype="bfloat16")
        again = later.features(model, images, KEYS)
        assert (later.misses, later.hits) == (0, 2)
        assert all(torch.equal(again[name], served[name]) for name in exact)


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_float32_and_bfloat16_entries_never_mix(
    mode: str, model: Any, images: torch.Tensor
) -> None:
    exact = teacher_features(model, images, len(KEYS))
    half = FeatureCache(mode, len(KEYS), batch_size=len(KEYS), dtype="bfloat16")
    full = FeatureCache(mode, len(KEYS), batch_size=len(KEYS))
    assert half.context(model, images.device) != full.context(model, images.device)
    half.features(model, images, KEYS)
    served = full.features(model, images, KEYS)  # the bfloat16 entries are not its own
    assert (full.misses, full.hits) == (2, 0)
    assert all(torch.equal(served[name], exact[name]) for name in exact)
    # Each kind then finds its own entries, the float32 ones exact.
    again = full.features(model, images, KEYS)
    assert (full.misses, full.hits) == (2, 2)
    assert all(torch.equal(again[name], exact[name]) for name in exact)
    other = FeatureCache(mode, len(KEYS), batch_size=len(KEYS), dtype="bfloat16")
    rounded = other.features(model, images, KEYS)
    assert (other.misses, other.hits) == (0, 2)
    assert not any(torch.equal(rounded[name], exact[name]) for name in exact)


def test_an_unknown_storage_dtype_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^feature_cache_dtype: expected float32 or bfloat16, got 'float16'$",
    ):
        FeatureCache("memory", 1, dtype="float16")


def test_feature_cache_dtype_from_the_command_line_and_a_config_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "data" / "train" / "good").mkdir(parents=True)
    base = ["fit", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "a")]

    def resolve(*argv: str) -> Any:
        return resolve_fit_options(build_parser().parse_args([*base, *argv]))

    assert resolve().feature_cache_dtype == "float32"
    assert (
        resolve("--feature-cache-dtype", "bfloat16").feature_cache_dtype == "bfloat16"
    )
    config = tmp_path / "fit.yaml"
    config.write_text("feature-cache-dtype: bfloat16\n")
    assert resolve("--config", str(config)).feature_cache_dtype == "bfloat16"
    config.write_text("feature_cache_dtype: half\n")
    with pytest.raises(
        ConfigError,
        match=r"fit\.yaml: feature_cache_dtype: must be one of float32, bfloat16, got 'half'$",
    ):
        resolve("--config", str(config))


def test_a_fit_with_bfloat16_storage_runs_and_says_so(
    real_options: Any, phantoms: Path, tmp_path: Path
) -> None:
    """Same fit with float32 and bfloat16 storage: both train from the cache after epoch 1; the
    bfloat16 one records its dtype and its losses differ a little (the targets are rounded)."""
    runs = {}
    for dtype in ("float32", "bfloat16"):
        feature_cache.clear_memory()
        options = real_options(
            "rd4ad", phantoms, tmp_path / dtype, epochs=2, batch_size=4,
            feature_cache="memory", feature_cache_dtype=dtype,
        )  # fmt: skip
        runs[dtype] = read_metrics(fit(options))
    full, half = runs["float32"], runs["bfloat16"]
    assert half["feature_cache"]["dtype"] == "bfloat16"
    assert full["feature_cache"]["dtype"] == "float32"
    for record in (full["feature_cache"], half["feature_cache"]):
        assert record["hits"] == record["misses"] > 0, record
    assert half["feature_cache"]["bytes"] * 2 == full["feature_cache"]["bytes"]
    for got, want in zip(half["train_history"], full["train_history"], strict=True):
        assert got["loss"] != want["loss"]
        assert math.isclose(got["loss"], want["loss"], rel_tol=0.05), (got, want)
    assert 0.0 <= half["image_auroc"] <= 1.0


# ------------------------------------------------------------------ auto, unusable folder


@pytest.fixture
def unusable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The disk store's folder under a regular file: it can never be created."""
    (tmp_path / "file").write_text("not a folder")
    folder = tmp_path / "file" / "cache" / "features"
    monkeypatch.setattr(feature_cache, "features_dir", lambda root=None: folder)
    return folder


def _per_image(model: Any, images: torch.Tensor) -> int:
    return _bytes(model.teacher_features(images[:1]))


def test_auto_keeps_features_in_memory_with_one_warning_when_the_folder_is_unusable(
    unusable_folder: Path, model: Any, images: torch.Tensor
) -> None:
    cache = FeatureCache("auto", 10, memory_bound=10 * _per_image(model, images))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            cache.features(model, images, KEYS)
    assert len(caught) == 1 and caught[0].category is RuntimeWarning
    assert str(unusable_folder) in str(caught[0].message)
    assert "fit in memory" in str(caught[0].message)
    assert cache.mode() == "memory" and (cache.misses, cache.hits) == (2, 2)


def test_auto_fails_naming_the_folder_when_the_features_do_not_fit_in_memory(
    unusable_folder: Path, model: Any, images: torch.Tensor
) -> None:
    cache = FeatureCache("auto", 11, memory_bound=10 * _per_image(model, images))
    with pytest.raises(ConfigError) as error:
        cache.features(model, images, KEYS)
    message = str(error.value)
    assert "\n" not in message and str(unusable_folder) in message
    assert "is a file" in message and "exceed the in-memory bound" in message


def test_auto_with_a_usable_folder_warns_nothing(
    model: Any, images: torch.Tensor
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache = FeatureCache("auto", 10, memory_bound=10 * _per_image(model, images))
        cache.features(model, images, KEYS)
    assert cache.mode() == "memory"


def test_a_fit_whose_features_fit_nowhere_stops_at_the_first_batch_naming_the_folder(
    real_options: Any, phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("PDD_CACHE_DIR", str(tmp_path / "file" / "cache"))
    monkeypatch.setattr(
        feature_cache, "features_dir", REAL_FEATURES_DIR
    )  # from PDD_CACHE_DIR
    monkeypatch.setattr(feature_cache, "memory_bound_bytes", lambda: 1)
    with pytest.raises(
        ConfigError,
        match=r"feature cache .*/file/cache/features: .*is a file.*PDD_CACHE_DIR",
    ) as error:
        fit(real_options("rd4ad", phantoms, tmp_path / "run", feature_cache="auto"))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run" / "model.ckpt").exists()


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_entries_made_with_packed_convolutions_are_not_served_without(
    mode: str, model: Any, images: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folding BatchNorm into packed convolutions rounds differently: ``PDD_PACKED_CONVS`` is in
    the key, so a fit with packing off recomputes what one with packing on stored."""
    packed = FeatureCache(mode, len(KEYS), batch_size=len(KEYS))
    packed_context = packed.context(model, images.device)
    packed.features(model, images, KEYS)
    monkeypatch.setenv("PDD_PACKED_CONVS", "0")
    plain = FeatureCache(mode, len(KEYS), batch_size=len(KEYS))
    assert plain.context(model, images.device) != packed_context
    plain.features(model, images, KEYS)
    assert (plain.misses, plain.hits) == (2, 0)


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_entries_made_by_another_teacher_arithmetic_are_not_served(
    mode: str, model: Any, images: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release whose teachers round differently (``teachers.ARITHMETIC_REVISION``) recomputes
    what an older one stored, on disk too, where the entries outlive the process."""
    from pdd import teachers

    older = FeatureCache(mode, len(KEYS), batch_size=len(KEYS))
    older_context = older.context(model, images.device)
    older.features(model, images, KEYS)
    monkeypatch.setattr(
        teachers, "ARITHMETIC_REVISION", teachers.ARITHMETIC_REVISION + 1
    )
    newer = FeatureCache(mode, len(KEYS), batch_size=len(KEYS))
    assert newer.context(model, images.device) != older_context
    newer.features(model, images, KEYS)
    assert (newer.misses, newer.hits) == (2, 0)
