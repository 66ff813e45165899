"""Helpers for tests that check an inference path against the modules run in float64."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def randomise_batchnorm(module: nn.Module, seed: int = 0) -> None:
    """Random running statistics and affine parameters in every BatchNorm2d of ``module``, so a
    folding that ignores any of them shows."""
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            n = layer.num_features
            layer.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            layer.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            layer.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            layer.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)


def relative_error(actual: Tensor, reference: Tensor) -> float:
    """The largest difference from ``reference``, over the reference's range."""
    reference = reference.double()
    scale = float(reference.max() - reference.min())
    assert scale > 0
    return float((actual.double() - reference).abs().max()) / scale
