"""Teacher-feature cache: training with cached teacher features is exactly training without, and a
disk entry that is truncated, corrupt or another image's is detected and recomputed, never used.

Real presets at test size (random teachers, small VMamba, 32 px, batch 4, 3 epochs, CPU), trained
through the same Lightning path as ``pdd fit`` (``AnomalyModule`` + ``build_trainer`` + ``TrainData``).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from engine_fakes import SMALL_VMAMBA, read_metrics, read_scores

from pdd import create_model
from pdd.data import ImageDataset, load_dataset
from pdd.training import feature_cache
from pdd.training.feature_cache import DiskStore, FeatureCache, read_entry, split_batch
from pdd.training.module import AnomalyModule
from pdd.training.options import FitOptions
from pdd.training.runner import fit
from pdd.training.trainer import TrainData, build_trainer

SIZE, EPOCHS, BATCH, SEED = 32, 3, 4, 0
RTOL = 1e-6


@pytest.fixture(autouse=True)
def _fresh_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with an empty in-process store and its own disk folder."""
    feature_cache.clear_memory()
    monkeypatch.setattr(
        feature_cache, "features_dir", lambda root=None: tmp_path / "features"
    )


def _model(preset: str, **changes: Any) -> Any:
    L.seed_everything(SEED, verbose=False)
    return create_model(
        preset,
        teachers="random",
        image_size=SIZE,
        teacher_options={"vmamba_tiny_v0": dict(SMALL_VMAMBA)},
        train={"epochs": EPOCHS, "batch_size": BATCH},
        **changes,
    )


