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
from pdd.finite_output import check_finite

__all__ = ["Detection", "Detector"]

ImageInput = np.ndarray | str | Path


@dataclass(frozen=True)
class Detection:
    """One scored image: ``anomaly_map`` is HxW float32 at the input's own resolution;
    ``is_anomalous`` is ``score > threshold``, None when the checkpoint has no threshold;
    ``p_value`` against the checkpoint's held-out normal scores, None when it has none."""

    score: float
    anomaly_map: np.ndarray
    is_anomalous: bool | None
    threshold: float | None
    p_value: float | None = None


class Detector:
    """A loaded checkpoint ready to score images in this process.

    Same reading, preprocessing and map resize as ``pdd predict``; one ``Detection`` (score,
    anomaly map at the input's size, decision and threshold when the checkpoint has one) per image.

    Example:
        >>> from pdd import Detector
        >>> detector = Detector.load("runs/headct/seed_0/model.ckpt")  # doctest: +SKIP
        >>> detection = detector.predict("scan.dcm")  # doctest: +SKIP
        >>> detection.score, detection.is_anomalous  # doctest: +SKIP

        A model in memory works too; without a threshold there is no decision:

        >>> import numpy as np
        >>> from pdd import create_model
        >>> detector = Detector(create_model("rd4ad", teachers="random", image_size=64), threshold=None)
        >>> image = np.linspace(0, 1, 100 * 80, dtype=np.float32).reshape(100, 80)
        >>> detection = detector.predict(image)
        >>> detection.anomaly_map.shape, detection.is_anomalous
        ((100, 80), None)
    """

    source = "the model"
    """What produced the model, for error messages (``load`` sets the checkpoint's path)."""

    def __init__(
        self,
        model: torch.nn.Module,
        threshold: float | None,
        device: str = "cpu",
        normal_scores: list[float] | None = None,
    ) -> None:
        self.model = model.to(device).eval()
        self.threshold = threshold
        self.normal_scores = normal_scores
        self.device = torch.device(device)
        self.image_size = int(model.config["image_size"])  # type: ignore[index]

    @classmethod
    def load(cls, checkpoint: str | Path, device: str = "cpu") -> Detector:
        """Load ``checkpoint`` (from ``pdd fit``) onto ``device`` (a torch device string)."""
        from pdd.prediction.rules import stored_normal_scores, stored_statistics
        from pdd.runs.checkpoint import load

        _check_device(device)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: no CUDA GPU is available to torch; use device='cpu'")
        model, meta = load(Path(checkpoint))
        detector = cls(model, stored_statistics(meta)[0], device, stored_normal_scores(meta))
        detector.source = f"checkpoint {checkpoint}"
        return detector

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
        _check_batch_size(batch_size)
        single = isinstance(x, (np.ndarray, str, Path))
        items = [x] if single else _items(x)
        images = [_read(item, position, self.image_size) for position, item in enumerate(items)]
        names = [_name(item, position) for position, item in enumerate(items)]
        results: list[Detection] = []
        for start in range(0, len(images), batch_size):
            end = start + batch_size
            results += self._score(images[start:end], names[start:end])
        return results[0] if single else results

    def _score(self, images: list[np.ndarray], names: list[str]) -> list[Detection]:
        from pdd.data import to_model_input
        from pdd.prediction.rules import p_value
        from pdd.prediction.scan_maps import map_at_size

        batch = torch.stack([to_model_input(image, self.image_size) for image in images])
        with torch.inference_mode():
            maps, scores = self.model(batch.to(self.device))
        check_finite(scores, maps, names, self.source)
        results = []
        for image, amap, score in zip(images, maps.float().cpu().numpy(), scores.float().cpu()):
            value = float(score)
            results.append(
                Detection(
                    score=value,
                    anomaly_map=map_at_size(amap, image.shape[:2]),
                    is_anomalous=None if self.threshold is None else value > self.threshold,
                    threshold=self.threshold,
                    p_value=p_value(value, self.normal_scores),
                )
            )
        return results


def _check_device(device: object) -> None:
    """A device torch does not know is a one-line ``ConfigError``, not torch's RuntimeError."""
    try:
        torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"device {device!r}: not a torch device (use 'cpu', 'cuda', 'cuda:N' or 'mps')"
        ) from None


def _check_batch_size(batch_size: object) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: expected a whole number >= 1, got {batch_size!r}")


def _items(x: object) -> list[object]:
    """The inputs of a list call; anything that is not an image, a path or a list of them is a
    one-line ``DataError``."""
    try:
        return list(x)  # type: ignore[call-overload]
    except TypeError:
        pass
    raise DataError(
        f"input: expected a NumPy array, a file path or a list of them, got {type(x).__name__}"
    )


def _name(item: object, position: int) -> str:
    return str(item) if isinstance(item, (str, Path)) else f"input {position}"


def _read(item: ImageInput, position: int, image_size: int) -> np.ndarray:
    from pdd.data import image_from_array, read_image

    if isinstance(item, (str, Path)):
        return read_image(Path(item), target_size=image_size)  # bounded decoding, as predict
    if not isinstance(item, np.ndarray):
        raise DataError(f"input {position}: expected a NumPy array or a file path, got {type(item).__name__}")
    return image_from_array(_representable(item, f"input {position}"), f"input {position}")


def _representable(array: np.ndarray, name: str) -> np.ndarray:
    """A float array whose min-max scaling would overflow float64 (a range beyond 1.8e308, or a
    longdouble beyond float64) min-max scaled here in its own precision, after dividing by its
    largest magnitude (scaling is invariant to that); every other array unchanged."""
    if array.dtype.kind != "f" or array.size == 0 or not np.all(np.isfinite(array)):
        return array  # the reader's own rules (and its one-line error for NaN or infinity)
    low, high = array.min(), array.max()
    with np.errstate(over="ignore"):
        spread = np.float64(high) - np.float64(low)
    if np.isfinite(spread):
        return array
    magnitude = max(abs(low), abs(high))
    scaled = array / magnitude
    low, high = scaled.min(), scaled.max()
    if not high > low:
        return np.zeros(array.shape, np.float64)
    return ((scaled - low) / (high - low)).astype(np.float64)

