"""The ``brainmri`` layout (Kaggle Brain MRI Images for Brain Tumor Detection): yes/ and no/.

yes/ holds tumours, no/ normal images, either at the root or in brain_tumor_dataset/. There is no
official split. Byte-identical copies inside the set are removed (the published set has some).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pdd.data.layouts.base import Found, Layout, single_class
from pdd.data.layouts.discovery import expand, images_in, require_dir

__all__ = ["LAYOUT", "parse_brainmri"]


def _base(root: Path) -> Path:
    nested = root / "brain_tumor_dataset"
    return nested if (nested / "yes").is_dir() else root


def parse_brainmri(root: Path, class_name: str | None) -> Found:
    """yes/ = tumour, no/ = normal. When byte-identical copies carry different labels all of them
    are dropped, as neither label can be trusted."""
    base = _base(root)
    found = Found(root)
    labelled = [
        (p, 0) for p in images_in(require_dir(base / "no", "no/ (normal)"), found.skipped)
    ]
    labelled += [
        (p, 1) for p in images_in(require_dir(base / "yes", "yes/ (tumour)"), found.skipped)
    ]
    copies_of: dict[str, list[tuple[Path, int]]] = {}
    for path, label in labelled:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        copies_of.setdefault(digest, []).append((path, label))
    for copies in copies_of.values():
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
        target += expand(
            [first],
            found.skipped,
            label=label,
            kind="tumor" if label else "good",
            class_name=class_name,
        )
    found.train.sort(key=lambda s: s.key)
    found.abnormal.sort(key=lambda s: s.key)
    return found


LAYOUT = Layout(name="brainmri", parse=single_class(parse_brainmri, "brainmri"))
