"""Text cells of the CSV files we write, safe to open in a spreadsheet (CSV injection).

Values that come from the data (file and folder names, labels.csv groups, DICOM PatientIDs, error
messages quoting them) end up in scores.csv, split.csv, volumes.csv, skipped.csv, notes.csv and a
benchmark's results.csv. Excel and LibreOffice evaluate a cell that starts with ``=``, ``+``, ``-``
or ``@`` (and one starting with a tab or carriage return, after trimming) as a formula, so a
folder named ``=HYPERLINK("http://evil.example";"x")`` would become a live link. Following the
OWASP rule, :func:`escape_cell` prefixes such a cell with ``'``, which spreadsheets show as text.

Numbers are not text: a cell that is a plain decimal number (``-0.5``, ``+1e-3``, ``-inf``, ``nan``)
is written as it is, so scores stay numbers in a spreadsheet and for our readers.

The escaping is reversible: a cell that itself starts with ``'`` is escaped too (``'x`` is written
``''x``), so :func:`unescape_cell` (used by every reader of these files) gives back exactly the
original value by dropping one leading ``'``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = [
    "escape_cell",
    "escape_row",
    "unescape_cell",
    "unescape_mapping",
    "unescape_row",
]

_QUOTE = "'"
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", _QUOTE)
_NUMBER = re.compile(
    r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|inf|infinity|nan)",
    re.IGNORECASE,
)


def escape_cell(value: object) -> object:
    """``value`` as written to a CSV cell: text a spreadsheet would run as a formula gets a
    leading ``'``; numbers and every other value are returned unchanged."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_STARTS):
        return value
    if _NUMBER.fullmatch(value):
        return value
    return _QUOTE + value


def unescape_cell(text: str) -> str:
    """The original value of a cell written with :func:`escape_cell`."""
    return text[1:] if text.startswith(_QUOTE) else text


def escape_row(values: Iterable[object]) -> list[object]:
    """:func:`escape_cell` of every value of a row."""
    return [escape_cell(value) for value in values]


def unescape_row(cells: Iterable[str]) -> list[str]:
    """:func:`unescape_cell` of every cell of a row read with ``csv.reader``."""
    return [unescape_cell(cell) for cell in cells]


def unescape_mapping(row: Mapping[str | None, object]) -> dict[str | None, object]:
    """:func:`unescape_cell` of every text value of a row read with ``csv.DictReader`` (a missing
    field's None and surplus fields' list are kept for the caller's own checks)."""
    return {
        key: unescape_cell(v) if isinstance(v, str) else v for key, v in row.items()
    }
