"""A slice viewer for scored scans (NIfTI volumes, DICOM series) inside a self-contained report.

``pdd predict`` keeps, per scan, its slices and anomaly maps at the model's input size
(``viewer/<scan>.npz``, written by ``save_scan_frames``: the grey slice as uint8 and the map as
256 levels of the checkpoint's FIXED colour scale, so nothing is re-scaled per scan or slice);
``pdd fit`` and ``pdd test`` on a volume dataset keep them for their ``MAX_SCANS`` most anomalous
test scans (``pdd.evaluation.scan_results``), with the slice scores in the frames file.
``scan_viewer_section`` turns them into one HTML section: the scans most anomalous first, each
with its slices as PNG data URIs that are decoded only when the slice is shown (lazy), the
heatmap as a separate layer over the slice with an opacity slider, a colour bar, and the slice
score, scan score and p-value. Wheel or arrow keys move through the slices of the viewer under
the pointer or in focus. No network, no external script.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from pdd.csv_cells import unescape_mapping
from pdd.fileio import atomic_write_bytes
from pdd.report.markup import png_data_uri
from pdd.report.run_files import ReportRun

__all__ = ["FRAMES_DIR", "MAX_SCANS", "run_scans_section", "save_scan_frames", "scan_viewer_section"]

FRAMES_DIR = "viewer"
MAX_SCANS = 20
"""The viewer shows this many scans (the most anomalous); the rest are in volumes.csv."""
_COLORMAP = "jet"


def save_scan_frames(
    path: Path,
    key: str,
    positions: Sequence[int],
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    scale: tuple[float, float],
    slice_scores: Sequence[float] | None = None,
) -> None:
    """One scan's viewer frames: ``images`` (display HxW or HxWx3 in [0, 1]) and ``maps`` (HxW)
    of the slices at ``positions``, the maps quantised on the fixed ``scale`` (vmin, vmax).

    ``slice_scores``: the slices' scores, when the writer has them at hand (fit and test); without
    them (predict, which writes frames while other slices are still scored) the viewer reads
    them from scores.csv."""
    vmin, vmax = scale
    grey = np.stack([_grey(image) for image in images])
    levels = np.stack(
        [np.round(np.clip((np.asarray(m, np.float64) - vmin) / (vmax - vmin), 0, 1) * 255) for m in maps]
    ).astype(np.uint8)
    buffer = io.BytesIO()
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"key": np.array(key), "positions": np.asarray(positions, np.int64), "images": grey, "levels": levels}
    if slice_scores is not None:
        arrays["scores"] = np.asarray(slice_scores, np.float64)
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _grey(image: np.ndarray) -> np.ndarray:
    values = np.asarray(image, np.float64)
    if values.ndim == 3:
        values = values.mean(axis=2)
    return np.round(np.clip(values, 0, 1) * 255).astype(np.uint8)


def _png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return png_data_uri(buffer.getvalue())


def _colour(levels: np.ndarray) -> np.ndarray:
    return np.round(colormaps[_COLORMAP](levels)[..., :3] * 255).astype(np.uint8)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return [unescape_mapping(row) for row in csv.DictReader(handle)]  # type: ignore[misc]


def scan_viewer_section(folder: Path, scale: tuple[float, float] | None) -> str:
    """The viewer section for the run in ``folder`` (its volumes.csv, scores.csv and frames);
    empty when the run scored no scans or kept no frames (no colour scale)."""
    volumes_csv, frames = folder / "volumes.csv", folder / FRAMES_DIR
    if not volumes_csv.is_file() or not frames.is_dir() or scale is None:
        return ""
    volumes = {row["scan"]: row for row in _rows(volumes_csv)}
    slice_scores: dict[str, dict[int, str]] = {}
    scores_csv = folder / "scores.csv"
    if scores_csv.is_file():
        for row in _rows(scores_csv):
            if row.get("scan"):
                slice_scores.setdefault(row["scan"], {})[int(row["slice"])] = row["score"]
    found = []
    for path in sorted(frames.glob("*.npz")):
        with np.load(path) as saved:
            key = str(saved["key"])
            if key in volumes:
                if "scores" in saved:
                    kept = zip(saved["positions"].tolist(), saved["scores"].tolist())
                    slice_scores[key] = {position: repr(score) for position, score in kept}
                found.append((key, saved["positions"], saved["images"], saved["levels"]))
    found.sort(key=lambda item: -float(volumes[item[0]]["score"]))
    if not found:
        return ""
    scans = [
        _scan_data(key, volumes[key], slice_scores.get(key, {}), positions, images, levels)
        for key, positions, images, levels in found[:MAX_SCANS]
    ]
    blocks = "\n".join(_scan_block(number, scan) for number, scan in enumerate(scans))
    bar = _png(_colour(np.tile(np.arange(256, dtype=np.uint8), (12, 1))))
    shown = (
        f"the {len(scans)} most anomalous of {len(volumes)} scans (all in volumes.csv)"
        if len(volumes) > len(scans)
        else "every scan"
    )
    data = json.dumps(scans).replace("</", "<\\/")
    return f"""<section id="scans">
