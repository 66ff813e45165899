"""The three results files of ``pdd benchmark``: ``results.csv``, ``results.md``, ``report.html``.

``results.csv`` keeps the values of ``metrics.json`` unrounded (fractions in [0, 1]; published
numbers converted to fractions too); the Markdown and HTML tables show mean ± std in percent, the
published numbers in a column beside ours, and say when the teachers were random. Every row also
says which model it is (``model``: pdd's version, or anomalib's version, class and arguments) and
what it cost on this machine in the same run: training wall-clock seconds and inference images per
second (held-out normals and test images scored and evaluated, per wall-clock second; the mean
over seeds).
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pdd.benchmark.suite import Suite
from pdd.csv_cells import escape_row
from pdd.evaluation.aggregate import METRIC_KEYS
from pdd.fileio import atomic_write_text

__all__ = ["METRIC_NAMES", "ResultRow", "results_csv", "results_html", "results_markdown", "write_tables"]

METRIC_NAMES = {
    "image_auroc": "image AUROC",
    "image_ap": "image AP",
    "image_f1_max": "image F1-max",
    "pixel_auroc": "pixel AUROC",
    "pixel_ap": "pixel AP",
    "pixel_f1_max": "pixel F1-max",
    "pixel_aupro": "pixel AUPRO",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
}
_OVER = {"images": "", "pooled": "pooled", "classes": "class mean"}
_RANDOM_WARNING = (
    "Teachers were RANDOMLY initialised (--teachers random): these numbers are a smoke test of "
    "the pipeline, not the method's accuracy."
)


@dataclass(frozen=True)
class ResultRow:
    """One line of the results tables; metric values are fractions in [0, 1] as in metrics.json.

    ``over`` says what the metrics are taken over: ``images`` (a one-class set), ``pooled`` (every
    test image of a joint multi-class model) or ``classes`` (the mean over classes). ``std`` is
    empty for a single seed (no spread was measured).
    """

    dataset: str
    preset: str
    over: str
    teachers: str
    seeds: tuple[int, ...]
    mean: Mapping[str, float]
    std: Mapping[str, float]
    published: Mapping[str, float] = field(default_factory=dict)
    run_folder: str = ""  # relative to the benchmark folder
    seed_folders: tuple[str, ...] = ()
    model: str = ""  # "pdd 0.1.0" or "anomalib 2.7.0 Padim(backbone='resnet18', ...)"
    train_seconds: float | None = None  # mean over seeds, wall clock
    images_per_second: float | None = None  # inference, mean over seeds, wall clock


def write_tables(suite: Suite, out: Path, rows: Sequence[ResultRow]) -> None:
    """Write ``results.csv``, ``results.md`` and ``report.html`` into ``out`` (atomically)."""
    atomic_write_text(out / "results.csv", results_csv(rows))
    atomic_write_text(out / "results.md", results_markdown(suite, rows))
    atomic_write_text(out / "report.html", results_html(suite, rows))


def _published_keys(rows: Sequence[ResultRow]) -> list[str]:
    return [k for k in METRIC_KEYS if any(k in row.published for row in rows)]


def _shown_keys(rows: Sequence[ResultRow]) -> list[str]:
    published = set(_published_keys(rows))
    return [k for k in METRIC_KEYS if k in published or any(k in row.mean for row in rows)]


def results_csv(rows: Sequence[ResultRow]) -> str:
    """One line per row; every metric's mean and std (empty when not measured / one seed)."""
    published = _published_keys(rows)
    header = ["dataset", "preset", "over", "teachers", "n_seeds", "seeds"]
    for key in METRIC_KEYS:
        header += [f"{key}_mean", f"{key}_std"]
    header += [f"published_{key}" for key in published]
    header += ["model", "train_seconds", "images_per_second"]
    header += ["run_folder", "seed_folders"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        line: list[object] = [
            row.dataset, row.preset, row.over, row.teachers, len(row.seeds),
            ";".join(map(str, row.seeds)),
        ]  # fmt: skip
        for key in METRIC_KEYS:
            line += [row.mean.get(key, ""), row.std.get(key, "")]
        line += [row.published.get(key, "") for key in published]
        line += [row.model, _blank(row.train_seconds), _blank(row.images_per_second)]
        line += [row.run_folder, ";".join(row.seed_folders)]
        writer.writerow(escape_row(line))  # names from the suite file: no spreadsheet formulas
    return buffer.getvalue()


def _blank(value: float | None) -> object:
    return "" if value is None else value


def _cost(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _percent(row: ResultRow, key: str) -> str:
    if key not in row.mean:
        return "–"
    text = f"{100 * row.mean[key]:.1f}"
    return text + (f" ± {100 * row.std[key]:.1f}" if key in row.std else "")


def _published(row: ResultRow, key: str) -> str:
    return f"{100 * row.published[key]:.1f}" if key in row.published else "–"


def _table(suite: Suite, rows: Sequence[ResultRow]) -> tuple[list[str], list[list[str]]]:
    """Header and cells shared by the Markdown and HTML tables (plain text, unescaped)."""
    published = set(_published_keys(rows))
    label = suite.published_label or "published"
    header = ["dataset", "preset", "over", "seeds"]
    for key in _shown_keys(rows):
        header.append(f"{METRIC_NAMES[key]} %")
        if key in published:
            header.append(f"{METRIC_NAMES[key]} % ({label})")
    header += ["train s", "images/s", "model"]
    cells = []
    for row in rows:
        preset = row.preset + (" (random teachers)" if row.teachers == "random" else "")
        line = [row.dataset, preset, _OVER.get(row.over, row.over), str(len(row.seeds))]
        for key in _shown_keys(rows):
            line.append(_percent(row, key))
            if key in published:
                line.append(_published(row, key))
        line += [_cost(row.train_seconds, 1), _cost(row.images_per_second, 1), row.model]
        cells.append(line)
    return header, cells


def _notes(suite: Suite, rows: Sequence[ResultRow]) -> list[str]:
    seeds = ", ".join(map(str, suite.seeds))
    notes = [
        (
            f"Suite {suite.name} ({suite.source}); seeds {seeds}; teachers {suite.teachers}. "
            "Values: mean ± std over seeds (population std, as in each run's metrics.json), in "
            "percent."
        )
    ]
    if any(row.teachers == "random" for row in rows):
        notes.append(_RANDOM_WARNING)
    if _published_keys(rows):
        notes.append(
            f"Columns marked ({suite.published_label or 'published'}) are the numbers the suite "
            "gives for comparison, not measured here."
        )
    notes.append(
        "train s: training wall-clock seconds; images/s: held-out normals and test images scored "
        "and evaluated per wall-clock second (inference); both the mean over seeds, measured in "
        "the same run on this machine."
    )
    if any(row.over != "images" for row in rows):
        notes.append(
            "over: pooled = every test image of one joint model; class mean = mean over classes."
        )
    return notes


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def results_markdown(suite: Suite, rows: Sequence[ResultRow]) -> str:
    header, cells = _table(suite, rows)
    lines = [f"# Benchmark: {suite.name}", ""]
    for note in _notes(suite, rows):
        lines += [note, ""]
    lines.append("| " + " | ".join(map(_md_cell, header)) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(map(_md_cell, line)) + " |" for line in cells]
    return "\n".join(lines) + "\n"


def _links(row: ResultRow) -> str:
    """Relative links to the run's report and, with several seeds, each seed's."""
    links = [f'<a href="{html.escape(row.run_folder)}/report.html">run</a>']
    if len(row.seed_folders) > 1:
        links += [
            f'<a href="{html.escape(folder)}/report.html">seed {seed}</a>'
            for seed, folder in zip(row.seeds, row.seed_folders, strict=True)
        ]
    return " ".join(links)


def results_html(suite: Suite, rows: Sequence[ResultRow]) -> str:
    """A self-contained page (inline style, no scripts) with the table and links to each run."""
    header, cells = _table(suite, rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header + ["reports"])
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(c)}</td>" for c in line)
        + f"<td>{_links(row)}</td></tr>"
        for line, row in zip(cells, rows, strict=True)
    )
    notes = "".join(
        f'<p class="warn">{html.escape(n)}</p>'
        if n == _RANDOM_WARNING
        else f"<p>{html.escape(n)}</p>"
        for n in _notes(suite, rows)
    )
    title = html.escape(f"pdd benchmark: {suite.name}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "th,td{border:1px solid #bbb;padding:4px 8px;text-align:left}"
        ".warn{background:#c62828;color:#fff;padding:8px;font-weight:bold}"
        f"</style></head><body><h1>{title}</h1>{notes}"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        '<p>Results files: <a href="results.csv">results.csv</a>, '
        '<a href="results.md">results.md</a>, <a href="suite.yaml">suite.yaml</a>.</p>'
        "</body></html>\n"
    )
