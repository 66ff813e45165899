"""Scoring a list of samples with a trained model: one process, dataset order, each image once."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pdd.data import ImageDataset, Sample, to_display

__all__ = ["Scored", "Scorer", "extreme_indices"]


@dataclass
class Scored:
    scores: np.ndarray  # [N] float64
    maps: np.ndarray | None  # [N,S,S] float32 when kept
    masks: np.ndarray | None  # [N,S,S] bool when kept
    # The `extremes` highest and lowest scoring images: index -> (display image, map).
    extremes: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def extreme_indices(
    scores: np.ndarray, indices: Sequence[int], count: int
) -> set[int]:
    """The ``count`` highest and ``count`` lowest scoring of ``indices`` (ties: lower index first)."""
    ranked = sorted(indices, key=lambda i: (-scores[i], i))
    return set(ranked[:count]) | set(ranked[-count:])


class Scorer:
    """Runs the model over a list of samples, one process, in dataset order: each image once."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        image_size: int,
        batch_size: int,
        num_workers: int,
        precision_context: Any,
        progress: bool,
    ) -> None:
        self.model = model.eval()
        self.device = device
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.precision_context: Any = precision_context
        self.progress = progress

    def score(
        self,
        samples: Sequence[Sample],
        description: str,
        *,
        keep_maps: bool = False,
        keep_masks: bool = False,
        extremes: int = 0,
    ) -> Scored:
        """Scores of ``samples`` in order; optionally all maps and masks, and the overlay inputs
        of the ``extremes`` highest and lowest scoring images (kept on the way, no second pass)."""
        dataset = ImageDataset(samples, self.image_size)
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )
        scores = np.empty(len(dataset), dtype=np.float64)
        maps = (
            np.empty((len(dataset), self.image_size, self.image_size), np.float32)
            if keep_maps
            else None
        )
        masks = (
            np.empty((len(dataset), self.image_size, self.image_size), bool)
            if keep_masks
            else None
        )
        seen = np.zeros(len(dataset), dtype=bool)
        kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        with tqdm(
            total=len(dataset),
            desc=description,
            disable=not self.progress,
            file=sys.stderr,
            leave=False,
        ) as bar:
            for batch in loader:
                batch_maps, batch_scores = self._forward(batch["image"])
                index = batch["index"].numpy()
                scores[index] = batch_scores
                seen[index] = True
                if maps is not None:
                    maps[index] = batch_maps
                if masks is not None:
                    masks[index] = batch["mask"][:, 0].numpy() > 0.5
                if extremes:
                    for row, i in enumerate(index.tolist()):
                        kept[i] = (to_display(batch["image"][row]), batch_maps[row])
                    wanted = extreme_indices(scores, list(kept), extremes)
                    kept = {i: kept[i] for i in wanted}
                bar.update(len(index))
        if not seen.all():
            raise RuntimeError(
                f"{int((~seen).sum())} of {len(seen)} images were not scored"
            )
        return Scored(scores, maps, masks, kept)

    def _forward(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode(), self.precision_context():
            maps, scores = self.model(images.to(self.device))
        return maps.float().cpu().numpy(), scores.double().cpu().numpy()
