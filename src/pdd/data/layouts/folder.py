"""The generic ``folder`` layout (MVTec AD style), one class at the root or one per sub-folder::

    train/good/            normal training images
    test/good/             normal test images (optional; any letter case, ``normal`` too)
    test/<kind>/           anomalous test images of that kind
    ground_truth/<kind>/   optional masks named <stem>.<ext> or <stem>_mask.<ext>

Without test/good the normal images of train/good are split by seed. A test folder named good or
normal (any case) holds normal images (kind ``good``), never an anomaly kind.
"""

from __future__ import annotations

from pathlib import Path

from pdd.data.files import file_stem, has_image_extension, is_hidden
from pdd.data.layouts.base import Found, Layout, multi_class, sub_folder_classes
from pdd.data.layouts.discovery import (
    expand,
    images_in,
    mask_index,
    regular,
    require_dir,
    sub,
)
from pdd.data.sample import Sample

__all__ = ["LAYOUT", "NORMAL_NAMES", "parse_folder_class"]

NORMAL_NAMES = ("good", "normal")
"""Test folder names (any letter case) that hold normal images."""

_MARKER = ("train", "good")


def parse_folder_class(root: Path, class_name: str | None) -> Found:
    """One class: train/good, test/good, test/<kind>, ground_truth/<kind>/<stem>[_mask].<ext>."""
    found = Found(root)
    train_dir = require_dir(sub(root, "train", "good"), "normal training image")
    found.train = expand(
        images_in(train_dir, found.skipped),
        found.skipped,
        label=0,
        kind="good",
        class_name=class_name,
    )
    test_dir = sub(root, "test")
    kinds = (
        sorted(p for p in test_dir.iterdir() if p.is_dir() and not is_hidden(p))
        if test_dir.is_dir()
        else []
    )
    has_test_good = any(k.name.lower() in NORMAL_NAMES for k in kinds)
    abnormal: list[Sample] = []
    test_normal: list[Sample] = []
    matched_masks: set[Path] = set()
    for kind_dir in kinds:
        images = images_in(kind_dir, found.skipped)
        if kind_dir.name.lower() in NORMAL_NAMES:
            test_normal += expand(
                images, found.skipped, label=0, kind="good", class_name=class_name
            )
            continue
        masks = mask_index(root / "ground_truth" / kind_dir.name, None)
        by_stem = {file_stem(p): p for p in images}
        for stem, mask in masks.items():
            if stem in by_stem:
                matched_masks.add(mask)
        abnormal += expand(
            images, found.skipped, label=1, kind=kind_dir.name, class_name=class_name, masks=masks
        )
    _skip_unmatched_masks(root / "ground_truth", matched_masks, found)
    if has_test_good:
        found.test = test_normal + abnormal
    else:
        found.abnormal = abnormal
    return found


def _skip_unmatched_masks(gt_dir: Path, matched: set[Path], found: Found) -> None:
    """Every file under ground_truth/ that is not the mask of a test image is a counted skip."""
    if not gt_dir.is_dir():
        return
    for mask in sorted(gt_dir.rglob("*")):
        if is_hidden(mask) or not regular(mask, found.skipped) or mask in matched:
            continue
        if has_image_extension(mask):
            reason = f"mask has no matching image in test/{mask.parent.name}"
        else:
            reason = "not an image file (unknown extension)"
        found.skipped.append((str(mask), reason))


LAYOUT = Layout(
    name="folder",
    parse=lambda root, class_name: multi_class(
        root, class_name, parse_folder_class, _MARKER, "folder"
    ),
    classes=lambda root: sub_folder_classes(root, _MARKER),
)
