"""`pdd.data.scans.group_scans`: DICOM files -> series in geometric order; NIfTI slices -> volumes.

The series helper writes shuffled file names and InstanceNumbers that run *against* the geometry,
so sorting by file name or by InstanceNumber (mutations of the ordering) fails these tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from dicom_series import write_series  # noqa: E402

from pdd.data import collect_inputs  # noqa: E402
from pdd.data.scans import group_scans  # noqa: E402
from pdd.data.synthetic import write_nifti  # noqa: E402


def _slices(n: int, size: int = 16) -> list[np.ndarray]:
    return [np.full((size, size), 100 * (k + 1), np.int16) for k in range(n)]


def test_series_is_ordered_along_the_slice_normal(tmp_path: Path) -> None:
    """Kills: ordering by file name, by InstanceNumber, or by the raw z coordinate (the normal of
    this oblique orientation is not the z axis: its projection is what counts)."""
    truth = write_series(tmp_path / "s", _slices(5))
    notes: list[tuple[str, str]] = []
    scans = group_scans(collect_inputs([tmp_path / "s"]), notes)
    assert len(scans) == 1 and notes == []
    scan = scans[0]
    assert (scan.kind, scan.key, scan.patient_id, scan.geometry) == (
        "dicom", "1.2.826.0.1.3680043.8.498.1", "P-007", True
    )
    assert [Path(s.path) for s in scan.samples] == truth


def test_mixed_orientation_is_scored_as_images_with_a_note(tmp_path: Path) -> None:
    files = write_series(tmp_path / "s", _slices(3))
    ds = pydicom.dcmread(files[1])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.save_as(files[1])
    notes: list[tuple[str, str]] = []
    scans = group_scans(collect_inputs([tmp_path / "s"]), notes)
    assert [s.kind for s in scans] == ["image"] * 3
    assert len(notes) == 1 and "mixed ImageOrientationPatient" in notes[0][1]


def test_series_without_geometry_falls_back_to_instance_number(tmp_path: Path) -> None:
    truth = write_series(tmp_path / "s", _slices(4), geometry=False)
    notes: list[tuple[str, str]] = []
    scans = group_scans(collect_inputs([tmp_path / "s"]), notes)
    assert len(scans) == 1 and not scans[0].geometry
    # InstanceNumber runs backwards in the helper, so the fallback order is the reverse.
    assert [Path(s.path) for s in scans[0].samples] == truth[::-1]
    assert "InstanceNumber" in notes[0][1]


def test_lone_dicom_and_nifti_volume(tmp_path: Path) -> None:
    write_series(tmp_path / "one", _slices(1), series_uid="1.2.3.4")
    write_nifti(tmp_path / "v.nii.gz", np.zeros((12, 10, 3), np.float32))
    scans = group_scans(collect_inputs([tmp_path / "one", tmp_path / "v.nii.gz"]))
    assert [s.kind for s in scans] == ["image", "nifti"]
    assert [s.slice_index for s in scans[1].samples] == [0, 1, 2]