<h2>Scans</h2>
<p>{shown}, most anomalous first. Scroll over a slice or use the arrow keys to move through it;
the slider sets the heatmap's opacity. Colour scale fixed for every scan (the checkpoint's):
<span class="pdd-bar">{scale[0]:.4g} <img alt="colour scale" src="{bar}" width="160" height="12">
{scale[1]:.4g}</span>.</p>
{blocks}
<script type="application/json" id="pdd-scan-data">{data}</script>
<script>{_SCRIPT}</script>
<style>{_STYLE}</style>
</section>"""


def run_scans_section(run: ReportRun) -> str:
    """The fit/test report's viewer: the test scans of the run's (first seed's) model, on the
    colour scale of its metrics.json; empty for image datasets."""
    stats = run.main_metrics.get("map_stats")
    vmin, vmax = (stats.get("vmin"), stats.get("vmax")) if isinstance(stats, dict) else (None, None)
    if not (isinstance(vmin, (int, float)) and isinstance(vmax, (int, float)) and vmin < vmax):
        return ""  # no usable colour scale (as the gallery's colour bar): no viewer
    return scan_viewer_section(run.main.folder, (float(vmin), float(vmax)))


def _scan_data(
    key: str,
    volume: dict[str, str],
    slice_scores: dict[int, str],
    positions: np.ndarray,
    images: np.ndarray,
    levels: np.ndarray,
) -> dict[str, object]:
    positions_list = [int(p) for p in positions]
    maximum = volume.get("max_slice", "")
    start = positions_list.index(int(maximum)) if maximum.isdigit() and int(maximum) in positions_list else 0
    return {
        "key": key,
        "score": volume["score"],
        "p_value": volume.get("p_value") or "",
        "decision": volume.get("decision") or "",
        "positions": positions_list,
        "slice_scores": [slice_scores.get(p, "") for p in positions_list],
        "images": [_png(image) for image in images],
        "maps": [_png(_colour(level)) for level in levels],
        "start": start,
    }


def _scan_block(number: int, scan: dict[str, object]) -> str:
    p_value = scan["p_value"] or "none (checkpoint without normal scan scores)"
    decision = f", {scan['decision']}" if scan["decision"] else ""
    return f"""<div class="pdd-scan" tabindex="0" data-scan="{number}">
<h3>{html.escape(str(scan["key"]))}</h3>
<p>scan score <b>{html.escape(str(scan["score"]))}</b>{html.escape(decision)}, p-value
<b>{html.escape(str(p_value))}</b></p>
<div class="pdd-stack"><img class="pdd-slice" alt="slice"><img class="pdd-map" alt="heatmap"></div>
<p><span class="pdd-index"></span> &middot; slice score <span class="pdd-slice-score"></span></p>
<label>heatmap opacity <input type="range" class="pdd-opacity" min="0" max="100" value="50"></label>
</div>"""


_STYLE = """
.pdd-scan { border: 1px solid #ccc; padding: 0.5em; margin: 0.5em 0; display: inline-block; }
.pdd-scan:focus { outline: 2px solid #36c; }
.pdd-stack { position: relative; width: 256px; height: 256px; }
.pdd-stack img { position: absolute; left: 0; top: 0; width: 256px; height: 256px;
  image-rendering: pixelated; }
.pdd-bar img { vertical-align: middle; }
"""

_SCRIPT = """
(function () {
  const scans = JSON.parse(document.getElementById('pdd-scan-data').textContent);
  let active = null;
  function show(viewer, position) {
    const scan = scans[Number(viewer.dataset.scan)];
    const count = scan.positions.length;
    const index = Math.max(0, Math.min(count - 1, position));
    viewer.dataset.index = String(index);
    viewer.querySelector('.pdd-slice').src = scan.images[index];
    viewer.querySelector('.pdd-map').src = scan.maps[index];
    viewer.querySelector('.pdd-index').textContent =
      'slice ' + scan.positions[index] + ' (' + (index + 1) + ' of ' + count + ')';
    viewer.querySelector('.pdd-slice-score').textContent = scan.slice_scores[index] || 'n/a';
  }
  function step(viewer, delta) { show(viewer, Number(viewer.dataset.index) + delta); }
  document.querySelectorAll('.pdd-scan').forEach(function (viewer) {
    show(viewer, scans[Number(viewer.dataset.scan)].start);
    const layer = viewer.querySelector('.pdd-map');
    const slider = viewer.querySelector('.pdd-opacity');
    layer.style.opacity = String(slider.value / 100);
    slider.addEventListener('input', function () { layer.style.opacity = String(slider.value / 100); });
    viewer.addEventListener('focus', function () { active = viewer; });
    viewer.addEventListener('mouseenter', function () { active = viewer; });
    viewer.querySelector('.pdd-stack').addEventListener('wheel', function (event) {
      event.preventDefault();
      step(viewer, event.deltaY > 0 ? 1 : -1);
    }, { passive: false });
  });
  document.addEventListener('keydown', function (event) {
    const viewer = active || document.querySelector('.pdd-scan');
    if (!viewer || event.target.tagName === 'INPUT') { return; }
    const moves = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1 };
    if (event.key in moves) { event.preventDefault(); step(viewer, moves[event.key]); }
  });
})();
"""
