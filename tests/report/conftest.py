"""Report fixtures: a fake-but-complete run folder, and headless Chromium driven over WebDriver.

Chromium is driven through chromedriver's W3C WebDriver HTTP API with the standard library only,
so the test needs the Debian packages ``chromium`` and ``chromium-driver`` but no extra Python
package. Without them the browser tests skip, unless ``PDD_REQUIRE_CHROMIUM=1`` (set in CI).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pdd.fileio import atomic_write_text
from pdd.report.heatmap import save_overlay

METRIC_KEYS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap",
               "pixel_f1_max", "pixel_aupro", "sensitivity", "specificity")


# --------------------------------------------------------------------------- fake run folders


def phantom(rng: np.random.Generator, size: int, lesion: bool) -> tuple[np.ndarray, np.ndarray]:
    """A grey brain-like ellipse (HxWx3 in [0, 1]) and an anomaly map hot on the lesion."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    head = ((xx / 0.38) ** 2 + (yy / 0.45) ** 2) < 1
    image = 0.15 + 0.5 * head * (0.8 + 0.2 * np.cos(9 * xx) * np.sin(7 * yy))
    amap = 0.2 * rng.random((size, size)) * head
    if lesion:
        cy, cx = rng.uniform(-0.2, 0.2, 2)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.004)
        image = image + 0.3 * blob
        amap = amap + blob
    image = np.clip(image + 0.02 * rng.standard_normal((size, size)), 0, 1)
    return np.repeat(image[:, :, None], 3, axis=2), amap


def _write_sub_run(folder: Path, rng: np.random.Generator, *, seed: int, class_name: str,
                   heatmaps: bool) -> dict[str, Any]:
    """One trained model's folder: metrics.json, scores.csv, config.yaml, heatmaps/."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,score,kind,class_name,heatmap"]
    for index in range(14):
        label = int(index >= 7)
        score = float(rng.normal(1.0 + 0.9 * label, 0.35))
        heatmap = ""
        if heatmaps:
            heatmap = f"heatmaps/{index:05d}.png"
            (folder / "heatmaps").mkdir(exist_ok=True)
            image, amap = phantom(rng, 64, lesion=bool(label))
            save_overlay(folder / heatmap, image, amap, vmin=0.0, vmax=1.0,
                         side_by_side=index % 2 == 0)
        kind = "tumor" if label else "good"
        path = f"/data/{class_name or 'brain'}/test/{kind}/{index:03d}.png"
        lines.append(f"{path},{label},{score!r},{kind},{class_name},{heatmap}")
    atomic_write_text(folder / "scores.csv", "\n".join(lines) + "\n")
    metrics: dict[str, Any] = {key: float(rng.uniform(0.7, 0.99)) for key in METRIC_KEYS}
    metrics.update(
        threshold=float(rng.uniform(1.2, 1.6)), map_stats={"vmin": 0.0, "vmax": 1.0},
        preset="pdd", teachers="random", seed=seed, class_name=class_name or None,
        image_size=64, epochs=3, batch_size=10, dataset="/data/brain", format="folder",
        split="split.csv", num_train=20, num_holdout=4, num_test=14,
        skipped=[{"path": "/data/brain/test/good/bad.png", "reason": "not an image file"}],
        skipped_count=1, pdd_version="0.1.0", timing={"train_seconds": 12.5, "eval_seconds": 1.25},
        train_history=[{"epoch": float(e), "loss": 1.0 / e, "distill": 0.8 / e, "diversity": 0.1}
                       for e in (1, 2, 3)],
    )
    atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2))
    config = {"pdd_version": "0.1.0",
              "options": {"preset": "pdd", "teachers": "random", "seeds": [seed]},
              "model": {"image_size": 64, "students": "separate",
                        "train": {"optimizer": "adam", "lr": 0.002, "epochs": 3}}}
    atomic_write_text(folder / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    return metrics


def _mean_and_std(records: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    mean = {key: float(np.mean([r[key] for r in records])) for key in METRIC_KEYS}
    std = {key: float(np.std([r[key] for r in records])) for key in METRIC_KEYS}
    return mean, std


def _write_seed(folder: Path, rng: np.random.Generator, *, seed: int, classes: tuple[str, ...],
                heatmaps: bool) -> dict[str, Any]:
    """A seed's folder; a multi-class set gets one sub-run per class and their mean, as the
    runner writes it (per-class thresholds stay in the class folders)."""
    if classes == ("",):
        return _write_sub_run(folder, rng, seed=seed, class_name="", heatmaps=heatmaps)
    per_class = {name: _write_sub_run(folder / name, rng, seed=seed, class_name=name,
                                      heatmaps=heatmaps) for name in classes}
    lines = ["path,label,score,kind,class_name,heatmap"]
    for name in classes:
        for line in (folder / name / "scores.csv").read_text().splitlines()[1:]:
            fields = line.split(",")
            fields[5] = f"{name}/{fields[5]}" if fields[5] else ""
            lines.append(",".join(fields))
    atomic_write_text(folder / "scores.csv", "\n".join(lines) + "\n")
    first = per_class[classes[0]]
    record: dict[str, Any] = {
        **_mean_and_std(list(per_class.values()))[0], "mean_over": "classes",
        "classes": {name: {k: r[k] for k in METRIC_KEYS} for name, r in per_class.items()},
        **{k: first[k] for k in ("preset", "teachers", "seed", "image_size", "epochs", "dataset")},
        "split": {name: f"{name}/split.csv" for name in classes},
        "num_train": 20 * len(classes), "num_test": 14 * len(classes),
        "skipped": first["skipped"], "skipped_count": 1,
    }
    atomic_write_text(folder / "metrics.json", json.dumps(record, indent=2))
    atomic_write_text(folder / "config.yaml", (folder / classes[0] / "config.yaml").read_text())
    return record


def make_run_folder(root: Path, *, seeds: tuple[int, ...] = (0,), classes: tuple[str, ...] = ("",),
                    heatmaps: bool = True) -> Path:
    """A run folder as the runner writes it; several seeds give seed_<n>/ sub-folders."""
    rng = np.random.default_rng(sum(seeds) + len(classes))
    if len(seeds) == 1:
        _write_seed(root, rng, seed=seeds[0], classes=classes, heatmaps=heatmaps)
        return root
    runs = {f"seed_{seed}": _write_seed(root / f"seed_{seed}", rng, seed=seed, classes=classes,
                                        heatmaps=heatmaps) for seed in seeds}
    records = list(runs.values())
    mean, std = _mean_and_std(records)
    aggregate: dict[str, Any] = {
        **mean, "std": std, "mean_over": "seeds", "seeds": list(seeds), "runs": runs,
        **{k: records[0][k] for k in ("preset", "teachers", "image_size", "epochs", "dataset")},
    }
    if classes != ("",):
        aggregate["classes"] = {name: _mean_and_std([r["classes"][name] for r in records])[0]
                                for name in classes}
    atomic_write_text(root / "metrics.json", json.dumps(aggregate, indent=2))
    atomic_write_text(root / "config.yaml", (root / f"seed_{seeds[0]}" / "config.yaml").read_text())
    return root


@pytest.fixture
def run_folder_factory(tmp_path: Path) -> Callable[..., Path]:
    counter = iter(range(1000))

    def factory(**options: Any) -> Path:
        return make_run_folder(tmp_path / f"run{next(counter)}", **options)

    return factory


# --------------------------------------------------------------------------- headless Chromium

_CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1280,900"]

# Runs in the page after the load event: every <img> must have decoded, and nothing may point
# outside the file (a self-contained report has only data: URIs and in-page anchors).
_INSPECT_PAGE = """
const images = Array.from(document.images).map(img => ({
    alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth}));
