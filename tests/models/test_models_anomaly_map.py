"""Anomaly map: cosine distance, upsampling, sum, the Gaussian smoothing the authors used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from pdd.models.anomaly_map import AnomalyMap, GaussianBlur, cosine_distance_map


@pytest.mark.parametrize("shape", [(64, 64), (40, 72), (10, 13)])
def test_gaussian_blur_matches_scipy(shape: tuple[int, int]) -> None:
    """Same kernel and border as scipy.ndimage.gaussian_filter(sigma=4), incl. maps smaller than the kernel."""
    rng = np.random.default_rng(0)
    images = rng.random((2, *shape))
    blurred = (
        GaussianBlur(4.0)(torch.from_numpy(images).unsqueeze(1)).squeeze(1).numpy()
    )
    for ours, image in zip(blurred, images):
        np.testing.assert_allclose(
            ours, gaussian_filter(image, sigma=4), rtol=0, atol=1e-12
        )


def test_gaussian_blur_float32_and_channels_separate() -> None:
    x = torch.zeros(1, 2, 48, 48)
    x[0, 0, 24, 24] = 1.0
    y = GaussianBlur(4.0)(x)
    assert y.dtype == torch.float32
    assert y[0, 1].abs().max() == 0  # no leak across channels
    np.testing.assert_allclose(
        y[0, 0].numpy(),
        gaussian_filter(x[0, 0].numpy().astype(np.float64), 4),
        atol=1e-6,
    )
    assert y[0, 0].sum().item() == pytest.approx(1.0, abs=1e-5)


def test_cosine_distance_map_per_position() -> None:
    student = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).view(
        1, 2, 1, 2
    )  # positions: (1,0) and (1,1)
    target = torch.tensor([[0.0, 2.0], [1.0, 2.0]]).view(
        1, 2, 1, 2
    )  # positions: (0,1) and (2,2)
    torch.testing.assert_close(
        cosine_distance_map(student, target), torch.tensor([[[[1.0, 0.0]]]])
    )


def test_anomaly_map_sums_upsampled_levels_then_smooths() -> None:
    torch.manual_seed(1)
    pairs = [
        (
            torch.randn(2, 4, 8, 8, dtype=torch.float64),
            torch.randn(2, 4, 8, 8, dtype=torch.float64),
        ),
        (
            torch.randn(2, 6, 4, 4, dtype=torch.float64),
            torch.randn(2, 6, 4, 4, dtype=torch.float64),
        ),
    ]
    maps, scores = AnomalyMap(sigma=4.0)(pairs, (32, 32))
    assert maps.shape == (2, 32, 32) and scores.shape == (2,)
    for b in range(2):
        total = np.zeros((32, 32))
        for s, t in pairs:
            level = 1 - F.cosine_similarity(
                s[b : b + 1], t[b : b + 1], dim=1
            ).unsqueeze(1)
            total += F.interpolate(
                level, size=(32, 32), mode="bilinear", align_corners=True
            )[0, 0].numpy()
        expected = gaussian_filter(total, sigma=4)
        np.testing.assert_allclose(maps[b].numpy(), expected, atol=1e-12)
        assert scores[b].item() == pytest.approx(expected.max())


def test_identical_features_give_zero_map() -> None:
    f = torch.randn(3, 8, 4, 4)
    maps, scores = AnomalyMap()([(f, f.clone())], (64, 64))
    assert maps.abs().max() < 1e-5 and scores.abs().max() < 1e-5


def test_sigma_must_be_positive() -> None:
    with pytest.raises(ValueError, match="sigma"):
        GaussianBlur(0.0)


class _MapFromFeatures(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.anomaly_map = AnomalyMap()

    def forward(
        self, student: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.anomaly_map([(student, target)], (64, 64))


def test_anomaly_map_exports_to_onnx(tmp_path: Path) -> None:
    """The smoothing is a fixed conv, so the whole map runs in ONNX Runtime with a dynamic batch."""
    ort = pytest.importorskip("onnxruntime")
    module = _MapFromFeatures().eval()
    student, target = torch.randn(2, 8, 16, 16), torch.randn(2, 8, 16, 16)
    path = tmp_path / "map.onnx"
    torch.onnx.export(
        module,
        (student, target),
        str(path),
        input_names=["student", "target"],
        output_names=["maps", "scores"],
        dynamic_axes={
            name: {0: "batch"} for name in ("student", "target", "maps", "scores")
        },
        dynamo=False,
    )
    student, target = torch.randn(3, 8, 16, 16), torch.randn(3, 8, 16, 16)
    maps, scores = ort.InferenceSession(str(path)).run(
        None, {"student": student.numpy(), "target": target.numpy()}
    )
    expected_maps, expected_scores = module(student, target)
    np.testing.assert_allclose(maps, expected_maps.numpy(), atol=1e-5)
    np.testing.assert_allclose(scores, expected_scores.numpy(), atol=1e-5)
