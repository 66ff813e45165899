"""In-process scoring: ``Detector.load(checkpoint).predict(x)`` without writing any file.

Arrays are read the way files are (``pdd.data.image_from_array``): 8-bit and 16-bit integers
divided by their type's maximum, floats already in [0, 1] kept, other types min-max scaled per
image, grey replicated to three channels, alpha dropped. So an array and the PNG it came from give the same
score as ``pdd predict`` (same resize, same normalisation, same model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np
import torch

from pdd.errors import ConfigError, DataError

__all__ = ["Detection", "Detector"]

ImageInput = np.ndarray | str | Path


@dataclass(frozen=True)
class Detection:
    """One scored image: ``anomaly_map`` is HxW float32 at the input's own resolution;
    ``is_anomalous`` is ``score > threshold``, None when the checkpoint has no threshold."""

    score: float
    anomaly_map: np.ndarray
    is_anomalous: bool | None
    threshold: float | None


class Detector:
    """A loaded checkpoint ready to score images in this process."""

    def __init__(self, model: torch.nn.Module, threshold: float | None, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.threshold = threshold
        self.device = torch.device(device)
        self.image_size = int(model.config["image_size"])  # type: ignore[index]

    @classmethod
    def load(cls, checkpoint: str | Path, device: str = "cpu") -> Detector:
        """Load ``checkpoint`` (from ``pdd fit``) onto ``device`` (a torch device string)."""
        from pdd.prediction.rules import stored_statistics
        from pdd.runs.checkpoint import load

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: no CUDA GPU is available to torch; use device='cpu'")
        model, meta = load(Path(checkpoint))
        return cls(model, stored_statistics(meta)[0], device)

    @overload
    def predict(self, x: ImageInput, *, batch_size: int = ...) -> Detection: ...

    @overload
    def predict(self, x: Sequence[ImageInput], *, batch_size: int = ...) -> list[Detection]: ...

    def predict(
        self, x: ImageInput | Sequence[ImageInput], *, batch_size: int = 8
    ) -> Detection | list[Detection]:
        """Score one image (array HxW / HxWxC of any int or float type, or a file path) or a list.

        A file is read with ``pdd.data.read_image`` (a multi-slice NIfTI needs ``pdd predict``);
        like ``pdd predict`` it decodes an image far larger than the model's input at a reduced
        size (``target_size``), and its map is at that size. Arrays are used at their full size.
        """
        single = isinstance(x, (np.ndarray, str, Path))
        items = [x] if single else list(x)  # type: ignore[list-item, arg-type]
        images = [_read(item, position, self.image_size) for position, item in enumerate(items)]
        results: list[Detection] = []
        for start in range(0, len(images), batch_size):
            results += self._score(images[start : start + batch_size])
        return results[0] if single else results

    def _score(self, images: list[np.ndarray]) -> list[Detection]:
        from pdd.data import to_model_input
        from pdd.prediction.scan_maps import map_at_size

        batch = torch.stack([to_model_input(image, self.image_size) for image in images])
        with torch.inference_mode():
            maps, scores = self.model(batch.to(self.device))
        results = []
        for image, amap, score in zip(images, maps.float().cpu().numpy(), scores.float().cpu()):
            value = float(score)
            results.append(
                Detection(
                    score=value,
                    anomaly_map=map_at_size(amap, image.shape[:2]),
                    is_anomalous=None if self.threshold is None else value > self.threshold,
                    threshold=self.threshold,
                )
            )
        return results


def _read(item: ImageInput, position: int, image_size: int) -> np.ndarray:
    from pdd.data import image_from_array, read_image

    if isinstance(item, (str, Path)):
        return read_image(Path(item), target_size=image_size)  # bounded decoding, as predict
    if not isinstance(item, np.ndarray):
        raise DataError(f"input {position}: expected a NumPy array or a file path, got {type(item).__name__}")
    return image_from_array(item, f"input {position}")

