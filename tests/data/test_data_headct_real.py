"""The real HeadCT set, read in place (never copied into the repo).

The ``headct_dir`` fixture (tests/conftest.py) finds it beside the clone or in ``$PDD_HEADCT_DIR`` and
skips with the reason when it is absent (CI sets ``PDD_REQUIRE_HEADCT=1``: then it fails).
"""

from __future__ import annotations

from pathlib import Path

from pdd.data import detect_format, load_dataset, read_image


def test_real_headct_split(headct_dir: Path) -> None:
    assert detect_format(headct_dir) == "headct"
    split = load_dataset(headct_dir, format="headct", seed=0)
    assert (len(split.train), len(split.holdout), len(split.test)) == (67, 8, 125)
    assert sum(s.label for s in split.test) == 100 and split.skipped == []
    assert not {s.path for s in split.train + split.holdout} & {s.path for s in split.test}


def test_real_headct_rgba_images_read_as_rgb(headct_dir: Path) -> None:
    image = read_image(headct_dir / "head_ct" / "000.png")
    assert image.ndim == 3 and image.shape[2] == 3 and 0.0 <= image.min() <= image.max() <= 1.0
