"""Heatmap overlays: fixed colour scale, clipping, blending, PNG output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from pdd.errors import PDDError
from pdd.report.heatmap import overlay, panel, save_overlay


def grey_image(height: int = 8, width: int = 10) -> np.ndarray:
    return np.full((height, width, 3), 0.5)


def test_alpha_one_is_the_colormap_and_alpha_zero_the_image() -> None:
    image = np.random.default_rng(0).random((8, 10, 3))
    amap = np.linspace(0.0, 2.0, 80).reshape(8, 10)
    coloured = overlay(image, amap, vmin=0.0, vmax=2.0, alpha=1.0)
    expected = np.round(colormaps["jet"](amap / 2.0)[..., :3] * 255).astype(np.uint8)
    assert coloured.dtype == np.uint8 and coloured.shape == (8, 10, 3)
    np.testing.assert_array_equal(coloured, expected)
    np.testing.assert_array_equal(overlay(image, amap, 0.0, 2.0, alpha=0.0),
                                  np.round(image * 255).astype(np.uint8))


def test_values_outside_the_scale_are_clipped() -> None:
    image = grey_image()
    low = overlay(image, np.full((8, 10), -5.0), vmin=0.0, vmax=1.0)
    at_vmin = overlay(image, np.zeros((8, 10)), vmin=0.0, vmax=1.0)
    high = overlay(image, np.full((8, 10), 7.0), vmin=0.0, vmax=1.0)
    at_vmax = overlay(image, np.ones((8, 10)), vmin=0.0, vmax=1.0)
    np.testing.assert_array_equal(low, at_vmin)
    np.testing.assert_array_equal(high, at_vmax)
    assert not np.array_equal(at_vmin, at_vmax)


def test_a_calm_map_stays_calm_under_a_fixed_scale() -> None:
    # A normal scan's map, small everywhere, must not be stretched to full colour range.
    calm = overlay(grey_image(), np.full((8, 10), 0.05), vmin=0.0, vmax=1.0, alpha=1.0)
    red, blue = calm[..., 0].astype(int), calm[..., 2].astype(int)
    assert np.all(blue > red)


def test_map_is_resized_to_the_image_and_grey_images_accepted() -> None:
    amap = torch.zeros(4, 5)
    amap[:, 3:] = 1.0
    result = overlay(np.full((8, 10), 0.2), amap, vmin=0.0, vmax=1.0, alpha=1.0)
    assert result.shape == (8, 10, 3)
    assert result[0, 0, 2] > result[0, 0, 0] and result[0, 9, 0] > result[0, 9, 2]


def test_panel_is_image_gap_overlay() -> None:
    image = grey_image()
    amap = np.zeros((8, 10))
    result = panel(image, amap, vmin=0.0, vmax=1.0)
    assert result.shape == (8, 24, 3)
    np.testing.assert_array_equal(result[:, :10], np.full((8, 10, 3), 128, np.uint8))
    np.testing.assert_array_equal(result[:, 14:], overlay(image, amap, 0.0, 1.0))


def test_save_overlay_writes_the_overlay_as_png(tmp_path) -> None:
    image = np.random.default_rng(1).random((8, 10, 3))
    amap = np.random.default_rng(2).random((8, 10))
    path = save_overlay(tmp_path / "a.png", image, amap, vmin=0.0, vmax=1.0)
    with Image.open(path) as written:
        assert written.format == "PNG"
        np.testing.assert_array_equal(np.asarray(written), overlay(image, amap, 0.0, 1.0))
    wide = save_overlay(tmp_path / "b.png", image, amap, 0.0, 1.0, side_by_side=True)
    with Image.open(wide) as written:
        assert written.size == (24, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


@pytest.mark.parametrize(
    ("image", "amap", "vmin", "vmax", "message"),
    [
        (grey_image(), np.zeros((8, 10)), 1.0, 1.0, "vmin < vmax"),
        (grey_image(), np.zeros((8, 10)), 0.0, float("nan"), "vmin < vmax"),
        (grey_image(), np.full((8, 10), np.nan), 0.0, 1.0, "NaN"),
        (grey_image() * 3, np.zeros((8, 10)), 0.0, 1.0, r"in \[0, 1\]"),
        (np.zeros((8, 10, 4)), np.zeros((8, 10)), 0.0, 1.0, "HxWx3"),
        (grey_image(), np.zeros((2, 8, 10)), 0.0, 1.0, "HxW"),
    ],
)
def test_bad_overlay_input(image, amap, vmin, vmax, message) -> None:
    with pytest.raises(PDDError, match=message):
        overlay(image, amap, vmin, vmax)


def test_save_overlay_into_a_missing_folder_names_it(tmp_path) -> None:
    with pytest.raises(PDDError, match="folder does not exist"):
        save_overlay(tmp_path / "nope" / "a.png", grey_image(), np.zeros((8, 10)), 0.0, 1.0)
