"""The ``bmad`` layout (BMAD benchmark), one class at the root or one per sub-folder::

    train/good/                 normal training images
    valid/good/, valid/Ungood/  the official holdout (valid/Ungood is not used)
    test/good/, test/Ungood/    test images; masks in test/Ungood/label/ with the image's name

Each of these folders keeps its images in img/ (some sets put them directly in the folder). The
published split is kept as given.
"""

from __future__ import annotations

from pathlib import Path

from pdd.data.files import file_stem
from pdd.data.layouts.base import Found, Layout, multi_class, sub_folder_classes
from pdd.data.layouts.discovery import (
    Skipped,
    expand,
    images_in,
    mask_index,
    require_dir,
    sub,
)

__all__ = ["LAYOUT", "is_bmad", "parse_bmad_class"]

_MARKER = ("train", "good")


def is_bmad(path: Path) -> bool:
    """BMAD's markers at ``path``. valid/ and test/Ungood match exactly: Uni-Medical's
    test/ungood must not look like BMAD."""
    return sub(path, *_MARKER).is_dir() and (
        (path / "valid").is_dir() or (path / "test" / "Ungood").is_dir()
    )


def _bmad_images(folder: Path, skipped: Skipped) -> list[Path]:
    images = sub(folder, "img")
    return images_in(images if images.is_dir() else folder, skipped)


def parse_bmad_class(root: Path, class_name: str | None) -> Found:
    """One class: train/good, valid/good as the official holdout, test/{good,Ungood} with masks."""
    found = Found(root, test=[])
    found.train = expand(
        _bmad_images(require_dir(sub(root, "train", "good"), "train/good"), found.skipped),
        found.skipped,
        label=0,
        kind="good",
        class_name=class_name,
    )
    if sub(root, "valid", "good").is_dir():
        found.holdout = expand(
            _bmad_images(sub(root, "valid", "good"), found.skipped),
            found.skipped,
            label=0,
            kind="good",
            class_name=class_name,
        )
    test_good = require_dir(sub(root, "test", "good"), "test/good")
    found.test = expand(
        _bmad_images(test_good, found.skipped),
        found.skipped,
        label=0,
        kind="good",
        class_name=class_name,
    )
    bad_dir = require_dir(sub(root, "test", "Ungood"), "test/Ungood")
    masks = mask_index(sub(bad_dir, "label"), found.skipped)
    images = _bmad_images(bad_dir, found.skipped)
    stems = {file_stem(p) for p in images}
    for stem, mask in sorted(masks.items()):
        if stem not in stems:
            found.skipped.append((str(mask), "mask has no matching image in test/Ungood/img"))
    found.test += expand(
        images, found.skipped, label=1, kind="Ungood", class_name=class_name, masks=masks
    )
    return found


LAYOUT = Layout(
    name="bmad",
    parse=lambda root, class_name: multi_class(root, class_name, parse_bmad_class, _MARKER, "bmad"),
    classes=lambda root: sub_folder_classes(root, _MARKER),
    published=True,
)
