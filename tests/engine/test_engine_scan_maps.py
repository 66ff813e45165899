"""`pdd.prediction.scan_maps`: anomaly maps in the scan's own geometry.

NIfTI: the maps handed in are the reader's own displayed slices, so a correct inversion must
reproduce the input volume's voxels (scaled by the reader's percentiles, computed here
independently with NumPy) in the input's voxel order. Kills: a missing/wrong rot90 inverse, no
reorientation back from canonical, a flipped axis left flipped, the affine or qform/sform not
copied, the input's scl_slope applied to the map.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_series import ORIENTATION, SPACING, write_series

from pdd.data import read_image
from pdd.data.synthetic import write_nifti
from pdd.prediction.scan_maps import map_at_size, write_dicom_series, write_nifti_map

# Scaled, translated, one flipped axis, and axes permuted (stored axis 0 is anterior-posterior).
AFFINE = np.array(
    [[0.0, 0.8, 0.0, -12.0], [-1.5, 0.0, 0.0, 40.0], [0.0, 0.0, 2.5, -7.0], [0.0, 0.0, 0.0, 1.0]]
)


def test_nifti_map_overlays_the_input_voxel_for_voxel(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    volume = rng.normal(100.0, 20.0, size=(14, 11, 5)).astype(np.float32)
    source = write_nifti(tmp_path / "in.nii.gz", volume, AFFINE)
    img = nib.load(source)
    img.header.set_slope_inter(2.0, 5.0)  # an input scaling that must not reach the map
    nib.save(img, source)
    stored = np.asarray(nib.load(source).get_fdata())
    count = 5  # the z axis stays the axial axis here
    maps = [read_image(source, slice_index=k)[..., 0] for k in range(count)]
    out = write_nifti_map(source, maps, tmp_path / "maps" / "in_anomaly.nii.gz")

    written = nib.load(out)
    assert written.shape == img.shape
    np.testing.assert_allclose(written.affine, AFFINE)
    np.testing.assert_allclose(written.get_qform(), nib.load(source).get_qform())
    np.testing.assert_allclose(written.get_sform(), nib.load(source).get_sform())
    assert written.get_data_dtype() == np.float32
    lo, hi = np.percentile(stored, (0.5, 99.5))
    expected = np.clip((stored - lo) / (hi - lo), 0.0, 1.0)
    np.testing.assert_allclose(np.asarray(written.dataobj), expected, atol=1e-5)


def test_nifti_map_is_resized_to_the_slice(tmp_path: Path) -> None:
    source = write_nifti(tmp_path / "in.nii", np.zeros((20, 12, 2), np.float32))
    small = [np.full((8, 8), 3.0, np.float32), None]
    written = nib.load(write_nifti_map(source, small, tmp_path / "m.nii.gz"))
    data = np.asarray(written.dataobj)
    assert data.shape == (20, 12, 2)
    assert np.allclose(data[:, :, 0], 3.0) and np.isnan(data[:, :, 1]).all()


def test_dicom_series_keeps_study_and_geometry(tmp_path: Path) -> None:
    sources = write_series(tmp_path / "src", [np.full((12, 10), 50 * k, np.int16) for k in range(3)])
    rng = np.random.default_rng(1)
    maps = [rng.uniform(0, 4, (8, 8)).astype(np.float32) for _ in range(3)]
    uid, files = write_dicom_series(
        [str(p) for p in sources], maps, tmp_path / "dicom", display_range=(0.5, 3.0), derivation="test"
    )
    assert len(files) == 3
    for number, (path, source, amap) in enumerate(zip(files, sources, maps), start=1):
        ds, src = pydicom.dcmread(path), pydicom.dcmread(source)
        assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
        assert ds.SeriesInstanceUID == uid != src.SeriesInstanceUID
        assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
        assert "anomaly map" in ds.SeriesDescription
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert [float(v) for v in ds.ImagePositionPatient] == [float(v) for v in src.ImagePositionPatient]
        assert [float(v) for v in ds.ImageOrientationPatient] == pytest.approx(ORIENTATION, abs=1e-4)
        assert [float(v) for v in ds.PixelSpacing] == list(SPACING)
        assert ds.InstanceNumber == number
        values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(values, map_at_size(amap, (12, 10)), atol=4.0 / 65535 + 1e-6)