def _train(
    preset: str, data: Path, out: Path, cache: FeatureCache | None, **changes: Any
) -> tuple[list[dict[str, float]], torch.Tensor]:
    """Train like ``pdd fit`` does; returns the loss history and the trained model's test scores."""
    model = _model(preset, **changes)
    split = load_dataset(data, seed=SEED, holdout_fraction=0.0)
    # 11 images: a short last batch, so images meet other batch sizes from epoch to epoch.
    train = split.train[: 3 * BATCH - 1]
    module = AnomalyModule(model, cache)
    options = FitOptions(data=data, out=out, accelerator="cpu", progress=False)
    trainer = build_trainer(options, out / "training_state.ckpt", EPOCHS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(
            module,
            datamodule=TrainData(
                train, SIZE, BATCH, SEED, 0, pixel_keys=cache is not None
            ),
        )
    model.eval()
    images = torch.stack(
        [ImageDataset(split.test[:4], SIZE)[i]["image"] for i in range(4)]
    )
    with torch.no_grad():
        _, scores = model(images)
    return module.history, scores


def _assert_same(cached: Any, reference: Any) -> None:
    (history, scores), (ref_history, ref_scores) = cached, reference
    assert len(history) == len(ref_history) == EPOCHS
    for got, want in zip(history, ref_history):
        assert got.keys() == want.keys()
        for name in want:
            assert math.isclose(got[name], want[name], rel_tol=RTOL, abs_tol=0), (
                name,
                got,
                want,
            )
    torch.testing.assert_close(scores, ref_scores, rtol=RTOL, atol=0)


@pytest.mark.parametrize(
    ("preset", "changes"),
    [
        ("pdd", {}),
        ("pdd-reference", {}),
        ("rd4ad", {}),
        ("pdd", {"ina": False}),  # only z4 of VMamba is read and stored
    ],
)
def test_cached_training_equals_uncached(
    preset: str, changes: dict[str, Any], phantoms: Path, tmp_path: Path, release_memory: Any
) -> None:
    reference = _train(preset, phantoms, tmp_path / "off", None, **changes)
    release_memory()  # the two trainings' peaks do not add
    memory = FeatureCache("memory", 11, batch_size=BATCH)
    cached = _train(preset, phantoms, tmp_path / "memory", memory, **changes)
    _assert_same(cached, reference)
    # Epoch 1 computes every image once, epochs 2 and 3 are served from the cache.
    assert (memory.misses, memory.hits) == (11, 22)


def test_disk_cached_training_equals_uncached_and_serves_the_next_fit(
    phantoms: Path, tmp_path: Path, release_memory: Any
) -> None:
    reference = _train("rd4ad", phantoms, tmp_path / "off", None)
    release_memory()  # the trainings' peaks do not add
    disk = FeatureCache("disk", 11, batch_size=BATCH)
    _assert_same(_train("rd4ad", phantoms, tmp_path / "disk", disk), reference)
    release_memory()
    assert (disk.misses, disk.hits) == (11, 22)
    # A second fit over the same images and teachers finds everything on disk.
    again = FeatureCache("disk", 11, batch_size=BATCH)
    _assert_same(_train("rd4ad", phantoms, tmp_path / "again", again), reference)
    assert (again.misses, again.hits) == (0, 33)


def test_only_the_levels_the_model_reads_are_stored(tmp_path: Path) -> None:
    images = torch.randn(2, 3, SIZE, SIZE)
    for preset, changes, names in [
        ("rd4ad", {}, ["wide_resnet50_2.1", "wide_resnet50_2.2", "wide_resnet50_2.3"]),
        (
            "pdd",
            {"ina": False},
            [f"wide_resnet50_2.{i}" for i in (1, 2, 3, 4)] + ["vmamba_tiny_v0.4"],
        ),
    ]:
        model = _model(preset, **changes)
        cache = FeatureCache("memory", 2)
        cache.features(model, images, ["a", "b"])
        (entry,) = [
            cache.store.get(cache.key(cache.context(model, images.device), "a"))
        ]
        assert sorted(entry) == sorted(names), preset


def test_features_are_keyed_by_the_teachers(phantoms: Path) -> None:
    """Other teachers (another random seed) never get this model's features."""
    images = torch.randn(2, 3, SIZE, SIZE)
    cache = FeatureCache("memory", 2)
    first, other = _model("rd4ad"), _model("rd4ad", teacher_seed=1)
    cache.features(first, images, ["a", "b"])
    assert cache.context(first, images.device) != cache.context(other, images.device)
    served = cache.features(other, images, ["a", "b"])
    assert (cache.hits, cache.misses) == (0, 4)
    for name, value in other.teacher_features(images).items():
        assert torch.equal(served[name], value)


def _disk_entries(tmp_path: Path) -> tuple[DiskStore, list[str], list[Any]]:
    """A disk store holding two images' entries (different features)."""
    model = _model("rd4ad")
    store = DiskStore(tmp_path / "store", limit=1 << 30)
    entries = split_batch(model.teacher_features(torch.randn(2, 3, SIZE, SIZE)))
    keys = ["a" * 64, "b" * 64]
    for key, entry in zip(keys, entries):
        store.put(key, entry)
    return store, keys, entries


def _same_entry(got: Any, want: Any) -> bool:
    return got.keys() == want.keys() and all(
        torch.equal(got[n][0], want[n][0]) and got[n][1] == want[n][1] for n in want
    )


def test_a_sound_disk_entry_reads_back_exactly(tmp_path: Path) -> None:
    store, keys, entries = _disk_entries(tmp_path)
    for key, entry in zip(keys, entries):
        assert _same_entry(store.get(key), entry)
    assert store.rejected == 0


@pytest.mark.parametrize(
    "damage", ["flip_payload_byte", "truncate", "swap", "header_garbage"]
)
def test_a_damaged_disk_entry_is_rejected_and_deleted(
    tmp_path: Path, damage: str
) -> None:
    store, keys, _ = _disk_entries(tmp_path)
    path, other = store.path(keys[0]), store.path(keys[1])
    data = bytearray(path.read_bytes())
    if damage == "flip_payload_byte":
        data[-5] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) - 100]))
    elif damage == "swap":
        path.write_bytes(other.read_bytes())
    else:
        data[20:30] = b"@" * 10  # inside the JSON header
        path.write_bytes(bytes(data))
    assert store.get(keys[0]) is None
    assert store.rejected == 1
    assert not path.exists()
    with pytest.raises(FileNotFoundError):
        read_entry(path, keys[0])


def test_damaged_disk_entries_are_recomputed_in_training(
    phantoms: Path, tmp_path: Path
) -> None:
    """Every entry of a filled disk cache corrupted: the next fit recomputes, and equals no cache."""
    reference = _train("rd4ad", phantoms, tmp_path / "off", None)
    _train(
        "rd4ad", phantoms, tmp_path / "fill", FeatureCache("disk", 11, batch_size=BATCH)
    )
    files = sorted((tmp_path / "features").glob("*/*.pddf"))
    assert len(files) == 11
    for i, path in enumerate(files):
        data = bytearray(path.read_bytes())
        data[-1 - i] ^= 0x40
        path.write_bytes(bytes(data))
    cache = FeatureCache("disk", 11, batch_size=BATCH)
    _assert_same(_train("rd4ad", phantoms, tmp_path / "damaged", cache), reference)
    assert cache.store.rejected == 11
    assert (cache.misses, cache.hits) == (11, 22)


