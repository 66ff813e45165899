"""The torch Dataset every training and scoring loop reads samples through."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from pdd.data.files import is_nifti_name
from pdd.data.readers import read_image, read_mask
from pdd.data.sample import Sample
from pdd.data.transforms import mask_to_tensor, to_model_input

__all__ = ["ImageDataset"]


class ImageDataset(Dataset):
    """Samples -> dicts of ``image`` [3,S,S] float32 (normalised), ``label`` int64 scalar,
    ``mask`` [1,S,S] float32 (zeros when the sample has none), ``index`` int.

    A file that fails to read raises DataError naming it: a silent zero image would train or score
    garbage without anyone noticing.
    """

    def __init__(self, samples: Sequence[Sample], image_size: int) -> None:
        self.samples = list(samples)
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        sample = self.samples[index]
        image = read_image(sample.path, sample.slice_index)
        if sample.mask_path:
            mask = read_mask(
                sample.mask_path,
                image.shape[:2],
                sample.slice_index if is_nifti_name(Path(sample.mask_path)) else None,
            )
            mask_tensor = mask_to_tensor(mask, self.image_size)
        else:
            mask_tensor = torch.zeros(1, self.image_size, self.image_size)
        return {
            "image": to_model_input(image, self.image_size),
            "label": torch.tensor(sample.label, dtype=torch.int64),
            "mask": mask_tensor,
            "index": index,
        }
