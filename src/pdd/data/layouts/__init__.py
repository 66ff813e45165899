"""Dataset layouts on disk, one module each, and the registry that names them (``format=``).

- ``folder``     train/good, test/good, test/<kind>, optional ground_truth/<kind>/<stem>[_mask].<ext>;
                 several classes when the root holds one such folder per class.
- ``headct``     labels.csv (``id, hemorrhage`` and an optional ``group`` column) + head_ct/NNN.png.
- ``brainmri``   yes/ (tumour) and no/ (normal); byte-identical duplicates are removed.
- ``zhanglab``   chest_xray/{train,test}/{NORMAL,PNEUMONIA}; the official split is kept.
- ``unimedical`` ADer Uni-Medical meta.json (classes brain, liver, retinal) with masks.
- ``bmad``       train/good, valid/{good,Ungood}, test/{good,Ungood}, each with img/ and label/.

Policies every layout follows (:mod:`pdd.data.layouts.discovery` implements them):

- Files are found by extension (:data:`pdd.data.files.IMAGE_EXTENSIONS`); hidden files are
  ignored; other files in image folders are counted in ``skipped``, and so are entries that are
  not regular files (named pipes, sockets, devices, broken links: judged by ``stat``, never
  opened). Pixel data is NOT decoded here.
- The folders that hold normal images (good, NORMAL, and train/test/valid above them) match in
  any letter case.
- A NIfTI file expands to one sample per axial slice; one whose header cannot be used is skipped
  with the reason.
- An empty class folder (e.g. ``test/crack`` with no images) is a counted skip; a mask without a
  matching image is a counted skip.

Grouping and the seeded split, the same for every layout, are in :mod:`pdd.data.loading`;
auto-detection is in :mod:`pdd.data.layouts.detect`.
"""

from __future__ import annotations

from pathlib import Path

from pdd.data.layouts import bmad, brainmri, folder, headct, unimedical, zhanglab
from pdd.data.layouts.base import Found, Layout
from pdd.data.layouts.detect import detect_format
from pdd.errors import DataError

__all__ = ["FORMATS", "LAYOUTS", "Found", "Layout", "detect_format", "get_layout", "list_classes"]

LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        folder.LAYOUT,
        headct.LAYOUT,
        brainmri.LAYOUT,
        zhanglab.LAYOUT,
        unimedical.LAYOUT,
        bmad.LAYOUT,
    )
}
FORMATS = tuple(LAYOUTS)
"""Every layout name ``format=`` accepts besides ``auto``."""


def get_layout(fmt: str) -> Layout:
    """The registered layout ``fmt``; an unknown name is a DataError listing the known ones."""
    if fmt not in FORMATS:
        raise DataError(
            f"unknown dataset format {fmt!r}; choose auto or one of {', '.join(FORMATS)}"
        )
    return LAYOUTS[fmt]


def list_classes(root: str | Path, format: str = "auto") -> list[str]:
    """Class names of a multi-class set (unimedical, bmad, folder); [] for single-class sets."""
    root = Path(root)
    return get_layout(detect_format(root) if format == "auto" else format).classes(root)
