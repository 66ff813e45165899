"""Test helper: a DICOM series with geometry, written slice by slice with pydicom.

``write_series`` stacks the given HxW integer slices along the normal of an oblique orientation,
stores them under shuffled file names with InstanceNumbers that run against the geometry (so
only ImagePositionPatient can give the true order), and returns the files in true order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pdd.data.synthetic import write_dicom

ORIENTATION = (0.8, 0.6, 0.0, 0.0, 0.0, -1.0)  # oblique rows, columns running feet-ward
SPACING = (0.7, 0.9)


def write_series(
    folder: Path,
    slices: Sequence[np.ndarray],
    *,
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
    study_uid: str = "1.2.826.0.1.3680043.8.498.2",
    patient_id: str = "P-007",
    orientation: Sequence[float] = ORIENTATION,
    geometry: bool = True,
    seed: int = 0,
) -> list[Path]:
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, col)
    names = np.random.default_rng(seed).permutation(len(slices))
    files = []
    for k, pixels in enumerate(slices):
        path = folder / f"f{names[k]:03d}.dcm"
        write_dicom(path, pixels, uid_seed=f"{series_uid}-{k}")
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.StudyInstanceUID = study_uid
        ds.PatientID = patient_id
        ds.PatientName = "Phantom^Seven"
        ds.InstanceNumber = len(slices) - k  # runs against the geometry on purpose
        if geometry:
            position = np.array([10.0, -20.0, 30.0]) + 2.5 * k * normal
            ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
            ds.ImageOrientationPatient = [f"{v:.4f}" for v in orientation]
            ds.PixelSpacing = [f"{v}" for v in SPACING]
            ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.3"
        ds.save_as(path)
        files.append(path)
    return files
