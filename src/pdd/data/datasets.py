"""Dataset layouts on disk -> train / holdout / test lists of :class:`Sample`, and the torch Dataset.

Layouts (``format=``), each one documented where it is parsed below:

- ``folder``     train/good, test/good, test/<kind>, optional ground_truth/<kind>/<stem>[_mask].<ext>;
                 several classes when the root holds one such folder per class.
- ``headct``     labels.csv (``id, hemorrhage`` and an optional ``group`` column) + head_ct/NNN.png.
- ``brainmri``   yes/ (tumour) and no/ (normal); byte-identical duplicates are removed.
- ``zhanglab``   chest_xray/{train,test}/{NORMAL,PNEUMONIA}; the official split is kept.
- ``unimedical`` ADer Uni-Medical meta.json (classes brain, liver, retinal) with masks.
- ``bmad``       train/good, valid/{good,Ungood}, test/{good,Ungood}, each with img/ and label/.

Policies (the same for every layout):

- Files are found by extension (.png .jpg .jpeg .bmp .gif .tif .tiff .dcm .nii .nii.gz); hidden
  files are ignored; other files in image folders are counted in ``skipped``, and so are entries
  that are not regular files (named pipes, sockets, devices, broken links: judged by ``stat``,
  never opened). Pixel data is NOT decoded here (that would read the whole set twice); a broken
  image raises DataError naming the file when :class:`ImageDataset` loads it.
- The folders that hold normal images (good, NORMAL, and train/test/valid above them) match in
  any letter case; in the folder layout a test folder named good or normal (any case) holds
  normal images (kind ``good``), never an anomaly kind.
- A NIfTI file expands to one sample per axial slice; one whose header cannot be read is skipped
  with the reason.
- An empty class folder (e.g. ``test/crack`` with no images) is a counted skip; no normal training
  image at all is a DataError.
- A mask without a matching image is a counted skip. ``has_masks`` is True only when every
  anomalous test image has a mask.
- Every image belongs to a group (:mod:`pdd.data.groups`: a NIfTI volume, a DICOM series and
  patient, a ``group_by`` file-name match, a labels.csv ``group``) that never crosses train /
  holdout / test. Sets without an official split get the seeded group split of
  :mod:`pdd.data.splits` (the normal images of a group with anomalous images go to test with
  them); every set gets a seeded holdout of training groups (BMAD uses its own
  ``valid/good`` instead). A crossing group is a DataError, except in the published splits of
  ZhangLab, Uni-Medical and BMAD, which are kept as given with a warning naming the group.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from pdd.data.files import file_problem, read_text_file
from pdd.data.groups import assign_groups, compile_group_pattern
from pdd.data.readers import image_format, nifti_slice_count, read_image, read_mask
from pdd.data.splits import (
    Sample,
    check_split,
    read_manifest,
    seeded_split,
    write_manifest,
)
from pdd.data.transforms import mask_to_tensor, to_model_input
from pdd.errors import DataError

__all__ = [
    "DEFAULT_HOLDOUT_FRACTION",
    "DEFAULT_TEST_NORMAL_FRACTION",
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "DatasetSplit",
    "ImageDataset",
    "Sample",
    "collect_inputs",
    "detect_format",
    "list_classes",
    "load_dataset",
]

log = logging.getLogger(__name__)

FORMATS = ("folder", "headct", "brainmri", "zhanglab", "unimedical", "bmad")
IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".dcm",
    ".nii",
    ".nii.gz",
)
DEFAULT_TEST_NORMAL_FRACTION = 0.25
"""Share of normal images sent to test when a set has no official split (HeadCT: 25 of 100)."""
DEFAULT_HOLDOUT_FRACTION = 0.1
"""Share of training normals held out for thresholds and heatmap statistics."""

_SALT_TEST, _SALT_HOLDOUT = 1, 2
_UNIMEDICAL_CLASSES = ("brain", "liver", "retinal")
_PUBLISHED = ("zhanglab", "unimedical", "bmad")
"""Layouts whose official split is kept as given (a crossing group there is only a warning)."""
_NORMAL_NAMES = ("good", "normal")


@dataclass
class DatasetSplit:
    """A resolved dataset: which images train, which are held out, which are tested, and what was skipped."""

    train: list[Sample]
    holdout: list[Sample]
    test: list[Sample]
    skipped: list[tuple[str, str]]
    format: str
    root: Path
    has_masks: bool
    class_name: str | None = None

    def write_manifest(self, path: str | Path) -> Path:
        """Write the split as a CSV manifest that ``load_dataset(..., split_file=path)`` reproduces."""
        parts = {"train": self.train, "holdout": self.holdout, "test": self.test}
        return write_manifest(path, parts, self.root)

    def group_counts(self) -> dict[str, int]:
        """How many groups (patients, volumes, series, ...) each set holds, for the run record."""
        return {
            name: len({(s.class_name, s.group_id) for s in part})
            for name, part in (("train", self.train), ("holdout", self.holdout), ("test", self.test))
        }


@dataclass
class _Found:
    """What a layout parser found for one class, before splitting.

    ``test is None`` means no official split (normals in ``train`` are split by seed and ``abnormal``
    all go to test); ``holdout is None`` means no official holdout.
    """

    where: Path
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] | None = None
    abnormal: list[Sample] = field(default_factory=list)
    holdout: list[Sample] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)


# --- file discovery ---------------------------------------------------------------------------


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name in ("Thumbs.db", "desktop.ini", "__MACOSX")


def _has_image_extension(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_EXTENSIONS)


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def _is_nifti_name(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def _sub(parent: Path, *names: str) -> Path:
    """``parent/names...`` where each folder name matches in any letter case (an exact match
    wins); the exact spelling, which does not exist, when nothing matches."""
    path = parent
    for name in names:
        exact = path / name
        if not exact.is_dir() and path.is_dir():
            exact = next(
                (p for p in sorted(path.iterdir()) if p.name.lower() == name.lower() and p.is_dir()),
                exact,
            )
        path = exact
    return path


def _regular(entry: Path, skipped: list[tuple[str, str]] | None) -> bool:
    """Whether ``entry`` is a regular file (judged without opening it); other non-folders are
    counted in ``skipped`` when a list is given."""
    problem = file_problem(entry)
    if problem is not None and skipped is not None and not entry.is_dir():
        skipped.append((str(entry), problem))
    return problem is None


def _images_in(folder: Path, skipped: list[tuple[str, str]]) -> list[Path]:
    """Image files of a folder, sorted; other files are counted skips, an empty folder too."""
    entries = sorted(folder.iterdir())
    images: list[Path] = []
    for entry in entries:
        if _is_hidden(entry) or not _regular(entry, skipped):
            continue
        if _has_image_extension(entry):
            images.append(entry)
        else:
            skipped.append((str(entry), "not an image file (unknown extension)"))
    if not images:
        skipped.append((str(folder), "empty folder: no images"))
    return images


def _expand(
    paths: Iterable[Path],
    skipped: list[tuple[str, str]],
    *,
    label: int,
    kind: str,
    class_name: str | None,
    masks: dict[str, Path] | None = None,
) -> list[Sample]:
    """Samples for image files: NIfTI volumes become one sample per axial slice."""
    samples: list[Sample] = []
    for path in paths:
        mask = masks.get(_stem(path)) if masks else None
        mask_path = str(mask) if mask is not None else None
        if _is_nifti_name(path):
            try:
                count = nifti_slice_count(path)
            except DataError as exc:
                skipped.append((str(path), str(exc).removeprefix(f"{path}: ")))
                continue
            samples += [
                Sample(str(path), label, kind, mask_path, index, class_name)
                for index in range(count)
            ]
        else:
            samples.append(Sample(str(path), label, kind, mask_path, None, class_name))
    return samples


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")
    return path


# --- layouts ------------------------------------------------------------------------------------


def _parse_folder(root: Path, class_name: str | None) -> _Found:
    """train/good, test/good, test/<kind>, ground_truth/<kind>/<stem>[_mask].<ext>.

    Without test/good the normal images of train/good are split by seed."""
    found = _Found(root)
    train_dir = _require_dir(_sub(root, "train", "good"), "normal training image")
    found.train = _expand(
        _images_in(train_dir, found.skipped),
        found.skipped,
        label=0,
        kind="good",
        class_name=class_name,
    )
    test_dir = _sub(root, "test")
    kinds = (
        sorted(p for p in test_dir.iterdir() if p.is_dir() and not _is_hidden(p))
        if test_dir.is_dir()
        else []
    )
    has_test_good = any(k.name.lower() in _NORMAL_NAMES for k in kinds)
    abnormal: list[Sample] = []
    test_normal: list[Sample] = []
    matched_masks: set[Path] = set()
    for kind_dir in kinds:
        images = _images_in(kind_dir, found.skipped)
        if kind_dir.name.lower() in _NORMAL_NAMES:
            test_normal += _expand(
                images, found.skipped, label=0, kind="good", class_name=class_name
            )
            continue
        masks = _mask_index(root / "ground_truth" / kind_dir.name, None)
        by_stem = {_stem(p): p for p in images}
        for stem, mask in masks.items():
            if stem in by_stem:
                matched_masks.add(mask)
        abnormal += _expand(
            images, found.skipped, label=1, kind=kind_dir.name, class_name=class_name, masks=masks
        )
    gt_dir = root / "ground_truth"
    if gt_dir.is_dir():
        for mask in sorted(gt_dir.rglob("*")):
            if _is_hidden(mask) or not _regular(mask, found.skipped) or mask in matched_masks:
                continue
            if _has_image_extension(mask):
                reason = f"mask has no matching image in test/{mask.parent.name}"
            else:
                reason = "not an image file (unknown extension)"
            found.skipped.append((str(mask), reason))
    if has_test_good:
        found.test = test_normal + abnormal
    else:
        found.abnormal = abnormal
    return found


def _mask_index(folder: Path, skipped: list[tuple[str, str]] | None) -> dict[str, Path]:
    """image stem -> mask file, for masks named <stem>.<ext> or <stem>_mask.<ext>; entries that
    are not regular files are counted in ``skipped`` when a list is given."""
    if not folder.is_dir():
        return {}
    index: dict[str, Path] = {}
    for mask in sorted(folder.iterdir()):
        if not _is_hidden(mask) and _regular(mask, skipped) and _has_image_extension(mask):
            stem = _stem(mask)
            index[stem.removesuffix("_mask")] = mask
    return index


def _headct_root(root: Path) -> Path:
    """The Kaggle archive nests head_ct/head_ct; accept both."""
    return (
        root / "head_ct" / "head_ct"
        if (root / "head_ct" / "head_ct").is_dir()
        else root / "head_ct"
    )


def _parse_headct(root: Path, class_name: str | None) -> _Found:
    """labels.csv with header ``id, hemorrhage`` (the space is in the published file) and optionally
    ``group`` (e.g. a patient id: images of one group never cross sets); image id N is
    head_ct/NNN.png. Every id needs its image and every image its id: a mismatch means a broken copy."""
    labels_path = root / "labels.csv"
    image_dir = _require_dir(_headct_root(root), "head_ct image")
    rows = list(csv.reader(read_text_file(labels_path, "labels file").splitlines()))
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if header not in (["id", "hemorrhage"], ["id", "hemorrhage", "group"]):
        raise DataError(
            f"{labels_path}: header must be 'id, hemorrhage' or 'id, hemorrhage, group'"
        )
    expected = "'<id>, <0|1>'" if len(header) == 2 else "'<id>, <0|1>, <group>'"
    found = _Found(root)
    images = {p.name: p for p in _images_in(image_dir, found.skipped)}
    seen: set[str] = set()
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        cells = [c.strip() for c in row]
        if len(cells) != len(header) or not cells[0].isdigit() or cells[1] not in ("0", "1"):
            raise DataError(
                f"{labels_path}: line {line_no}: expected {expected}, got {','.join(row)!r}"
            )
        group = cells[2] if len(cells) > 2 and cells[2] else None
        name = f"{int(cells[0]):03d}.png"
        if name in seen:
            raise DataError(f"{labels_path}: line {line_no}: id {cells[0]} is listed twice")
        seen.add(name)
        image = images.get(name)
        if image is None:
            raise DataError(f"{labels_path}: id {cells[0]} has no image file {image_dir / name}")
        if cells[1] == "1":
            found.abnormal.append(
                Sample(str(image), 1, "hemorrhage", None, None, class_name, group)
            )
        else:
            found.train.append(Sample(str(image), 0, "good", None, None, class_name, group))
    for name, image in sorted(images.items()):
        if name not in seen:
            raise DataError(f"{image}: image has no id in {labels_path}")
    return found


def _brainmri_root(root: Path) -> Path:
    nested = root / "brain_tumor_dataset"
    return nested if (nested / "yes").is_dir() else root


def _parse_brainmri(root: Path, class_name: str | None) -> _Found:
    """yes/ = tumour, no/ = normal. Byte-identical copies inside the set are removed (the published
    set has some); when copies carry different labels all of them are dropped, as neither label
    can be trusted."""
    base = _brainmri_root(root)
    found = _Found(root)
    labelled = [
        (p, 0) for p in _images_in(_require_dir(base / "no", "no/ (normal)"), found.skipped)
    ]
    labelled += [
        (p, 1) for p in _images_in(_require_dir(base / "yes", "yes/ (tumour)"), found.skipped)
    ]
    groups: dict[str, list[tuple[Path, int]]] = {}
    for path, label in labelled:
        groups.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append((path, label))
    for copies in groups.values():
        first, label = copies[0]
        if len({lab for _, lab in copies}) > 1:
            for path, _ in copies:
                found.skipped.append(
                    (str(path), "byte-identical copies are labelled both yes and no")
                )
            continue
        for path, _ in copies[1:]:
            found.skipped.append((str(path), f"byte-identical duplicate of {first}"))
        target = found.abnormal if label else found.train
        target += _expand(
            [first],
            found.skipped,
            label=label,
            kind="tumor" if label else "good",
            class_name=class_name,
        )
    found.train.sort(key=lambda s: s.key)
    found.abnormal.sort(key=lambda s: s.key)
    return found


def _zhanglab_root(root: Path) -> Path:
    """Accept the folder holding chest_xray/ (also the archive's chest_xray/chest_xray) or chest_xray itself."""
    for candidate in (root / "chest_xray" / "chest_xray", root / "chest_xray", root):
        if _sub(candidate, "train", "NORMAL").is_dir():
            return candidate
    raise DataError(f"{root}: chest_xray/train/NORMAL folder not found")


def _parse_zhanglab(root: Path, class_name: str | None) -> _Found:
    """Official split: train/NORMAL trains; test/NORMAL and test/PNEUMONIA test. train/PNEUMONIA and
    val/ are not used (unsupervised training sees normals only; val has 16 images)."""
    base = _zhanglab_root(root)
    found = _Found(root)
    found.train = _expand(
        _images_in(_sub(base, "train", "NORMAL"), found.skipped),
        found.skipped,
        label=0,
        kind="good",
        class_name=class_name,
    )
    test_normal = _images_in(
        _require_dir(_sub(base, "test", "NORMAL"), "test/NORMAL"), found.skipped
    )
    test_pneu = _images_in(
        _require_dir(_sub(base, "test", "PNEUMONIA"), "test/PNEUMONIA"), found.skipped
    )
    found.test = _expand(test_normal, found.skipped, label=0, kind="good", class_name=class_name)
    found.test += _expand(
        test_pneu, found.skipped, label=1, kind="pneumonia", class_name=class_name
    )
    return found


def _read_meta(root: Path) -> dict:
    meta_path = root / "meta.json"
    try:
        meta = json.loads(read_text_file(meta_path, "meta.json"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{meta_path}: not valid JSON ({exc})") from exc
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("train"), dict)
        or not isinstance(meta.get("test"), dict)
    ):
        raise DataError(
            f"{meta_path}: expected an object with 'train' and 'test' maps of class -> records"
        )
    return meta


def _parse_unimedical(root: Path, class_name: str | None) -> list[_Found]:
    """ADer meta.json: ``{"train"|"test": {class: [{img_path, mask_path, cls_name, specie_name,
    anomaly}, ...]}}`` with paths relative to the root. A listed file that is missing is a DataError
    (a broken download); an anomalous record in a train list is a counted skip."""
    meta_path = root / "meta.json"
    meta = _read_meta(root)
    classes = [class_name] if class_name else sorted(meta["train"])
    per_class: list[_Found] = []
    for cls in classes:
        found = _Found(root / cls, test=[])
        per_class.append(found)
        if cls not in meta["train"] or cls not in meta["test"]:
            raise DataError(
                f"{meta_path}: class {cls!r} not found (classes: {', '.join(sorted(meta['train']))})"
            )
        for phase in ("train", "test"):
            records = meta[phase][cls]
            if not isinstance(records, list):
                raise DataError(f"{meta_path}: {phase}/{cls} must be a list of records")
            for number, record in enumerate(records):
                where = f"{meta_path}: {phase}/{cls} record {number}"
                if (
                    not isinstance(record, dict)
                    or "img_path" not in record
                    or "anomaly" not in record
                ):
                    raise DataError(f"{where}: needs img_path and anomaly")
                image = _meta_file(root, str(record["img_path"]), where, "image")
                label = int(record["anomaly"])
                if label not in (0, 1):
                    raise DataError(f"{where}: anomaly must be 0 or 1, got {record['anomaly']!r}")
                mask_rel = record.get("mask_path") or ""
                mask = (
                    str(_meta_file(root, str(mask_rel), where, "mask"))
                    if mask_rel and label == 1
                    else None
                )
                kind = "good" if label == 0 else str(record.get("specie_name") or "ungood")
                if phase == "train" and label == 1:
                    found.skipped.append((str(image), "anomalous image in a train list"))
                    continue
                samples = _expand([image], found.skipped, label=label, kind=kind, class_name=cls)
                if mask is not None:
                    samples = [
                        Sample(s.path, s.label, s.kind, mask, s.slice_index, s.class_name)
                        for s in samples
                    ]
                (found.train if phase == "train" else found.test).extend(samples)  # type: ignore[union-attr]
    return per_class


def _meta_file(root: Path, listed: str, where: str, what: str) -> Path:
    """A file meta.json lists: a regular file inside the root, else a DataError naming the record."""
    path = root / listed
    if not Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root)):
        raise DataError(f"{where}: {what} {listed!r} is outside the dataset folder {root}")
    problem = file_problem(path)
    if problem == "file not found":
        raise DataError(f"{where}: {what} file not found: {path}")
    if problem is not None:
        raise DataError(f"{where}: {what} file {path}: {problem}")
    return path


