"""NIfTI volumes (``.nii`` / ``.nii.gz`` via nibabel), one axial slice at a time.

The volume is reoriented to the closest canonical (RAS) orientation; slice ``k`` is
``volume[:, :, k]`` shown with anterior at the top. Intensities are scaled per *volume* between its
0.5th and 99.5th percentiles (robust to a few hot voxels) and clipped; non-finite voxels map to 0;
a constant volume scales to all zeros. The header is checked before any voxel is read or a sample
is built from the slice count: the sizes (at most ``MAX_VOXELS`` voxels, a slice within
``MIN_SIDE`` / ``MAX_PIXELS``, at least one slice), the voxel type (real numbers only: complex and
RGB volumes are refused, saying so) and the affine (finite, so the axial axis is defined).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdd.data.readers.limits import MAX_VOXELS, check_size, reduce_by, reduction
from pdd.data.readers.sniff import require_regular
from pdd.errors import DataError

__all__ = ["NIFTI_PERCENTILES", "nifti_slice_count", "raw_nifti_slice", "scaled_nifti_slice"]


NIFTI_PERCENTILES = (0.5, 99.5)
"""Per-volume percentiles mapped to 0 and 1 when reading NIfTI slices."""


@dataclass(frozen=True)
class _Volume:
    data: np.ndarray  # canonical (RAS) 3-D array, float32
    lo: float
    hi: float


_VOLUME_CACHE: OrderedDict[tuple[str, int, int], _Volume] = OrderedDict()
_VOLUME_CACHE_SIZE = 2  # a dataset reads a volume's slices in order; two volumes cover the seams


def _load_nifti(path: Path) -> _Volume:
    """Canonical 3-D volume and its robust range, cached because datasets read it slice by slice."""
    import nibabel as nib

    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    cached = _VOLUME_CACHE.get(key)
    if cached is not None:
        _VOLUME_CACHE.move_to_end(key)
        return cached
    img = _open_nifti(path)
    _nifti_sizes(path, img)  # every limit, from the header, before any voxel is read
    if len(img.shape) == 4:
        img = img.slicer[..., 0]
    try:
        if len(img.shape) == 2:
            img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., None], img.affine)
        canonical = nib.as_closest_canonical(img)
        data = np.asarray(canonical.get_fdata(dtype=np.float32))
    except Exception as exc:  # truncated gzip, short data block
        raise DataError(f"{path}: truncated or corrupt NIfTI data") from exc
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        lo = hi = 0.0
    else:
        lo, hi = (float(v) for v in np.percentile(finite, NIFTI_PERCENTILES))
    volume = _Volume(data=data, lo=lo, hi=hi)
    _VOLUME_CACHE[key] = volume
    while len(_VOLUME_CACHE) > _VOLUME_CACHE_SIZE:
        _VOLUME_CACHE.popitem(last=False)
    return volume


def _open_nifti(path: Path):  # -> nibabel image; untyped library object
    import nibabel as nib

    require_regular(path)
    try:
        return nib.load(path)
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, zlib errors, ...
        raise DataError(f"{path}: truncated or corrupt NIfTI file") from exc


def nifti_slice_count(path: str | Path) -> int:
    """Number of axial slices of a NIfTI volume, read from the header only (no voxel data).

    The header's sizes are checked first (``MAX_VOXELS``, the slice size, at least one slice), so
    a header claiming millions of slices never becomes millions of samples."""
    path = Path(path)
    return _nifti_sizes(path, _open_nifti(path))[2]


def _nifti_sizes(path: Path, img) -> tuple[int, int, int]:  # img: a nibabel image
    """Canonical (x, y, z) sizes from the header, every limit checked; z is the slice count.

    The voxel type is checked here too, so that a volume no slice can be read from never becomes
    samples."""
    _check_voxel_type(path, img)
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise DataError(
            f"{path}: NIfTI image has {len(img.shape)} dimensions {tuple(img.shape)}; "
            "only 3-D volumes (or 4-D with one volume) are supported"
        )
    voxels = math.prod(shape)
    if voxels > MAX_VOXELS:
        raise DataError(
            f"{path}: NIfTI volume has {voxels} voxels {shape}; the limit is {MAX_VOXELS} "
            "(decompression-bomb guard)"
        )
    width, height, slices = _canonical_shape(path, img, shape)
    check_size(path, height, width)  # a displayed slice is rot90 of canonical (x, y)
    if slices < 1:
        raise DataError(f"{path}: NIfTI volume has 0 axial slices {shape}; there is no image in it")
    return width, height, slices


def _check_voxel_type(path: Path, img) -> None:
    """Real-valued voxels only. Complex volumes (MR raw data, phase) would lose their imaginary
    part when cast to float, and the ``Detector`` refuses complex arrays, so they are refused
    here too; RGB volumes (NIfTI RGB24 / RGBA32) hold colour records, not intensities."""
    dtype = np.dtype(img.get_data_dtype())
    if dtype.kind in "biuf":
        return
    label = _datatype_label(img, dtype)
    if dtype.names is not None:
        raise DataError(
            f"{path}: NIfTI volume has colour voxels (datatype {label}); colour volumes are not "
            "supported; save a greyscale volume"
        )
    if dtype.kind == "c":
        raise DataError(
            f"{path}: NIfTI volume is complex-valued (datatype {label}); complex-valued volumes "
            "are not supported; save the magnitude"
        )
    raise DataError(f"{path}: NIfTI voxel type {label} is not supported; save real numbers")


def _datatype_label(img, dtype: np.dtype) -> str:
    """The header's datatype name (e.g. RGB24, COMPLEX64) for messages; the NumPy type otherwise."""
    from nibabel.nifti1 import data_type_codes

    try:
        name = str(data_type_codes.niistring[int(img.header["datatype"])])
    except (KeyError, TypeError, ValueError):
        return str(dtype)
    return name.removeprefix("NIFTI_TYPE_") or str(dtype)


