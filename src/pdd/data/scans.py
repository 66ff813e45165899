"""Predict inputs grouped into scans: NIfTI volumes and DICOM series, each in geometric order.

A clinician reads a scan, not a heap of slices, so ``pdd predict`` scores scans. A NIfTI volume is
one scan whose slices are its axial slices (the reader's canonical order). DICOM files are grouped
by SeriesInstanceUID and ordered by ImagePositionPatient projected on the slice normal (the cross
product of the ImageOrientationPatient row and column directions). A series whose files lack that
geometry is ordered by InstanceNumber instead (scored as a scan, but no derived DICOM map can be
written in its geometry). A series that cannot be stacked (mixed orientation, pixel spacing or
size, two slices at one position, no geometry and no InstanceNumber) has its files scored as
single images; each such decision is returned as a note so the user is told. A DICOM file alone in
its series, and every other image, is a single image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdd.data.sample import Sample

__all__ = ["DicomGeometry", "Scan", "group_scans"]

NIFTI = "nifti"
DICOM = "dicom"
IMAGE = "image"
_TAGS = [
    "SeriesInstanceUID", "StudyInstanceUID", "SOPInstanceUID", "SOPClassUID", "PatientID",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "InstanceNumber",
    "Rows", "Columns",
]
_ORIENTATION_TOLERANCE = 1e-4  # direction cosines (unitless)
_SPACING_TOLERANCE = 1e-4  # relative
_POSITION_TOLERANCE = 1e-3  # mm along the normal: two slices closer than this coincide


@dataclass(frozen=True)
class DicomGeometry:
    """Header facts of one DICOM file, read without its pixels."""

    series_uid: str
    sop_uid: str
    patient_id: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    spacing: tuple[float, float] | None
    size: tuple[int, int]
    instance: int | None


@dataclass
class Scan:
    """One scored unit: ``kind`` ``nifti`` (a volume), ``dicom`` (a series) or ``image``.

    ``key`` is the volume's path, the series' SeriesInstanceUID, or the image's path;
    ``samples`` are in scan order (slice 0 first); ``geometry`` says a DICOM series has the
    position/orientation tags needed to write a derived series in its geometry.
    """

    key: str
    kind: str
    samples: list[Sample]
    patient_id: str = ""
    geometry: bool = False


def group_scans(
    samples: Sequence[Sample], notes: list[tuple[str, str]] | None = None
) -> list[Scan]:
    """Scans in first-seen order; why a DICOM series was scored as images is appended to ``notes``."""
    from pdd.data.readers import image_format

    scans: list[Scan] = []
    volumes: dict[str, Scan] = {}
    series: dict[str, list[tuple[Sample, DicomGeometry]]] = {}
    series_slot: dict[str, int] = {}
    for sample in samples:
        if sample.slice_index is not None:
            volume = volumes.get(sample.path)
            if volume is None:
                volume = volumes[sample.path] = Scan(sample.path, NIFTI, [])
                scans.append(volume)
            volume.samples.append(sample)
            continue
        geometry = _dicom_geometry(sample.path) if _is_dicom(sample.path, image_format) else None
        if geometry is None or not geometry.series_uid:
            scans.append(Scan(sample.path, IMAGE, [sample]))
            continue
        if geometry.series_uid not in series:
            series[geometry.series_uid] = []
            series_slot[geometry.series_uid] = len(scans)
            scans.append(Scan(geometry.series_uid, DICOM, []))  # placeholder, filled below
        series[geometry.series_uid].append((sample, geometry))
    for volume in volumes.values():
        volume.samples.sort(key=lambda s: s.slice_index or 0)

    result: list[Scan] = []
    slots = {slot: uid for uid, slot in series_slot.items()}
    for slot, scan in enumerate(scans):
        uid = slots.get(slot)
        if uid is None:
            result.append(scan)
        else:
            result.extend(_stack_series(uid, series[uid], notes))
    return result


def _is_dicom(path: str, image_format: object) -> bool:
    from pdd.errors import DataError

    try:
        return image_format(Path(path)) == DICOM  # type: ignore[operator]
    except DataError:
        return False  # the reader reports it when the file is scored


def _dicom_geometry(path: str) -> DicomGeometry | None:
    """The header facts, or None when the header cannot be read (the reader will say why)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=_TAGS)
        return DicomGeometry(
            series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
            sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
            patient_id=str(ds.get("PatientID", "") or ""),
            position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
            orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
            size=(int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)),
            instance=_integer(ds.get("InstanceNumber")),
        )
    except Exception:  # pydicom raises many types on damaged headers; the reader reports them
        return None


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    """A multi-valued DS as ``count`` finite floats, else None (absent or unusable)."""
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(np.isfinite(numbers)):
        return None
    return numbers


def _integer(value: object) -> int | None:
    try:
        return None if value is None or value == "" else int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _as_images(members: list[tuple[Sample, DicomGeometry]]) -> list[Scan]:
    return [Scan(sample.path, IMAGE, [sample]) for sample, _ in members]


def _stack_series(
    uid: str, members: list[tuple[Sample, DicomGeometry]], notes: list[tuple[str, str]] | None
) -> list[Scan]:
    """One ordered series scan, or its files as single images (with a note saying why)."""

    def refuse(why: str) -> list[Scan]:
        if notes is not None:
            notes.append((uid, f"DICOM series of {len(members)} files scored as single images: {why}"))
        return _as_images(members)

    if len(members) < 2:
        return _as_images(members)
    patient = members[0][1].patient_id
    if len({g.size for _, g in members}) > 1:
        return refuse("its images differ in size")
    complete = all(g.position and g.orientation and g.spacing for _, g in members)
    if complete:
        first = np.array(members[0][1].orientation)
        if any(np.abs(np.array(g.orientation) - first).max() > _ORIENTATION_TOLERANCE for _, g in members):
            return refuse("mixed ImageOrientationPatient")
        spacing = np.array(members[0][1].spacing)
        if any(
            np.abs(np.array(g.spacing) - spacing).max() > _SPACING_TOLERANCE * spacing.max()
            for _, g in members
        ):
            return refuse("mixed PixelSpacing")
        normal = np.cross(first[:3], first[3:])
        depth = [float(np.dot(g.position, normal)) for _, g in members]  # type: ignore[arg-type]
        order = sorted(range(len(members)), key=lambda i: (depth[i], members[i][1].instance or 0))
        gaps = np.diff([depth[i] for i in order])
        if gaps.size and gaps.min() < _POSITION_TOLERANCE:
            return refuse("two slices at the same ImagePositionPatient")
    else:
        instances = [g.instance for _, g in members]
        if None in instances or len(set(instances)) != len(instances):
            return refuse("no ImagePositionPatient/ImageOrientationPatient and no distinct InstanceNumber")
        if notes is not None:
            notes.append(
                (uid, "DICOM series has no ImagePositionPatient/ImageOrientationPatient: ordered by "
                 "InstanceNumber, no derived DICOM map written")
            )
        order = sorted(range(len(members)), key=lambda i: instances[i])  # type: ignore[arg-type,return-value]
    ordered = [members[i] for i in order]
    return [
        Scan(
            uid,
            DICOM,
            [s for s, _ in ordered],
            patient_id=patient,
            geometry=complete,
        )
    ]
