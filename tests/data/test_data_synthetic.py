"""Phantoms: deterministic, fast, brain-like, lesions of varied size and contrast with exact masks."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

from pdd.data import make_phantom, make_phantom_dataset
from pdd.data.synthetic import LAYOUTS


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("layout", LAYOUTS)
def test_same_seed_writes_identical_files(tmp_path: Path, layout: str) -> None:
    kwargs = {"n_train": 3, "n_test_normal": 2, "n_test_abnormal": 2, "size": 24}
    a = _tree_digest(make_phantom_dataset(tmp_path / "a", layout, seed=4, **kwargs))
    b = _tree_digest(make_phantom_dataset(tmp_path / "b", layout, seed=4, **kwargs))
    c = _tree_digest(make_phantom_dataset(tmp_path / "c", layout, seed=5, **kwargs))
    assert a == b and len(a) >= 7
    assert a != c


@pytest.mark.parametrize("image_format", ["dicom", "nifti"])
def test_dicom_and_nifti_phantoms_are_deterministic(tmp_path: Path, image_format: str) -> None:
    kwargs = {
        "n_train": 2,
        "n_test_normal": 1,
        "n_test_abnormal": 1,
        "size": 16,
        "image_format": image_format,
    }
    a = _tree_digest(make_phantom_dataset(tmp_path / "a", **kwargs))  # type: ignore[arg-type]
    b = _tree_digest(make_phantom_dataset(tmp_path / "b", **kwargs))  # type: ignore[arg-type]
    assert a == b


def test_phantom_anatomy_and_lesions() -> None:
    rng = np.random.default_rng(0)
    normal, empty = make_phantom(rng, 128, lesion=False)
    assert normal.shape == (128, 128) and normal.dtype == np.float32 and not empty.any()
    assert normal.min() >= 0.0 and normal.max() <= 1.0
    assert normal[0:4, 0:4].max() < 0.1  # background outside the head
    assert normal.max() > 0.8  # bright skull ring
    assert 0.3 < normal[54:74, 40:50].mean() < 0.7  # tissue beside the midline

    areas, signs = [], []
    for _ in range(60):
        image, mask = make_phantom(rng, 128, lesion=True)
        assert mask.any() and mask.dtype == np.bool_
        areas.append(int(mask.sum()))
        ring = np.zeros_like(mask)
        ys, xs = np.nonzero(mask)
        ring[max(ys.min() - 6, 0) : ys.max() + 7, max(xs.min() - 6, 0) : xs.max() + 7] = True
        ring &= ~mask
        signs.append(np.sign(image[mask].mean() - image[ring].mean()))
    assert min(areas) < 60 and max(areas) > 1500  # small to large lesions
    assert 1 in signs and -1 in signs  # bright and dark lesions


def test_phantom_variation_between_images() -> None:
    rng = np.random.default_rng(1)
    a, _ = make_phantom(rng, 64)
    b, _ = make_phantom(rng, 64)
    assert np.abs(a - b).mean() > 0.01


def test_generation_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    make_phantom_dataset(
        tmp_path / "fast", n_train=100, n_test_normal=25, n_test_abnormal=25, size=128
    )
    assert time.perf_counter() - start < 10.0  # about 1.5 s on one busy core


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown layout 'mvtec'"):
        make_phantom_dataset("/nonexistent", "mvtec")
    with pytest.raises(ValueError, match="folder layout only"):
        make_phantom_dataset("/nonexistent", "headct", image_format="dicom")
