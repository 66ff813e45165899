"""The real HeadCT set (read in place from the shared folder, never copied into the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdd.data import detect_format, load_dataset, read_image


@pytest.fixture(scope="module")
def headct_root() -> Path:
    import os

    root = (
        Path(
            os.environ.get("PDD_SHARED_DIR", Path(__file__).resolve().parents[2].parent / "shared")
        )
        / "data"
        / "headct"
    )
    if not (root / "labels.csv").is_file():
        pytest.skip(f"{root}: real HeadCT set not available")
    return root


def test_real_headct_split(headct_root: Path) -> None:
    assert detect_format(headct_root) == "headct"
    split = load_dataset(headct_root, format="headct", seed=0)
    assert (len(split.train), len(split.holdout), len(split.test)) == (67, 8, 125)
    assert sum(s.label for s in split.test) == 100 and split.skipped == []
    assert not {s.path for s in split.train + split.holdout} & {s.path for s in split.test}


def test_real_headct_rgba_images_read_as_rgb(headct_root: Path) -> None:
    image = read_image(headct_root / "head_ct" / "000.png")
    assert image.ndim == 3 and image.shape[2] == 3 and 0.0 <= image.min() <= image.max() <= 1.0
