"""Which images belong together: the groups that a split must never cut.

Images are linked when they are slices of one file (a NIfTI volume), files of one DICOM series
(SeriesInstanceUID) or of one patient (DICOM PatientID, when present), files whose names give the
same ``group_by`` match, or rows with the same ``group`` value in labels.csv or a split manifest.
A group is a connected component of these links, so a patient stays whole even when only some of
its files carry the PatientID. An image linked to nothing is its own group.

A group is named by its strongest key: a given ``group`` value, else the ``group_by`` match, else
``patient:<PatientID>``, else ``series:<SeriesInstanceUID>``, else the file's path relative to the
dataset root. Only DICOM headers are read, never pixel data.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pdd.data.sample import Sample
from pdd.errors import DataError

__all__ = ["assign_groups", "compile_group_pattern", "name_group"]

# Key strengths, strongest first; a group's name is its strongest key.
_GIVEN, _PATTERN, _PATIENT, _SERIES, _FILE = range(5)


def compile_group_pattern(pattern: str | re.Pattern[str] | None) -> re.Pattern[str] | None:
    """The ``group_by`` regular expression, compiled; a bad one is a DataError naming it."""
    if pattern is None or isinstance(pattern, re.Pattern):
        return pattern
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise DataError(f"group_by {pattern!r}: not a valid regular expression ({exc})") from exc


def name_group(pattern: re.Pattern[str], path: str | Path) -> str:
    """The group of a file by its name: the pattern's first match, or its group 1 when it has
    groups. A name that does not match is a DataError: guessing would let a patient cross sets."""
    found = pattern.search(Path(path).name)
    value = None if found is None else found.group(1) if pattern.groups else found.group(0)
    if not value:
        raise DataError(
            f"{path}: file name does not match the group_by pattern {pattern.pattern!r}"
        )
    return value


def _dicom_ids(path: str) -> tuple[str, str]:
    """(PatientID, SeriesInstanceUID) from the header only; empty strings when absent or unreadable
    (an unreadable file fails later, naming itself, when its pixels are read)."""
    import pydicom

    try:
        ds = pydicom.dcmread(
            path,
            force=True,
            stop_before_pixels=True,
            specific_tags=["PatientID", "SeriesInstanceUID"],
        )
        return str(ds.get("PatientID", "") or "").strip(), str(
            ds.get("SeriesInstanceUID", "") or ""
        ).strip()
    except Exception:  # pydicom raises many types on garbage; any of them means "no ids"
        return "", ""


def _relative(path: str, root: Path) -> str:
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _file_keys(
    path: str, root: Path, pattern: re.Pattern[str] | None
) -> list[tuple[int, str]]:
    keys = [(_FILE, _relative(path, root))]
    if pattern is not None:
        keys.append((_PATTERN, name_group(pattern, path)))
    if path.lower().endswith(".dcm"):
        patient, series = _dicom_ids(path)
        if patient:
            keys.append((_PATIENT, f"patient:{patient}"))
        if series:
            keys.append((_SERIES, f"series:{series}"))
    return keys


def assign_groups(
    samples: Sequence[Sample], root: str | Path, pattern: re.Pattern[str] | None = None
) -> list[Sample]:
    """The samples, in the same order, with ``group`` set to the name of their group.

    A sample's existing ``group`` is a given key (labels.csv or manifest column) and is merged with
    the structural links, never trusted alone: a manifest cannot split a volume by renaming groups.
    Groups never span classes (each class is a separate model)."""
    root = Path(root)
    nodes: dict[tuple[str, int, str], int] = {}
    edges: list[tuple[int, int]] = []
    file_nodes: dict[tuple[str, str], int] = {}

    def node(key: tuple[str, int, str]) -> int:
        return nodes.setdefault(key, len(nodes))

    sample_nodes: list[int] = []
    for sample in samples:
        cls = sample.class_name or ""
        file_key = (cls, sample.path)
        if file_key not in file_nodes:
            keys = [node((cls, *key)) for key in _file_keys(sample.path, root, pattern)]
            edges += [(keys[0], other) for other in keys[1:]]
            file_nodes[file_key] = keys[0]
        first = file_nodes[file_key]
        if sample.group:
            edges.append((first, node((cls, _GIVEN, sample.group))))
        sample_nodes.append(first)
    if not samples:
        return []
    rows = np.array([a for a, _ in edges], dtype=np.int64)
    cols = np.array([b for _, b in edges], dtype=np.int64)
    graph = coo_matrix((np.ones(len(edges)), (rows, cols)), shape=(len(nodes), len(nodes)))
    _, component = connected_components(graph, directed=False)
    names: dict[int, tuple[int, str]] = {}
    for (_, strength, value), index in nodes.items():
        label = int(component[index])
        names[label] = min(names.get(label, (strength, value)), (strength, value))
    return [
        dataclasses.replace(sample, group=names[int(component[index])][1])
        for sample, index in zip(samples, sample_nodes, strict=True)
    ]