def _bmad_images(folder: Path, skipped: list[tuple[str, str]]) -> list[Path]:
    """BMAD keeps images in <split>/<good|Ungood>/img/; some sets put them directly in the folder."""
    images = _sub(folder, "img")
    return _images_in(images if images.is_dir() else folder, skipped)


def _parse_bmad_one(root: Path, class_name: str | None) -> _Found:
    """train/good, valid/{good,Ungood}, test/{good,Ungood}; masks in label/ with the image's name.
    valid/good is the holdout (an official one); valid/Ungood is not used."""
    found = _Found(root, test=[])
    found.train = _expand(
        _bmad_images(_require_dir(_sub(root, "train", "good"), "train/good"), found.skipped),
        found.skipped,
        label=0,
        kind="good",
        class_name=class_name,
    )
    if _sub(root, "valid", "good").is_dir():
        found.holdout = _expand(
            _bmad_images(_sub(root, "valid", "good"), found.skipped),
            found.skipped,
            label=0,
            kind="good",
            class_name=class_name,
        )
    test_good = _require_dir(_sub(root, "test", "good"), "test/good")
    found.test = _expand(
        _bmad_images(test_good, found.skipped),
        found.skipped,
        label=0,
        kind="good",
        class_name=class_name,
    )
    bad_dir = _require_dir(_sub(root, "test", "Ungood"), "test/Ungood")
    masks = _mask_index(_sub(bad_dir, "label"), found.skipped)
    images = _bmad_images(bad_dir, found.skipped)
    stems = {_stem(p) for p in images}
    for stem, mask in sorted(masks.items()):
        if stem not in stems:
            found.skipped.append((str(mask), "mask has no matching image in test/Ungood/img"))
    found.test += _expand(
        images, found.skipped, label=1, kind="Ungood", class_name=class_name, masks=masks
    )
    return found