def _canonical_shape(path: Path, img, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(x, y, z) sizes after reorientation to RAS of a stored 3-D ``shape``; an affine that is not
    finite (a NaN in the header's sform, qform or pixdim) leaves the axial axis undefined."""
    import nibabel as nib

    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise DataError(
            f"{path}: NIfTI affine holds NaN or infinite values; the axial axis is undefined"
        )
    try:
        axis_codes = nib.orientations.io_orientation(affine)[:, 0]
    except np.linalg.LinAlgError as exc:
        raise DataError(f"{path}: NIfTI affine cannot be decomposed ({exc})") from exc
    if not np.all(np.isfinite(axis_codes)):
        raise DataError(f"{path}: NIfTI affine is degenerate; the axial axis is undefined")
    sizes = [0, 0, 0]
    for stored_axis, code in enumerate(axis_codes[:3]):
        sizes[int(code)] = shape[stored_axis]
    return sizes[0], sizes[1], sizes[2]


def _slice(path: Path, volume: np.ndarray, slice_index: int | None) -> np.ndarray:
    count = volume.shape[2]
    if slice_index is None:
        if count != 1:
            raise DataError(
                f"{path}: NIfTI volume has {count} axial slices; a slice index is needed"
            )
        slice_index = 0
    if not 0 <= slice_index < count:
        raise DataError(
            f"{path}: slice index {slice_index} is outside the volume's {count} axial slices"
        )
    return np.rot90(volume[:, :, slice_index])  # rows run anterior (top) to posterior


def scaled_nifti_slice(
    path: Path, slice_index: int | None, target_size: int | None
) -> np.ndarray:
    volume = _load_nifti(path)
    plane = _slice(path, volume.data, slice_index).astype(np.float64)
    plane = np.where(np.isfinite(plane), plane, volume.lo)
    plane = reduce_by(plane, reduction(plane.shape, target_size))
    if volume.hi <= volume.lo:
        return np.zeros(plane.shape, np.float32)
    return np.clip((plane - volume.lo) / (volume.hi - volume.lo), 0.0, 1.0).astype(np.float32)


def raw_nifti_slice(path: Path, slice_index: int | None) -> np.ndarray:
    volume = _load_nifti(path)
    plane = _slice(path, volume.data, slice_index)
    return np.where(np.isfinite(plane), plane, 0.0)
