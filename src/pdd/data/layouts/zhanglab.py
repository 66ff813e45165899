"""The ``zhanglab`` layout (Kermany et al. chest X-ray): chest_xray/{train,test}/{NORMAL,PNEUMONIA}.

The official split is kept: train/NORMAL trains; test/NORMAL and test/PNEUMONIA test.
train/PNEUMONIA and val/ are not used (unsupervised training sees normals only; val has 16 images).
"""

from __future__ import annotations

from pathlib import Path

from pdd.data.layouts.base import Found, Layout, single_class
from pdd.data.layouts.discovery import expand, images_in, require_dir, sub
from pdd.errors import DataError

__all__ = ["LAYOUT", "parse_zhanglab"]


def _base(root: Path) -> Path:
    """Accept the folder holding chest_xray/ (also the archive's chest_xray/chest_xray) or chest_xray itself."""
    for candidate in (root / "chest_xray" / "chest_xray", root / "chest_xray", root):
        if sub(candidate, "train", "NORMAL").is_dir():
            return candidate
    raise DataError(f"{root}: chest_xray/train/NORMAL folder not found")


def parse_zhanglab(root: Path, class_name: str | None) -> Found:
    base = _base(root)
    found = Found(root)
    found.train = expand(
        images_in(sub(base, "train", "NORMAL"), found.skipped),
        found.skipped,
        label=0,
        kind="good",
        class_name=class_name,
    )
    test_normal = images_in(
        require_dir(sub(base, "test", "NORMAL"), "test/NORMAL"), found.skipped
    )
    test_pneu = images_in(
        require_dir(sub(base, "test", "PNEUMONIA"), "test/PNEUMONIA"), found.skipped
    )
    found.test = expand(test_normal, found.skipped, label=0, kind="good", class_name=class_name)
    found.test += expand(
        test_pneu, found.skipped, label=1, kind="pneumonia", class_name=class_name
    )
    return found


LAYOUT = Layout(
    name="zhanglab", parse=single_class(parse_zhanglab, "zhanglab"), published=True
)