def test_a_full_disk_store_evicts_other_runs_entries_first(tmp_path: Path) -> None:
    store, keys, entries = _disk_entries(tmp_path)
    size = store.path(keys[0]).stat().st_size
    old = store.path(keys[0])
    os.utime(old, (1, 1))  # written long before this store's run started
    later = DiskStore(tmp_path / "store", limit=2 * size + size // 2)
    later.put("c" * 64, entries[0])  # evicts the least recently used earlier entry
    assert (
        not old.exists()
        and store.path(keys[1]).exists()
        and later.path("c" * 64).exists()
    )
    later.put("d" * 64, entries[1])  # evicts the other earlier entry
    assert not store.path(keys[1]).exists() and later.path("d" * 64).exists()
    # Only this run's entries left: refused, not evicted (that would only thrash).
    later.put("e" * 64, entries[0])
    assert later.full and not later.path("e" * 64).exists()
    assert later.path("c" * 64).exists() and later.path("d" * 64).exists()


def test_auto_chooses_memory_under_the_bound_else_disk(tmp_path: Path) -> None:
    model = _model("rd4ad")
    images = torch.randn(2, 3, SIZE, SIZE)
    per_image = sum(t.numel() * 4 for t in model.teacher_features(images[:1]).values())
    small = FeatureCache("auto", 10, memory_bound=10 * per_image)
    small.features(model, images, ["a", "b"])
    assert small.mode() == "memory"
    large = FeatureCache("auto", 11, memory_bound=10 * per_image)
    large.features(model, images, ["a", "b"])
    assert large.mode() == "disk"
    record = large.record()
    assert record["entries"] == 2 and record["location"] == str(tmp_path / "features")
    json.dumps(record)


def test_joint_fit_with_the_cache_equals_one_without(
    real_options: Any, phantom_classes: Path, tmp_path: Path
) -> None:
    """``pdd fit --joint`` end to end: same metrics and scores with ``auto`` as with ``off``, and
    metrics.json says where the features came from."""
    runs = {}
    for mode in ("off", "auto"):
        out = fit(
            real_options(
                "pdd",
                phantom_classes,
                tmp_path / mode,
                joint=True,
                epochs=EPOCHS,
                batch_size=BATCH,
                feature_cache=mode,
            )
        )
        runs[mode] = (read_metrics(out), read_scores(out))
    (cached, cached_scores), (plain, plain_scores) = runs["auto"], runs["off"]
    # 22 training images: the last batch holds 2 (VMamba's level 4 of a batch of 2 differs from a
    # batch of 4 in the last bit, which the diversity loss amplified to 5e-5 by epoch 3 before
    # short batches were padded to the full batch size for the teachers).
    for got, want in zip(cached["train_history"], plain["train_history"], strict=True):
        for name in want:
            assert math.isclose(got[name], want[name], rel_tol=RTOL), (name, got, want)
    assert [row["path"] for row in cached_scores] == [
        row["path"] for row in plain_scores
    ]
    for got, want in zip(cached_scores, plain_scores, strict=True):
        assert math.isclose(float(got["score"]), float(want["score"]), rel_tol=RTOL), (
            got,
            want,
        )
    assert plain["feature_cache"]["mode"] == "off"
    record = cached["feature_cache"]
    assert record["mode"] == "memory" and record["location"] == "memory"
    # Every training image computed in epoch 1, served in epochs 2 and 3.
    assert record["misses"] > 0 and record["hits"] == 2 * record["misses"], record


def test_a_resumed_fit_with_the_cache_equals_an_uninterrupted_one_without(
    real_options: Any,
    phantoms: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    release_memory: Any,
) -> None:
    """Crash in the middle of epoch 1, the in-memory features lost as in a killed process, then
    ``resume``: epoch 2's part-cached batches are recomputed whole, epoch 3 is served from the
    cache, and the run ends exactly as one without a cache."""
    from test_engine_resume import TRAINER, Crash, assert_same_run, crash_at

    from pdd.training import runner
    from pdd.training.runner import resume

    def run_options(out: Path, mode: str) -> Any:
        return real_options(
            "rd4ad",
            phantoms,
            out,
            epochs=EPOCHS,
            batch_size=BATCH,
            feature_cache=mode,
            checkpoint_every_n_steps=1,
        )

    reference = fit(run_options(tmp_path / "off", "off"))
    release_memory()  # the three runs' peaks do not add
    out = tmp_path / "run"
    crash_at(monkeypatch, 2)  # 14 images, batches of 4: 4 steps per epoch
    with pytest.raises(Crash):
        fit(run_options(out, "auto"))
    feature_cache.clear_memory()
    release_memory()
    monkeypatch.setattr(runner, "build_trainer", TRAINER)
    assert resume(out, progress=False) == out
    assert_same_run(out, reference)
    record = read_metrics(out)["feature_cache"]
    assert record["mode"] == "memory" and record["hits"] >= 14
