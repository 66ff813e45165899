"""Data: medical image readers, dataset layouts, seeded splits, synthetic phantoms.

Everything a model sees passes through :func:`read_image` (file -> float HxWx3 in [0, 1]) and
:func:`to_model_input` (-> normalised tensor), so preprocessing is identical everywhere.
"""

from pdd.data.groups import compile_group_pattern
from pdd.data.image_dataset import ImageDataset
from pdd.data.inputs import collect_inputs
from pdd.data.layouts import FORMATS, detect_format, list_classes
from pdd.data.loading import (
    DEFAULT_HOLDOUT_FRACTION,
    DEFAULT_TEST_NORMAL_FRACTION,
    DatasetSplit,
    load_dataset,
)
from pdd.data.readers import (
    MAX_PIXELS,
    MIN_SIDE,
    image_format,
    image_from_array,
    nifti_slice_count,
    read_image,
    read_mask,
)
from pdd.data.sample import Sample
from pdd.data.splits import read_manifest, write_manifest
from pdd.data.synthetic import make_phantom, make_phantom_dataset
from pdd.data.transforms import mask_to_tensor, to_display, to_model_input

__all__ = [
    "DEFAULT_HOLDOUT_FRACTION",
    "DEFAULT_TEST_NORMAL_FRACTION",
    "FORMATS",
    "MAX_PIXELS",
    "MIN_SIDE",
    "DatasetSplit",
    "ImageDataset",
    "Sample",
    "collect_inputs",
    "compile_group_pattern",
    "detect_format",
    "image_format",
    "image_from_array",
    "list_classes",
    "load_dataset",
    "make_phantom",
    "make_phantom_dataset",
    "mask_to_tensor",
    "nifti_slice_count",
    "read_image",
    "read_manifest",
    "read_mask",
    "to_display",
    "to_model_input",
    "write_manifest",
]
