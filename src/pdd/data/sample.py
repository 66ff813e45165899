"""The unit every data path passes around: one image file, or one axial slice of a NIfTI volume."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Sample"]


@dataclass(frozen=True)
class Sample:
    """One image (or one NIfTI axial slice) with its label; label -1 means unknown (prediction).

    ``group``: the images that must stay in one set with this one (see :mod:`pdd.data.groups`);
    ``load_dataset`` always sets it, None means the file alone."""

    path: str
    label: int
    kind: str
    mask_path: str | None = None
    slice_index: int | None = None
    class_name: str | None = None
    group: str | None = None

    @property
    def key(self) -> str:
        """How the sample is written in CSV files: ``path`` or ``path#slice_index``."""
        return self.path if self.slice_index is None else f"{self.path}#{self.slice_index}"

    @property
    def group_id(self) -> str:
        """The group, or the file itself when none was assigned (never a single slice)."""
        return self.group or self.path
