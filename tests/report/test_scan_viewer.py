"""The report's scan viewer (``pdd.report.scan_viewer``) in headless Chromium: the page loads
without console errors, the most anomalous scan comes first, a key press shows the next slice (its
index text and image change) and the opacity slider changes the picture (screenshot pixels
differ). Skipped without chromium + chromedriver unless PDD_REQUIRE_CHROMIUM=1."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pdd.report.predict_page import write_predict_report
from pdd.report.scan_viewer import FRAMES_DIR, save_scan_frames

SCALE = (0.0, 1.0)
SLICES = 5


def _write_run(folder: Path) -> None:
    """A predict run folder with three scans of five slices: a bright square that moves down
    slice by slice, and a map that is high inside it."""
    folder.mkdir()
    volumes = ["scan,kind,patient_id,num_slices,score,decision,max_slice,rule,map,p_value"]
    scores = ["path,scan,slice,score,decision,heatmap,p_value"]
    for number, (key, score) in enumerate([("low.nii.gz", 0.2), ("high.nii.gz", 0.9), ("mid.nii.gz", 0.5)]):
        images, maps = [], []
        for k in range(SLICES):
            image = np.full((32, 32), 0.2)
            image[4 * k : 4 * k + 8, 8:24] = 0.9
            amap = np.zeros((32, 32))
            amap[4 * k : 4 * k + 8, 8:24] = score
            images.append(image)
            maps.append(amap)
            scores.append(f"{key}#{k},{key},{k},{score * (k + 1) / SLICES!r},,,")
        save_scan_frames(folder / FRAMES_DIR / f"{number:06d}.npz", key, range(SLICES), images, maps, SCALE)
        volumes.append(f"{key},nifti,,{SLICES},{score},,0,mean-top-3,,{1 - score:.2f}")
    (folder / "volumes.csv").write_text("\n".join(volumes) + "\n", encoding="utf-8")
    (folder / "scores.csv").write_text("\n".join(scores) + "\n", encoding="utf-8")
    record = {"checkpoint": "model.ckpt", "inputs": ["scans/"], "scored": 3 * SLICES, "volumes": 3,
              "threshold": None, "scan_rule": "mean-top-3", "map_stats": {"vmin": 0.0, "vmax": 1.0}}
    (folder / "predict.json").write_text(json.dumps(record), encoding="utf-8")


def test_viewer_section_orders_scans_and_is_self_contained(tmp_path: Path) -> None:
    _write_run(tmp_path / "run")
    page = write_predict_report(tmp_path / "run").read_text(encoding="utf-8")
    assert page.index("high.nii.gz") < page.index("mid.nii.gz") < page.index("low.nii.gz")
    assert "http://" not in page and "https://" not in page
    assert page.count('class="pdd-scan"') == 3


def _screenshot(command: Any, element: str) -> np.ndarray:
    png = base64.b64decode(command("GET", f"/element/{element}/screenshot"))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_viewer_moves_through_slices_and_fades_the_heatmap(
    tmp_path: Path, logged_browser: Any
) -> None:
    _write_run(tmp_path / "run")
    page = write_predict_report(tmp_path / "run")
    command = logged_browser
    command("POST", "/url", {"url": page.resolve().as_uri()})
    errors = [e for e in command("POST", "/se/log", {"type": "browser"}) if e["level"] == "SEVERE"]
    assert errors == []

    def state() -> dict[str, Any]:
        return command("POST", "/execute/sync", {"script": """
            const viewer = document.querySelector('.pdd-scan');
            return {key: viewer.querySelector('h3').textContent,
                    index: viewer.querySelector('.pdd-index').textContent,
                    score: viewer.querySelector('.pdd-slice-score').textContent,
                    src: viewer.querySelector('.pdd-slice').src,
                    loaded: Array.from(viewer.querySelectorAll('img')).every(i => i.naturalWidth > 0)};
        """, "args": []})

    first = state()
    assert first["key"] == "high.nii.gz" and first["loaded"]
    assert first["index"] == f"slice 0 (1 of {SLICES})"
    command("POST", "/execute/sync", {"script": "document.querySelector('.pdd-scan').focus();", "args": []})
    command("POST", "/actions", {"actions": [{"type": "key", "id": "keyboard", "actions": [
        {"type": "keyDown", "value": "\ue015"}, {"type": "keyUp", "value": "\ue015"}]}]})  # ArrowDown
    second = state()
    assert second["index"] == f"slice 1 (2 of {SLICES})" and second["src"] != first["src"]
    assert float(second["score"]) == pytest.approx(0.9 * 2 / SLICES)

    stack = command("POST", "/element", {"using": "css selector", "value": ".pdd-scan .pdd-stack"})
    element = next(iter(stack.values()))
    half = _screenshot(command, element)
    command("POST", "/execute/sync", {"script": """
        const slider = document.querySelector('.pdd-scan .pdd-opacity');
        slider.value = '0'; slider.dispatchEvent(new Event('input'));""", "args": []})
    plain = _screenshot(command, element)
    assert np.abs(half - plain).max() > 50  # the heatmap is gone from the picture
    errors = [e for e in command("POST", "/se/log", {"type": "browser"}) if e["level"] == "SEVERE"]
    assert errors == []
