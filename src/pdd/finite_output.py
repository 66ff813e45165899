"""A model that outputs NaN or infinity is an error, never a score.

NaN weights (a diverged training, a forged or damaged checkpoint without a threshold, as
``pdd import-checkpoint`` and ``--holdout-fraction 0`` make) give NaN maps and scores. Written as
``nan`` they look like results, decide nothing (``nan > threshold`` is False: "normal") and break
every metric and overlay later. ``pdd predict``, ``pdd test``, ``pdd fit`` and ``Detector`` call
:func:`check_finite` on each batch the model gives, so the first such input ends the run with one
line naming it and the checkpoint (or model) that produced it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pdd.errors import CheckpointError

__all__ = ["NonFiniteOutput", "check_finite"]


class NonFiniteOutput(CheckpointError):
    """The model gave a NaN or infinite score or map value for an input."""


def check_finite(
    scores: object, maps: object, names: Sequence[str], model: str
) -> None:
    """Raise ``NonFiniteOutput`` naming the first of ``names`` (one per batch row) whose score or
    map holds NaN or infinity; ``model`` names the checkpoint (or model) that produced them."""
    score_values = np.asarray(_numpy(scores), dtype=np.float64).reshape(len(names), -1)
    map_values = np.asarray(_numpy(maps)).reshape(len(names), -1)
    bad_scores = ~np.isfinite(score_values).all(axis=1)
    bad_maps = ~np.isfinite(map_values).all(axis=1)
    for row, name in enumerate(names):
        if bad_scores[row] or bad_maps[row]:
            what = "score" if bad_scores[row] else "anomaly map"
            raise NonFiniteOutput(
                f"{name}: the model's {what} is NaN or infinite with {model}; its weights are "
                "probably broken (a diverged training or a damaged file): retrain or use another checkpoint"
            )


def _numpy(values: object) -> object:
    """A torch tensor as a NumPy array (on the CPU, as float32 at least); anything else as is."""
    detach = getattr(values, "detach", None)
    if detach is None:
        return values
    return detach().float().cpu().numpy()