def _subclass_dirs(root: Path, marker: Sequence[str]) -> list[Path]:
    return (
        sorted(
            p
            for p in root.iterdir()
            if p.is_dir() and not _is_hidden(p) and _sub(p, *marker).is_dir()
        )
        if root.is_dir()
        else []
    )


def _multi_class(
    root: Path,
    class_name: str | None,
    parse_one: Callable[[Path, str | None], _Found],
    marker: Sequence[str],
    fmt: str,
) -> list[_Found]:
    """A layout stored either at the root (one class) or once per class in sub-folders."""
    if _sub(root, *marker).is_dir():
        if class_name is not None:
            raise DataError(f"{root}: {fmt} set has a single class; do not pass a class name")
        return [parse_one(root, None)]
    classes = _subclass_dirs(root, marker)
    if class_name is not None:
        if class_name not in [c.name for c in classes]:
            raise DataError(
                f"{root}: class {class_name!r} not found (classes: {', '.join(c.name for c in classes) or 'none'})"
            )
        return [parse_one(root / class_name, class_name)]
    if not classes:
        raise DataError(f"{root}: no {'/'.join(marker)} folder found for the {fmt} layout")
    return [parse_one(cls, cls.name) for cls in classes]


def _parse(fmt: str, root: Path, class_name: str | None) -> list[_Found]:
    if fmt == "folder":
        return _multi_class(root, class_name, _parse_folder, ("train", "good"), fmt)
    if fmt == "bmad":
        return _multi_class(root, class_name, _parse_bmad_one, ("train", "good"), fmt)
    if fmt == "unimedical":
        return _parse_unimedical(root, class_name)
    if class_name is not None:
        raise DataError(f"{root}: {fmt} set has a single class; do not pass a class name")
    return [
        {"headct": _parse_headct, "brainmri": _parse_brainmri, "zhanglab": _parse_zhanglab}[fmt](
            root, None
        )
    ]


