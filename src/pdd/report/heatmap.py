"""Heatmap overlays with a fixed colour scale.

``vmin``/``vmax`` must come from held-out normal maps (the checkpoint's statistics), never from the
image being drawn: with one scale for every image a normal scan looks calm (all low colours) and a
lesion stands out, whereas per-image scaling would paint the hottest spot of any scan red.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib import colormaps
from PIL import Image

from pdd.errors import PDDError
from pdd.fileio import atomic_write_bytes

__all__ = ["overlay", "panel", "save_overlay", "to_png_bytes"]

DEFAULT_COLORMAP = "jet"
_PANEL_GAP = 4  # white pixels between the image and its overlay in a side-by-side panel


def _to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _checked_image(image: Any) -> npt.NDArray[np.float64]:
    array = _to_numpy(image).astype(np.float64)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise PDDError(f"overlay: image must be HxWx3 (or HxW grey), got shape {array.shape}")
    if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 1.0:
        raise PDDError("overlay: image values must be finite and in [0, 1]")
    return array


def _checked_map(amap: Any, shape: tuple[int, int]) -> npt.NDArray[np.float64]:
    array = _to_numpy(amap).astype(np.float32)
    if array.ndim != 2 or array.size == 0:
        raise PDDError(f"overlay: anomaly map must be HxW, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise PDDError("overlay: anomaly map contains NaN or infinite values")
    if array.shape != shape:  # model maps are S x S; the image may be at its own resolution
        resized = Image.fromarray(array, mode="F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
        array = np.asarray(resized)
    return array.astype(np.float64)


def overlay(
    image: Any,
    amap: Any,
    vmin: float,
    vmax: float,
    alpha: float = 0.5,
    colormap: str = DEFAULT_COLORMAP,
) -> npt.NDArray[np.uint8]:
    """Blend the colour-mapped anomaly map over the image; returns uint8 HxWx3.

    ``image``: float HxWx3 (or HxW) in [0, 1]. ``amap``: HxW anomaly map, bilinearly resized to the
    image when the sizes differ. Map values are clipped to [vmin, vmax] before colouring.
    """
    if not (math.isfinite(vmin) and math.isfinite(vmax)) or vmin >= vmax:
        raise PDDError(f"overlay: need finite vmin < vmax, got vmin={vmin}, vmax={vmax}")
    if not 0.0 <= alpha <= 1.0:
        raise PDDError(f"overlay: alpha must be in [0, 1], got {alpha}")
    if colormap not in colormaps:
        raise PDDError(f"overlay: unknown colormap {colormap!r}")
    rgb = _checked_image(image)
    values = _checked_map(amap, rgb.shape[:2])
    normalised = np.clip((values - vmin) / (vmax - vmin), 0.0, 1.0)
    colours = colormaps[colormap](normalised)[..., :3]
    blended = (1.0 - alpha) * rgb + alpha * colours
    return np.round(blended * 255.0).astype(np.uint8)


def panel(
    image: Any, amap: Any, vmin: float, vmax: float, alpha: float = 0.5
) -> npt.NDArray[np.uint8]:
    """Side-by-side uint8 panel: the plain image | a white gap | its overlay."""
    coloured = overlay(image, amap, vmin, vmax, alpha)
    plain = np.round(_checked_image(image) * 255.0).astype(np.uint8)
    gap = np.full((plain.shape[0], _PANEL_GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([plain, gap, coloured], axis=1)


def to_png_bytes(rgb: npt.NDArray[np.uint8]) -> bytes:
    """Encode a uint8 HxWx3 array as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def save_overlay(
    path: str | os.PathLike[str],
    image: Any,
    amap: Any,
    vmin: float,
    vmax: float,
    alpha: float = 0.5,
    *,
    side_by_side: bool = False,
) -> Path:
    """Write the overlay (or the image | overlay panel) as a PNG, atomically; returns the path."""
    rgb = panel(image, amap, vmin, vmax, alpha) if side_by_side else overlay(
        image, amap, vmin, vmax, alpha
    )
    return atomic_write_bytes(path, to_png_bytes(rgb))
