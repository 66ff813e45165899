"""Anomaly maps written in the scan's own geometry, so they overlay the scan in a viewer.

- NIfTI: ``write_nifti_map`` inverts exactly what ``pdd.data.readers`` does to read a slice
  (reorient to the closest canonical RAS order, slice ``k`` = ``rot90(volume[:, :, k])``): each
  slice's map is resized to the slice's own in-plane size, rotated back, stacked, and reoriented
  to the input's voxel order; the file keeps the input's affine, qform and sform, as float32.
- DICOM: ``write_dicom_series`` writes one derived object per source slice with pydicom's own
  dataset builders (Secondary Capture storage, ImageType DERIVED\\SECONDARY): the source's patient
  and study attributes, StudyInstanceUID and FrameOfReferenceUID, a new SeriesInstanceUID, the
  source geometry (ImagePositionPatient, ImageOrientationPatient, PixelSpacing), and a
  SourceImageSequence naming the source SOPInstanceUID. Pixels are 16-bit with RescaleSlope so
  the stored value times the slope is the anomaly map value.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pdd.errors import DataError

__all__ = ["map_at_size", "write_dicom_series", "write_nifti_map"]

SERIES_DESCRIPTION = "PDD anomaly map"
_PATIENT_STUDY = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
    "PatientSex", "PatientAge", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
    "AccessionNumber", "ReferringPhysicianName", "StudyDescription", "FrameOfReferenceUID",
    "PositionReferenceIndicator", "Modality", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "SliceThickness", "SliceLocation", "BodyPartExamined", "PatientPosition",
)


def map_at_size(amap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An S x S model map resized (bilinear, as the PNG overlays) to ``shape`` = (height, width)."""
    array = np.asarray(amap, dtype=np.float32)
    if array.shape == tuple(shape):
        return array
    resized = Image.fromarray(array, mode="F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def write_nifti_map(source: Path, slice_maps: Sequence[np.ndarray | None], out: Path) -> Path:
    """Write ``out`` (.nii.gz): slice ``k``'s map (None: not scored -> NaN) in ``source``'s geometry."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

    try:
        img = nib.load(source)
    except Exception as exc:  # nibabel raises many types on a file that changed under us
        raise DataError(f"{source}: cannot reopen NIfTI to write its map ({exc})") from exc
    shape = tuple(int(n) for n in img.shape)
    spatial = shape[:3] if len(shape) >= 3 else (*shape, 1)
    ornt = io_orientation(img.affine)
    canonical_shape = [0, 0, 0]
    for axis, (code, _) in enumerate(ornt[:3]):
        canonical_shape[int(code)] = spatial[axis]
    width, height, depth = canonical_shape
    if depth != len(slice_maps):
        raise DataError(f"{source}: volume has {depth} axial slices but {len(slice_maps)} maps were made")
    canonical = np.full((width, height, depth), np.nan, dtype=np.float32)
    for k, amap in enumerate(slice_maps):
        if amap is not None:
            # The reader showed rot90(volume[:, :, k]) (height x width); undo the rotation.
            canonical[:, :, k] = np.rot90(map_at_size(amap, (height, width)), k=-1)
    identity = np.array([[0, 1], [1, 1], [2, 1]])
    voxels = apply_orientation(canonical, ornt_transform(identity, ornt)).reshape(shape)
    kind = nib.Nifti2Image if isinstance(img, nib.Nifti2Image) else nib.Nifti1Image
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    result = kind(voxels.astype(np.float32), img.affine, header)
    result.header.set_slope_inter(1.0, 0.0)  # the input's scaling must not rescale the map
    result.set_qform(img.get_qform(), code=int(img.header["qform_code"]))
    result.set_sform(img.get_sform(), code=int(img.header["sform_code"]))
    result.header["descrip"] = SERIES_DESCRIPTION.encode()
    result.header["cal_min"] = result.header["cal_max"] = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".tmp-{out.name}")  # nibabel needs the .nii.gz ending
    nib.save(result, partial)
    os.replace(partial, out)
    return out


def write_dicom_series(
    sources: Sequence[str],
    slice_maps: Sequence[np.ndarray | None],
    folder: Path,
    *,
    display_range: tuple[float, float] | None,
    derivation: str,
) -> tuple[str, list[Path]]:
    """Write the derived series into ``folder``; returns its SeriesInstanceUID and files.

    ``sources`` are the series' files in geometric order and ``slice_maps`` their maps (None: a
    slice that could not be scored gets no derived object). ``display_range`` (the checkpoint's
    map statistics) becomes the window so viewers show every series on the same scale.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    series_uid = generate_uid()
    present = [m for m in slice_maps if m is not None]
    top = max((float(np.nanmax(m)) for m in present), default=0.0)
    slope = max(top, 1e-6) / 65535.0
    now = datetime.datetime.now()
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for number, (path, amap) in enumerate(zip(sources, slice_maps), start=1):
        if amap is None:
            continue
        source = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        rows, columns = int(source.Rows), int(source.Columns)
        values = np.clip(np.nan_to_num(map_at_size(amap, (rows, columns))), 0.0, None)
        ds = Dataset()
        for keyword in _PATIENT_STUDY:
            if keyword in source:
                setattr(ds, keyword, source[keyword].value)
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = int(source.get("SeriesNumber", 0) or 0) + 1000
        ds.SeriesDescription = f"{SERIES_DESCRIPTION} of {source.get('SeriesDescription', '') or 'series'}"[:64]
        ds.InstanceNumber = number
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.ConversionType = "WSD"
        ds.DerivationDescription = derivation[:1024]
        ds.ContentDate = now.strftime("%Y%m%d")
        ds.ContentTime = now.strftime("%H%M%S")
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        ds.SourceImageSequence = [reference]
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = f"{slope:.9e}"[:16]
        ds.RescaleType = "US"
        if display_range is not None:
            low, high = display_range
            ds.WindowCenter = f"{(low + high) / 2:.6g}"
            ds.WindowWidth = f"{max(high - low, 1e-6):.6g}"
        stored = np.round(values / float(ds.RescaleSlope)).clip(0, 65535).astype("<u2")
        ds.PixelData = stored.tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        target = folder / f"IM{number:05d}.dcm"
        partial = folder / f".IM{number:05d}.dcm.tmp"
        ds.save_as(partial, enforce_file_format=True)
        os.replace(partial, target)
        written.append(target)
    return series_uid, written
