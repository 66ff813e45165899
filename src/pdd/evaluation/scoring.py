"""Scoring a list of samples with a trained model: one process, dataset order, each image once.

``ScoreCollector`` gathers what one pass keeps (scores, optionally maps and masks, the extreme
images for overlays); the in-process ``Scorer`` here and the multi-process one in
``pdd.evaluation.scoring_loop`` both fill it, so both return the same ``Scored``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pdd.data import ImageDataset, Sample, to_display
from pdd.finite_output import check_finite

__all__ = ["ScoreCollector", "Scored", "Scorer", "extreme_indices"]


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


class ScoreCollector:
    """What one scoring pass over ``count`` images keeps, batch by batch, in any order.

    Maps and masks are kept per batch (a process that scores a share of the images holds only
    its share); the extremes are trimmed after every batch, so they never hold more than
    ``2 * extremes`` images plus one batch.
    """

    def __init__(
        self,
        count: int,
        *,
        keep_maps: bool = False,
        keep_masks: bool = False,
        extremes: int = 0,
        names: Sequence[str] | None = None,
        source: str = "the model",
    ) -> None:
        """``names`` (one per image) and ``source`` (the checkpoint or run) name an image whose
        score or map is not finite in the one-line error that ends the pass (``pdd.finite_output``)."""
        self.count = count
        self.names = names
        self.source = source
        self.keep_maps = keep_maps
        self.keep_masks = keep_masks
        self.extremes = extremes
        self.scores = np.full(count, np.nan, dtype=np.float64)
        self.seen = np.zeros(count, dtype=bool)
        self.indices: list[np.ndarray] = []
        self.maps: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def add(
        self,
        index: np.ndarray,
        scores: np.ndarray,
        maps: np.ndarray,
        masks: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
    ) -> None:
        """One batch: image indices, their scores [B] and maps [B,S,S]; ground-truth masks
        [B,1,S,S] when masks are kept; model inputs [B,3,S,S] when extremes are kept."""
        if self.names is not None:
            check_finite(scores, maps, [self.names[i] for i in np.asarray(index).tolist()], self.source)
        self.scores[index] = scores
        self.seen[index] = True
        if self.keep_maps or self.keep_masks:
            self.indices.append(np.asarray(index))
        if self.keep_maps:
            self.maps.append(np.asarray(maps, dtype=np.float32))
        if self.keep_masks:
            assert masks is not None
            self.masks.append(masks[:, 0].cpu().numpy() > 0.5)
        if self.extremes:
            assert images is not None
            for row, i in enumerate(np.asarray(index).tolist()):
                self.kept[i] = (to_display(images[row]), np.asarray(maps[row]))
            self._trim()

    def merge(self, other: ScoreCollector) -> None:
        """Take in another process's collector over the same images."""
        overlap = self.seen & other.seen
        if overlap.any():
            raise RuntimeError(f"{int(overlap.sum())} images were scored by two processes")
        self.scores[other.seen] = other.scores[other.seen]
        self.seen |= other.seen
        self.indices += other.indices
        self.maps += other.maps
        self.masks += other.masks
        self.kept.update(other.kept)
        self._trim()

    def result(self) -> Scored:
        """Everything in image order; an image that was never scored is an error, not a NaN."""
        if not self.seen.all():
            raise RuntimeError(f"{int((~self.seen).sum())} of {self.count} images were not scored")
        order = np.concatenate(self.indices) if self.indices else np.zeros(0, dtype=np.int64)
        return Scored(
            self.scores,
            self._in_order(self.maps, order) if self.keep_maps else None,
            self._in_order(self.masks, order) if self.keep_masks else None,
            dict(self.kept),
        )

    def save(self, path: Path) -> None:
        """This process's share, for the process that merges (``load``)."""
        kept = sorted(self.kept)
        np.savez(
            path,
            scores=self.scores,
            seen=self.seen,
            indices=np.concatenate(self.indices) if self.indices else np.zeros(0, np.int64),
            maps=np.concatenate(self.maps) if self.maps else np.zeros((0, 0, 0), np.float32),
            masks=np.concatenate(self.masks) if self.masks else np.zeros((0, 0, 0), bool),
            kept_index=np.array(kept, dtype=np.int64),
            kept_image=np.stack([self.kept[i][0] for i in kept]) if kept else np.zeros((0,)),
            kept_map=np.stack([self.kept[i][1] for i in kept]) if kept else np.zeros((0,)),
        )

    def load(self, path: Path) -> ScoreCollector:
        """A collector like this one holding the share ``save`` wrote to ``path``."""
        other = ScoreCollector(
            self.count, keep_maps=self.keep_maps, keep_masks=self.keep_masks, extremes=self.extremes
        )
        with np.load(path) as part:
            other.scores, other.seen = part["scores"], part["seen"]
            if len(part["indices"]):
                other.indices = [part["indices"]]
                other.maps = [part["maps"]] if self.keep_maps else []
                other.masks = [part["masks"]] if self.keep_masks else []
            other.kept = {
                int(i): (image, amap)
                for i, image, amap in zip(part["kept_index"], part["kept_image"], part["kept_map"])
            }
        return other

    def _trim(self) -> None:
        if self.extremes:
            wanted = extreme_indices(self.scores, list(self.kept), self.extremes)
            self.kept = {i: self.kept[i] for i in wanted}

    def _in_order(self, parts: list[np.ndarray], order: np.ndarray) -> np.ndarray:
        stacked = np.concatenate(parts)
        result = np.empty((self.count, *stacked.shape[1:]), stacked.dtype)
        result[order] = stacked
        return result


class Scorer:
    """Runs the model over a list of samples, one process, in dataset order: each image once."""

    source = "the model"
    """The checkpoint or run the model comes from, named when its output is not finite."""

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
        collector = ScoreCollector(
            len(dataset), keep_maps=keep_maps, keep_masks=keep_masks, extremes=extremes,
            names=[sample.key for sample in samples], source=self.source,
        )
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
                collector.add(index, batch_scores, batch_maps, batch["mask"], batch["image"])
                bar.update(len(index))
        return collector.result()

    def _forward(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode(), self.precision_context():
            maps, scores = self.model(images.to(self.device))
        return maps.float().cpu().numpy(), scores.double().cpu().numpy()
