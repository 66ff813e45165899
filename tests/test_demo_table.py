"""benchmarks/demo_table.py writes the README's demo numbers from the demo's own metrics.json
(issue 23, point 1): the row shows exactly those numbers, and only the marked block of the README
is replaced."""

from __future__ import annotations

import datetime
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("demo_table", ROOT / "benchmarks" / "demo_table.py")
assert _spec is not None and _spec.loader is not None
demo_table = importlib.util.module_from_spec(_spec)
sys.modules["demo_table"] = demo_table  # dataclasses look their module up there
_spec.loader.exec_module(demo_table)

METRICS = {"image_auroc": 0.77777, "image_ap": 0.80049, "image_f1_max": 0.8, "pixel_auroc": 0.8951,
           "pixel_aupro": 0.46149, "preset": "pdd", "teachers": "random", "image_size": 64,
           "epochs": 20, "num_train": 36, "num_test": 24, "seed": 0}


def _row(block: str) -> list[str]:
    lines = [line for line in block.splitlines() if line.startswith("| ") and "---" not in line]
    header, row = ([cell.strip() for cell in line.strip("|").split("|")] for line in lines)
    assert header[:5] == ["image AUROC", "image AP", "image F1-max", "pixel AUROC", "pixel AUPRO"]
    return row


def test_the_row_is_the_metrics_of_the_run() -> None:
    """Kills: a column reading another metric, numbers not from metrics.json."""
    run = demo_table.DemoRun("pdd demo --out x", METRICS, seconds=134.6, peak_rss_mb=2048.0,
                             kernel_built=False)
    block = demo_table.render(run, "a test CPU", datetime.date(2026, 12, 3))
    row = _row(block)
    assert row[:5] == ["0.778", "0.800", "0.800", "0.895", "0.461"]
    assert row[5] == "135 s (kernel already compiled; peak RSS 2048 MB)"
    assert "`pdd demo --out x`" in block and "a test CPU" in block and "2026-12-03" in block
    built = demo_table.render(run.__class__(**{**run.__dict__, "kernel_built": True}), "cpu",
                              datetime.date(2026, 12, 3))
    assert "incl. compiling the CPU scan kernel" in _row(built)[5]


def test_metrics_without_a_column_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({k: v for k, v in METRICS.items() if k != "pixel_aupro"}))
    with pytest.raises(SystemExit, match="no pixel_aupro"):
        demo_table.read_metrics(path)


def test_only_the_marked_block_of_the_readme_is_replaced() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = demo_table.render(demo_table.DemoRun("pdd demo", METRICS), "cpu", datetime.date.today())
    updated = demo_table.replace_block(readme, block)
    start = readme.index(demo_table.BEGIN)
    end = readme.index(demo_table.END) + len(demo_table.END)
    assert updated == readme[:start] + block + readme[end:]
    assert updated.count(demo_table.BEGIN) == 1 and "| 0.778 |" in updated
    with pytest.raises(SystemExit, match="exactly one"):
        demo_table.replace_block(readme + block, block)
    with pytest.raises(SystemExit, match="exactly one"):
        demo_table.replace_block("no block", block)
