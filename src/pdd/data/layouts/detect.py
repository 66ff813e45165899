"""Which layout a dataset folder has, judged by its marker files and folders (``format="auto"``)."""

from __future__ import annotations

from pathlib import Path

from pdd.data.layouts.bmad import is_bmad
from pdd.data.layouts.discovery import sub, subclass_dirs
from pdd.errors import DataError

__all__ = ["detect_format"]

_LOOKED_FOR = (
    "meta.json (unimedical), labels.csv + head_ct/ (headct), yes/ + no/ (brainmri), "
    "chest_xray/ or train/NORMAL (zhanglab), train/good + valid/ or test/Ungood (bmad), "
    "train/good (folder), each at the root or one level down per class"
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
    if (root / "chest_xray").is_dir() or sub(root, "train", "NORMAL").is_dir():
        found.append("zhanglab")
    subdirs = subclass_dirs(root, ("train", "good"))
    single = sub(root, "train", "good").is_dir()
    if is_bmad(root) or (not single and subdirs and all(is_bmad(d) for d in subdirs)):
        found.append("bmad")
    elif (single or subdirs) and not found:
        found.append("folder")  # the generic layout only when no published layout's marker is there
    return found


def detect_format(root: str | Path) -> str:
    """The layout of a dataset folder; none or several matching is a DataError saying so."""
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