# --- auto-detection -------------------------------------------------------------------------------

_LOOKED_FOR = (
    "meta.json (unimedical), labels.csv + head_ct/ (headct), yes/ + no/ (brainmri), "
    "chest_xray/ or train/NORMAL (zhanglab), train/good + valid/ or test/Ungood (bmad), "
    "train/good (folder), each at the root or one level down per class"
)


def _is_bmad(path: Path) -> bool:
    # valid/ and test/Ungood match exactly: Uni-Medical's test/ungood must not look like BMAD
    return _sub(path, "train", "good").is_dir() and (
        (path / "valid").is_dir() or (path / "test" / "Ungood").is_dir()
    )


def _matches(root: Path) -> list[str]:
    found: list[str] = []
    if (root / "meta.json").is_file():
        found.append("unimedical")
    if (root / "labels.csv").is_file() and (root / "head_ct").is_dir():
        found.append("headct")
    if ((root / "yes").is_dir() and (root / "no").is_dir()) or (
        root / "brain_tumor_dataset" / "yes"
    ).is_dir():
        found.append("brainmri")
    if (root / "chest_xray").is_dir() or _sub(root, "train", "NORMAL").is_dir():
        found.append("zhanglab")
    subdirs = _subclass_dirs(root, ("train", "good"))
    single = _sub(root, "train", "good").is_dir()
    if _is_bmad(root) or (not single and subdirs and all(_is_bmad(d) for d in subdirs)):
        found.append("bmad")
    elif (single or subdirs) and not found:
        found.append("folder")  # the generic layout only when no published layout's marker is there
    return found


