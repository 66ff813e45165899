"""The one normalisation: resize (antialiased bilinear) + ImageNet mean/std, and its display inverse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pdd.data import mask_to_tensor, to_display, to_model_input
from pdd.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def test_constant_image_becomes_imagenet_normalised_values() -> None:
    tensor = to_model_input(np.full((40, 30, 3), 0.5, np.float32), 16)
    assert tensor.shape == (3, 16, 16) and tensor.dtype == torch.float32
    for c in range(3):
        assert torch.allclose(
            tensor[c], torch.full((16, 16), (0.5 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]), atol=1e-6
        )


def test_downsampling_is_antialiased() -> None:
    stripes = np.zeros((64, 64, 3), np.float32)
    stripes[:, ::2] = (
        1.0  # a one-pixel pattern: antialiasing averages it to grey, aliasing would not
    )
    display = to_display(to_model_input(stripes, 16))
    assert np.allclose(display[:, 1:-1], 0.5, atol=1e-3)  # border columns see a truncated kernel
    assert np.allclose(display, 0.5, atol=0.05)


def test_display_inverts_model_input() -> None:
    image = np.random.default_rng(0).random((24, 24, 3), dtype=np.float32)
    np.testing.assert_allclose(to_display(to_model_input(image, 24)), image, atol=1e-6)


def test_mask_to_tensor_stays_binary() -> None:
    mask = np.zeros((30, 30), bool)
    mask[5:20, 10:25] = True
    tensor = mask_to_tensor(mask, 16)
    assert tensor.shape == (1, 16, 16)
    assert set(tensor.unique().tolist()) == {0.0, 1.0}
    assert abs(tensor.mean().item() - mask.mean()) < 0.05


def test_bad_shapes_are_programming_errors() -> None:
    with pytest.raises(ValueError):
        to_model_input(np.zeros((8, 8), np.float32), 8)
    with pytest.raises(ValueError):
        mask_to_tensor(np.zeros((8, 8, 3), bool), 8)
