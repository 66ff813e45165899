"""One image file -> float32 HxWx3 in [0, 1], whatever medical format it is stored in.

Formats are recognised by content, not by extension (:mod:`.sniff`). Supported: PNG (8/16 bit),
JPEG, BMP, GIF, TIFF (:mod:`.raster`), DICOM (:mod:`.dicom`) and NIfTI (``.nii`` / ``.nii.gz``,
one axial slice at a time, :mod:`.nifti`); each module states its intensity rules, so that every
caller sees the same numbers. Size limits and bounded decoding (``target_size``) are in
:mod:`.limits`; ground-truth masks in :mod:`.masks`. An image already in memory (a NumPy array)
is read by the raster rules with :func:`image_from_array`.

Every unusable file raises :class:`pdd.errors.DataError` whose message is ``"<path>: <problem>"``.
"""

from pdd.data.readers.image import read_image
from pdd.data.readers.limits import DECODE_OVERSAMPLE, MAX_PIXELS, MAX_VOXELS, MIN_SIDE
from pdd.data.readers.masks import LOSSY_MASK_FORMATS, read_mask
from pdd.data.readers.nifti import NIFTI_PERCENTILES, nifti_slice_count
from pdd.data.readers.raster import image_from_array
from pdd.data.readers.sniff import image_format

__all__ = [
    "DECODE_OVERSAMPLE",
    "LOSSY_MASK_FORMATS",
    "MAX_PIXELS",
    "MAX_VOXELS",
    "MIN_SIDE",
    "NIFTI_PERCENTILES",
    "image_format",
    "image_from_array",
    "nifti_slice_count",
    "read_image",
    "read_mask",
]
