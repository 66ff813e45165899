"""The end of a predict run: global rank 0 merges every process's part files into the result
files (scores.csv, volumes.csv, skipped.csv, notes.csv) in input order, completes the run record
and removes the work folder.

Part files are merged by index (a heap merge of sorted streams, each index once: a slice scored
by two attempts counts once), so memory holds one row per part file, never the whole run.
"""

from __future__ import annotations

import csv
import heapq
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pdd.csv_cells import escape_row, unescape_row
from pdd.errors import DataError
from pdd.fileio import atomic_write_text
from pdd.prediction.plan import open_text, read_complete_rows
from pdd.prediction.rules import ANOMALOUS, decision, p_value
from pdd.prediction.run import (
    COLLECTED_SKIPS_FILE,
    NOTES_FILE,
    RUN_FILE,
    SCORES_FILE,
    SKIPPED_FILE,
    VOLUMES_FILE,
    WORK_DIR,
    PredictResult,
    RunContext,
    read_record,
    write_csv,
)

__all__ = ["merge_parts"]


def _sorted_rows(pattern: str, work: Path) -> Iterator[list[str]]:
    """Rows of all part files matching ``pattern`` by their first column, each key once."""
    streams = [
        ((int(row[0]), row) for row in read_complete_rows(path)) for path in sorted(work.glob(pattern))
    ]
    last = None
    for key, row in heapq.merge(*streams, key=lambda pair: pair[0]):
        if key != last:
            yield row
            last = key


def merge_parts(context: RunContext, seconds: float) -> PredictResult:
    """Global rank 0, after every process finished: the result files in input order."""
    out, plan, threshold = context.options.out, context.plan, context.threshold
    work = out / WORK_DIR
    scored = anomalous = 0
    with open_text(out / f".{SCORES_FILE}.tmp", "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("path", "scan", "slice", "score", "decision", "heatmap", "p_value"))
        for row in _sorted_rows("scores-*.csv", work):
            item = plan.items[int(row[0])]
            scan = plan.scans[item.scan]
            value = float(row[1])
            verdict = decision(value, threshold)
            scored += 1
            anomalous += verdict == ANOMALOUS
            writer.writerow(
                escape_row((
                    item.key,
                    scan.key if scan.is_volume else "",
                    item.index - scan.first if scan.is_volume else "",
                    row[1],
                    verdict,
                    scan.output,
                    _cell(p_value(value, context.normal_scores)),
                ))
            )
    volumes = 0
    with open_text(out / f".{VOLUMES_FILE}.tmp", "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(
            ("scan", "kind", "patient_id", "num_slices", "score", "decision", "max_slice", "rule", "map",
             "p_value")
        )
        scan_threshold, scan_normals = context.scan_reference or (threshold, None)
        for row in _sorted_rows("volumes-*.csv", work):
            scan = plan.scans[int(row[0])]
            volumes += 1
            writer.writerow(
                escape_row((
                    scan.key, scan.kind, scan.patient_id, row[1], row[2],
                    decision(float(row[2]), scan_threshold), row[3], context.options.scan_rule,
                    scan.output, _cell(p_value(float(row[2]), scan_normals)),
                ))
            )
    skipped = _merge_skipped(context, work)
    notes = _copy_notes(work, out)
    os.replace(out / f".{SCORES_FILE}.tmp", out / SCORES_FILE)
    if volumes:
        os.replace(out / f".{VOLUMES_FILE}.tmp", out / VOLUMES_FILE)
    else:
        (out / f".{VOLUMES_FILE}.tmp").unlink()
    result = PredictResult(
        out=out,
        threshold=threshold,
        scored=scored,
        anomalous=anomalous,
        volumes=volumes,
        skipped=len(skipped),
        notes=notes,
        newly_scored=scored - context.previously_scored,
        seconds=seconds,
        first_skip=skipped[0] if skipped else None,
    )
    record = read_record(out)
    record.update(
        status="complete",
        scored=scored,
        anomalous=anomalous,
        volumes=volumes,
        skipped=len(skipped),
        notes=notes,
        images_per_second=round(result.images_per_second, 3),
        precision_used=context.precision_used,
    )
    if scored == 0:
        reasons = "; ".join(f"{p}: {why}" for p, why in skipped[:3])
        atomic_write_text(out / RUN_FILE, json.dumps(record, indent=2) + "\n")
        raise DataError(f"none of the inputs could be read ({reasons})")
    atomic_write_text(out / RUN_FILE, json.dumps(record, indent=2) + "\n")
    # imported late: the report pulls in matplotlib
    from pdd.report.predict_page import write_predict_report

    write_predict_report(out)
    shutil.rmtree(work, ignore_errors=True)
    return result


def _cell(value: float | None) -> str:
    return "" if value is None else repr(value)


def _merge_skipped(context: RunContext, work: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    collected = work / COLLECTED_SKIPS_FILE
    if collected.is_file():
        with open_text(collected, "r") as handle:
            rows += [(r[0], r[1]) for r in map(unescape_row, list(csv.reader(handle))[1:])]
    rows += [(context.plan.items[int(r[0])].key, r[1]) for r in _sorted_rows("skipped-*.csv", work)]
    target = context.options.out / SKIPPED_FILE
    if rows:
        write_csv(target, ("path", "reason"), rows)
    return rows


def _copy_notes(work: Path, out: Path) -> int:
    source = work / NOTES_FILE
    if not source.is_file():
        return 0
    with open_text(source, "r") as handle:
        count = max(len(list(csv.reader(handle))) - 1, 0)
    if count:
        shutil.copyfile(source, out / NOTES_FILE)
    return count

