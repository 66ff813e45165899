"""`pdd weights list|download|import|verify`, driven through argparse as the main CLI does."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision

import pdd.cli.weights as cli_weights
from pdd.errors import PDDError, WeightsError
from pdd.teachers import weights
from pdd.teachers.weights import WeightSpec


def _run(*argv: str) -> None:
    """Parse like `pdd` does and call the handler (PDDError propagates, as main() expects)."""
    parser = argparse.ArgumentParser(prog="pdd")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_weights.register(sub)
    args = parser.parse_args(list(argv))
    args.handler(args)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("PDD_CACHE_DIR", str(root))
    return root


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, bytes]]:
    """A small state dict served from 127.0.0.1 and registered as weights 'test.tiny'."""
    path = tmp_path / "tiny.pth"
    torch.save({"w": torch.arange(5.0)}, path)
    body = path.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/mirror/tiny.pth":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    spec = WeightSpec(
        "test.tiny", "wide_resnet50_2", f"{base}/official/tiny.pth", "tiny.pth",
        hashlib.sha256(body).hexdigest(), "test fixture", "pth",
    )
    monkeypatch.setitem(weights.WEIGHTS, spec.name, spec)
    yield base, body
    httpd.shutdown()
    httpd.server_close()


def test_list_shows_every_entry(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run("weights", "list")
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "TEACHER", "DEFAULT", "CACHED", "CHECKSUM"]
    rows = {line.split()[0]: line.split() for line in out[1:-1]}
    assert set(rows) == set(weights.WEIGHTS)
    assert rows["wide_resnet50_2.racm_in1k"][1:4] == ["wide_resnet50_2", "yes", "no"]
    assert rows["wide_resnet50_2.tv_in1k"][1:3] == ["wide_resnet50_2", "no"]
    assert out[-1] == f"cache: {cache / 'weights'}"


def test_download_from_mirror_then_verify(
    cache: Path, served: tuple[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    base, body = served
    with pytest.raises(WeightsError, match="HTTP 404"):  # the registry URL is not served
        _run("weights", "download", "test.tiny")
    _run("weights", "download", "test.tiny", "--url", f"{base}/mirror/tiny.pth")
    target = cache / "weights" / "tiny.pth"
    assert target.read_bytes() == body
    assert capsys.readouterr().out.strip() == f"test.tiny: {target}"

    _run("weights", "verify")
    assert capsys.readouterr().out.startswith(f"ok      test.tiny  {target}  sha256 ")

    target.write_bytes(body[:-1])
    with pytest.raises(WeightsError, match="checksum mismatch"):
        _run("weights", "verify", "test.tiny")


def test_verify_all_reports_each_failure(cache: Path, served: tuple[str, bytes],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    base, body = served
    _run("weights", "download", "test.tiny", "--url", f"{base}/mirror/tiny.pth")
    other = weights.cached_path("wide_resnet50_2.tv2_in1k")
    other.write_bytes(b"not the official file")
    capsys.readouterr()
    with pytest.raises(WeightsError, match="1 of 2 cached weight files failed verification"):
        _run("weights", "verify")
    out = capsys.readouterr().out
    assert "ok      test.tiny" in out and f"FAILED  {other}: checksum mismatch" in out


def test_verify_with_empty_cache(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run("weights", "verify")
    assert capsys.readouterr().out.strip() == f"no weight files cached in {cache / 'weights'}"


def test_import_needs_consent_for_a_non_official_file(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    path = tmp_path / "wrn.pth"
    torch.save(torchvision.models.wide_resnet50_2().state_dict(), path)  # fc is dropped by build
    with pytest.raises(WeightsError, match="--allow-checksum-mismatch"):
        _run("weights", "import", "wide_resnet50_2.tv_in1k", str(path))
    _run("weights", "import", "wide_resnet50_2.tv_in1k", str(path), "--allow-checksum-mismatch")
    out = capsys.readouterr().out
    assert "checksum mismatch accepted: not the official file" in out
    assert weights.cached_path("wide_resnet50_2.tv_in1k").is_file()


def test_import_rejects_a_foreign_file(cache: Path, tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(PDDError, match="weights do not fit the vmamba_tiny_v0 teacher"):
        _run("weights", "import", "vmamba_tiny_v0.in1k", str(path), "--allow-checksum-mismatch")
    assert not weights.cached_path("vmamba_tiny_v0.in1k").exists()


def test_unknown_name_and_missing_arguments(cache: Path) -> None:
    with pytest.raises(WeightsError, match="unknown weights 'resnet18'; known: "):
        _run("weights", "download", "resnet18")
    with pytest.raises(SystemExit) as info:
        _run("weights", "import", "vmamba_tiny_v0.in1k")
    assert info.value.code == 2