def detect_format(root: str | Path) -> str:
    """The layout of a dataset folder, judged by its marker files and folders."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    matches = _matches(root)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DataError(f"{root}: unknown dataset layout; looked for {_LOOKED_FOR}")
    raise DataError(
        f"{root}: ambiguous dataset layout, matches {' and '.join(matches)}; pass the format explicitly"
    )


def list_classes(root: str | Path, format: str = "auto") -> list[str]:
    """Class names of a multi-class set (unimedical, bmad, folder); [] for single-class sets."""
    root = Path(root)
    fmt = detect_format(root) if format == "auto" else _check_format(format)
    if fmt == "unimedical":
        return sorted(_read_meta(root)["train"])
    if fmt in ("folder", "bmad") and not _sub(root, "train", "good").is_dir():
        return [p.name for p in _subclass_dirs(root, ("train", "good"))]
    return []


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise DataError(
            f"unknown dataset format {fmt!r}; choose auto or one of {', '.join(FORMATS)}"
        )
    return fmt


# --- the entry point ------------------------------------------------------------------------------


def load_dataset(
    root: str | Path,
    format: str = "auto",
    *,
    class_name: str | None = None,
    seed: int = 0,
    split_file: str | Path | None = None,
    test_normal_fraction: float = DEFAULT_TEST_NORMAL_FRACTION,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    group_by: str | re.Pattern[str] | None = None,
) -> DatasetSplit:
    """Find a dataset's images and split them into train / holdout / test, whole groups at a time.

    ``group_by`` is a regular expression: an image's group is its first match in the file name (or
    the match's group 1 when the pattern has a group), merged with the volume / DICOM / labels.csv
    groups; a file name that does not match is a DataError. With ``split_file`` the split is read
    from that manifest instead (and must still match files on disk), so a published result can be
    reproduced exactly; the folder is not rescanned then, so ``skipped`` is empty and ``seed`` and
    the fractions are not used; ``class_name`` then selects that class's rows. A group in two sets is a DataError naming it (a warning for the
    published splits of ZhangLab, Uni-Medical and BMAD).
    """
    root = Path(root)
    pattern = compile_group_pattern(group_by)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if format == "auto":
        fmt = detect_format(root)
        log.info("%s: detected dataset layout %r", root, fmt)
    else:
        fmt = _check_format(format)
    if split_file is not None:
        parts = read_manifest(split_file, root, group_by=pattern, published=fmt in _PUBLISHED)
        if class_name is not None:
            parts = _one_class(parts, class_name, split_file)
        if not parts["train"]:
            raise DataError(f"{split_file}: manifest has no training images")
        classes = {s.class_name for part in parts.values() for s in part}
        return DatasetSplit(
            train=parts["train"],
            holdout=parts["holdout"],
            test=parts["test"],
            skipped=[],
            format=fmt,
            root=root,
            has_masks=_all_masked(parts["test"]),
            class_name=next(iter(classes)) if len(classes) == 1 else None,
        )
    train: list[Sample] = []
    holdout: list[Sample] = []
    test: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    for found in _parse(fmt, root, class_name):
        if not found.train:
            raise DataError(f"{found.where}: no normal training images found for the {fmt} layout")
        class_train, class_holdout, class_test = _split(
            _grouped(found, root, pattern), seed, test_normal_fraction, holdout_fraction
        )
        train += class_train
        holdout += class_holdout
        test += class_test
        skipped += found.skipped
    check_split(train, holdout, test, str(root), published=fmt in _PUBLISHED)
    return DatasetSplit(
        train=train,
        holdout=holdout,
        test=test,
        skipped=skipped,
        format=fmt,
        root=root,
        has_masks=_all_masked(test),
        class_name=class_name,
    )


def _one_class(
    parts: dict[str, list[Sample]], class_name: str, split_file: str | Path
) -> dict[str, list[Sample]]:
    """The rows of one class of a manifest; a class it does not hold is a DataError, never an
    empty or foreign split."""
    chosen = {name: [s for s in part if s.class_name == class_name] for name, part in parts.items()}
    if not any(chosen.values()):
        classes = sorted({s.class_name or "" for part in parts.values() for s in part} - {""})
        raise DataError(
            f"{split_file}: manifest has no rows of class {class_name!r} "
            f"(classes: {', '.join(classes) or 'none, a single-class set'})"
        )
    return chosen


def _grouped(found: _Found, root: Path, pattern: re.Pattern[str] | None) -> _Found:
    """``found`` with every sample's group assigned, over all of its lists at once (a patient with
    images in train/good and test/good is one group)."""
    lists = [found.train, found.test or [], found.abnormal, found.holdout or []]
    flat = assign_groups([s for part in lists for s in part], root, pattern)
    grouped: list[list[Sample]] = []
    for part in lists:
        grouped.append(flat[: len(part)])
        flat = flat[len(part) :]
    return dataclasses.replace(
        found,
        train=grouped[0],
        test=None if found.test is None else grouped[1],
        abnormal=grouped[2],
        holdout=None if found.holdout is None else grouped[3],
    )


def _draw(
    where: Path,
    samples: list[Sample],
    fraction: float,
    seed: int,
    salt: int,
    what: str,
    must_take: Collection[tuple[str, str]] = (),
) -> tuple[list[Sample], list[Sample]]:
    """The seeded group draw; refusing, rather than leaking, when a single group holds them all."""
    kept, taken = seeded_split(samples, fraction, seed, salt, must_take)
    if not kept:
        raise DataError(
            f"{where}: no normal training images left: every normal image shares a group "
            "with an anomalous (tested) image"
        )
    if not taken and fraction > 0 and len(samples) >= 2:
        raise DataError(
            f"{where}: cannot hold out {what} normal images: all {len(samples)} belong to group "
            f"{samples[0].group_id!r} (one volume, series, patient or group), which must stay "
            "in one set"
        )
    return kept, taken


def _split(
    found: _Found, seed: int, test_fraction: float, holdout_fraction: float
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """One class: the seeded normal test split when there is no official one, then the holdout."""
    train = list(found.train)
    if found.test is None:
        tested = {(s.class_name or "", s.group_id) for s in found.abnormal}
        train, test_normal = _draw(
            found.where, train, test_fraction, seed, _SALT_TEST, "test", tested
        )
        test = test_normal + found.abnormal
    else:
        test = list(found.test)
    if found.holdout is None:
        train, holdout = _draw(
            found.where, train, holdout_fraction, seed, _SALT_HOLDOUT, "holdout"
        )
    else:
        holdout = list(found.holdout)
    return train, holdout, test


def _all_masked(test: Sequence[Sample]) -> bool:
    anomalous = [s for s in test if s.label == 1]
    return bool(anomalous) and all(s.mask_path for s in anomalous)


# --- prediction inputs ------------------------------------------------------------------------------


def _input_files(folder: Path, report: Callable[[Path, str], None]) -> list[Path]:
    """Every non-hidden entry below ``folder`` that is not a folder, sorted. Links to folders are
    followed, each real folder once (judged by device and inode), so a link loop ends where it
    closes; a folder that cannot be listed is reported."""
    found: list[Path] = []
    visited: set[tuple[int, int]] = set()

    def unreadable(exc: OSError) -> None:
        report(Path(exc.filename or folder), f"cannot read folder ({exc.strerror or exc})")

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        info = os.stat(dirpath)
        if (info.st_dev, info.st_ino) in visited:
            dirnames.clear()
            continue
        visited.add((info.st_dev, info.st_ino))
        dirnames[:] = sorted(name for name in dirnames if not _is_hidden(Path(dirpath, name)))
        found += [Path(dirpath, name) for name in filenames if not _is_hidden(Path(dirpath, name))]
    return sorted(found)


def collect_inputs(
    paths: Sequence[str | Path], skipped: list[tuple[str, str]] | None = None
) -> list[Sample]:
    """Samples (label -1, kind ``unknown``) for ``pdd predict``: files, folders searched recursively,
    DICOM and NIfTI (one sample per axial slice).

    Files are recognised by content. A file that looks like an image by name or content but cannot be
    used is reported: appended to ``skipped`` as (path, reason) when a list is given, else raised as
    DataError. So is every entry that is not a regular file (named pipe, socket, device, broken
    link: judged by ``stat``, never opened), a NIfTI volume without slices and a folder that cannot
    be listed. Files in folders that are not images at all (no image extension, no image content,
    e.g. a README) are ignored. Links to folders are followed, each real folder once. Each file is
    taken once, under its first spelling (paths are compared after resolving links), so a file
    given twice, or given with its folder, is scored once. A path that does not exist is always a
    DataError.
    """
    samples: list[Sample] = []
    seen: set[str] = set()

    def report(path: Path, reason: str) -> None:
        if skipped is None:
            raise DataError(f"{path}: {reason}")
        skipped.append((str(path), reason))

    for given in paths:
        given = Path(given)
        if given.is_dir():
            candidates = _input_files(given, report)
            explicit = False
        elif os.path.lexists(given):
            candidates = [given]
            explicit = True
        else:
            raise DataError(f"{given}: input not found")
        for path in candidates:
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            try:
                problem = file_problem(path)
                if problem is not None:
                    raise DataError(f"{path}: {problem}")
                fmt = image_format(path)
                if fmt is None:
                    if explicit or _has_image_extension(path):
                        raise DataError(
                            f"{path}: not an image file (content is not PNG, JPEG, BMP, GIF, TIFF, DICOM or NIfTI)"
                        )
                    continue
                if fmt == "nifti":
                    count = nifti_slice_count(path)
                    samples += [
                        Sample(str(path), -1, "unknown", None, i, None) for i in range(count)
                    ]
                else:
                    samples.append(Sample(str(path), -1, "unknown", None, None, None))
            except DataError as exc:
                report(path, str(exc).removeprefix(f"{path}: "))
    return samples


# --- torch Dataset ------------------------------------------------------------------------------------


class ImageDataset(Dataset):
    """Samples -> dicts of ``image`` [3,S,S] float32 (normalised), ``label`` int64 scalar,
    ``mask`` [1,S,S] float32 (zeros when the sample has none), ``index`` int.

    A file that fails to read raises DataError naming it: a silent zero image would train or score
    garbage without anyone noticing.
    """

    def __init__(self, samples: Sequence[Sample], image_size: int) -> None:
        self.samples = list(samples)
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        sample = self.samples[index]
        image = read_image(sample.path, sample.slice_index)
        if sample.mask_path:
            mask = read_mask(
                sample.mask_path,
                image.shape[:2],
                sample.slice_index if _is_nifti_name(Path(sample.mask_path)) else None,
            )
            mask_tensor = mask_to_tensor(mask, self.image_size)
        else:
            mask_tensor = torch.zeros(1, self.image_size, self.image_size)
        return {
            "image": to_model_input(image, self.image_size),
            "label": torch.tensor(sample.label, dtype=torch.int64),
            "mask": mask_tensor,
            "index": index,
        }