const external = Array.from(document.querySelectorAll('[src], [href]'))
    .map(el => el.getAttribute('src') || el.getAttribute('href'))
    .filter(url => !url.startsWith('data:') && !url.startsWith('#'));
return {
    title: document.title,
    images: images,
    broken: images.filter(img => !img.complete || img.naturalWidth === 0),
    sections: Array.from(document.querySelectorAll('section[id]')).map(s => s.id),
    scripts: document.scripts.length,
    external: external,
    text: document.body.innerText,
    height: document.documentElement.scrollHeight,
};
"""


def _find_browser() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


class _WebDriver:
    """The few W3C WebDriver commands the report test needs."""

    def __init__(self, base_url: str, session_id: str) -> None:
        self.base_url, self.session_id = base_url, session_id

    def command(self, method: str, endpoint: str, payload: dict[str, Any] | None = None) -> Any:
        return _request(method, f"{self.base_url}/session/{self.session_id}{endpoint}", payload)


def _request(method: str, url: str, payload: dict[str, Any] | None = None) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["value"]


@contextlib.contextmanager
def chromium_session(profile: Path, capabilities: dict[str, Any] | None = None) -> Iterator[_WebDriver]:
    """A fresh headless Chromium session over WebDriver (skipped, or failed when
    PDD_REQUIRE_CHROMIUM=1, without chromium and chromedriver); ``capabilities`` are added to
    the session's (e.g. ``goog:loggingPrefs`` to read the console)."""
    found = _find_browser()
    if found is None:
        message = "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("PDD_REQUIRE_CHROMIUM") == "1":
            pytest.fail(message + " but PDD_REQUIRE_CHROMIUM=1")
        pytest.skip(message)
    browser, driver_binary = found
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([driver_binary, f"--port={port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _request("GET", f"{base_url}/status").get("ready"):
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                pytest.fail("chromedriver did not start within 30 s")
            time.sleep(0.2)
        wanted = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": browser, "args": [*_CHROMIUM_ARGS, f"--user-data-dir={profile}"]},
            **(capabilities or {})}
        session = _request("POST", f"{base_url}/session", {"capabilities": {"alwaysMatch": wanted}})
        web = _WebDriver(base_url, session["sessionId"])
        try:
            yield web
        finally:
            web.command("DELETE", "")
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., dict[str, Any]]]:
    """``render(html_path, screenshot=None) -> page facts`` in a fresh headless Chromium."""
    with chromium_session(tmp_path_factory.mktemp("chromium-profile")) as web:

        def render(html_path: Path, screenshot: Path | None = None) -> dict[str, Any]:
            web.command("POST", "/url", {"url": html_path.resolve().as_uri()})
            facts = web.command("POST", "/execute/sync", {"script": _INSPECT_PAGE, "args": []})
            if screenshot is not None:
                # the outer window is taller than the page viewport by the browser's frame
                web.command("POST", "/window/rect", {"width": 1280, "height": facts["height"] + 200})
                png = base64.b64decode(web.command("GET", "/screenshot"))
                screenshot.write_bytes(png)
            return facts

        yield render


@pytest.fixture
def logged_browser(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``command(method, endpoint, payload=None)`` on a fresh Chromium session whose console log
    can be read (``POST /se/log``)."""
    with chromium_session(tmp_path / "profile", {"goog:loggingPrefs": {"browser": "ALL"}}) as web:
        yield web.command
