"""The one place where an image becomes model input (and back, for display).

Every path into a model (training, evaluation, prediction, ONNX export checks) goes through
:func:`to_model_input`, so train-time and deploy-time preprocessing cannot drift apart:
resize to S x S with antialiased bilinear interpolation (aspect ratio is not kept, as in the
paper's protocol), then ImageNet mean/std normalisation, because the teachers were trained on it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "mask_to_tensor", "to_display", "to_model_input"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _mean_std(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=dtype).view(3, 1, 1)
    return mean, std


def to_model_input(image: np.ndarray, size: int) -> torch.Tensor:
    """float HxWx3 in [0, 1] -> float32 Tensor[3, size, size], resized and ImageNet-normalised."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
    if tensor.shape[1:] != (size, size):
        tensor = F.interpolate(
            tensor[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )[0]
    mean, std = _mean_std(tensor.dtype)
    return ((tensor - mean) / std).contiguous()


def mask_to_tensor(mask: np.ndarray, size: int) -> torch.Tensor:
    """bool HxW -> float32 Tensor[1, size, size] of 0/1, resized by nearest neighbour (stays binary)."""
    if mask.ndim != 2:
        raise ValueError(f"expected an HxW mask, got shape {mask.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    if tensor.shape[2:] != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="nearest-exact")
    return tensor[0]


def to_display(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`to_model_input` (without the resize): Tensor[3,S,S] -> float32 SxSx3 in [0, 1]."""
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] tensor, got shape {tuple(tensor.shape)}")
    mean, std = _mean_std(torch.float32)
    image = tensor.detach().to("cpu", torch.float32) * std + mean
    return image.clamp(0.0, 1.0).permute(1, 2, 0).numpy().copy()
