"""Weight registry, cache, download (local HTTP server only), import, verify and resolve."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from pdd.errors import WeightsError
from pdd.teachers import weights
from pdd.teachers.weights import WeightSpec

_TORCHVISION = "https://download.pytorch.org/models/"


class _Server:
    """A tiny HTTP server on 127.0.0.1 serving in-memory files and counting requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.short: set[str] = set()  # paths whose transfer stops half-way
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in server.short else body)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    yield srv
    srv.close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("PDD_CACHE_DIR", str(root))
    return root


def _torch_bytes(obj: object, tmp_path: Path) -> bytes:
    path = tmp_path / "obj.pth"
    torch.save(obj, path)
    return path.read_bytes()


def _add_spec(monkeypatch: pytest.MonkeyPatch, url: str, sha256: str | None) -> WeightSpec:
    spec = WeightSpec(
        name="test.tiny",
        teacher="wide_resnet50_2",
        url=url,
        filename="tiny.pth",
        sha256=sha256,
        source="test fixture",
        format="pth",
    )
    monkeypatch.setitem(weights.WEIGHTS, spec.name, spec)
    return spec


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _manifest(cache: Path) -> dict:
    return json.loads((cache / "weights" / "manifest.json").read_text())["files"]


# ---------------------------------------------------------------- registry and cache location


def test_registry_has_the_official_files_and_defaults() -> None:
    assert weights.DEFAULT_WEIGHTS == {
        "wide_resnet50_2": "wide_resnet50_2.racm_in1k",
        "vmamba_tiny_v0": "vmamba_tiny_v0.in1k",
    }
    for teacher, name in weights.DEFAULT_WEIGHTS.items():
        assert weights.WEIGHTS[name].teacher == teacher
    racm = weights.WEIGHTS["wide_resnet50_2.racm_in1k"]
    assert racm.format == "safetensors"
    assert racm.url.startswith("https://huggingface.co/timm/wide_resnet50_2.racm_in1k/resolve/")
    assert racm.url.endswith("/model.safetensors")
    vm = weights.WEIGHTS["vmamba_tiny_v0.in1k"]
    assert vm.url.endswith("/releases/download/%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth")
    filenames = [spec.filename for spec in weights.WEIGHTS.values()]
    assert len(set(filenames)) == len(filenames)


def test_torchvision_digests_agree_with_their_file_names() -> None:
    """torchvision names a file ``<arch>-<first hex digits of its SHA-256>.pth``: every registry
    entry served from download.pytorch.org must hash to a digest that starts with those digits."""
    torchvision_specs = [
        spec for spec in weights.WEIGHTS.values() if spec.url.startswith(_TORCHVISION)
    ]
    assert {spec.name for spec in torchvision_specs} >= {
        "wide_resnet50_2.tv_in1k",
        "wide_resnet50_2.tv2_in1k",
    }
    for spec in torchvision_specs:
        match = re.fullmatch(r"[a-z0-9_]+-([0-9a-f]{8,})\.pth", spec.url.removeprefix(_TORCHVISION))
        assert match is not None, spec.url
        assert spec.filename == spec.url.removeprefix(_TORCHVISION), spec.name
        assert spec.sha256 is not None and spec.sha256.startswith(match[1]), spec.name


def test_every_registry_digest_says_where_it_was_read() -> None:
    for spec in weights.WEIGHTS.values():
        if spec.sha256 is not None:
            assert len(spec.digest_source) > 40, spec.name
        if spec.url.startswith(_TORCHVISION):
            prefix = spec.filename.rsplit("-", 1)[1].removesuffix(".pth")
            assert prefix in spec.digest_source, spec.name


def test_spec_rejects_a_malformed_hash() -> None:
    with pytest.raises(ValueError, match="64 lower-case hex"):
        WeightSpec("x", "wide_resnet50_2", "http://x", "x.pth", "95faca4d", "s", "pth")


def test_cache_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PDD_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "explicit"
    assert weights.cached_path("vmamba_tiny_v0.in1k") == (
        tmp_path / "explicit" / "weights" / "vssmtiny_dp01_ckpt_epoch_292.pth"
    )
    monkeypatch.delenv("PDD_CACHE_DIR")
    assert weights.cache_dir() == tmp_path / "xdg" / "pdd"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights.cache_dir() == tmp_path / "home" / ".cache" / "pdd"


# ---------------------------------------------------------------- download


def test_download_checks_hash_and_shows_progress(
    cache: Path, server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    body = _torch_bytes({"w": torch.arange(6.0)}, tmp_path)
    server.files["/tiny.pth"] = body
    _add_spec(monkeypatch, f"{server.base}/tiny.pth", hashlib.sha256(body).hexdigest())

    path = weights.download("test.tiny", progress=True)

    assert path == cache / "weights" / "tiny.pth"
    assert path.read_bytes() == body
    assert "100%" in capfd.readouterr().err
    entry = _manifest(cache)["test.tiny"]
    assert entry["sha256"] == hashlib.sha256(body).hexdigest()
    assert entry["basis"] == "registry"
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.json", "tiny.pth"]
    assert torch.equal(weights.read_state_dict(path)["w"], torch.arange(6.0))
    # a good cached copy is not fetched again
    assert weights.download("test.tiny", progress=False) == path
    assert server.requests == 1


def test_download_mismatch_keeps_good_file(
    cache: Path, server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = _torch_bytes({"w": torch.ones(4)}, tmp_path)
    bad = _torch_bytes({"w": torch.zeros(4)}, tmp_path)
    good_hash, bad_hash = hashlib.sha256(good).hexdigest(), hashlib.sha256(bad).hexdigest()
    server.files["/tiny.pth"] = good
    _add_spec(monkeypatch, f"{server.base}/tiny.pth", good_hash)
    path = weights.download("test.tiny", progress=False)

    server.files["/tiny.pth"] = bad
    with pytest.raises(WeightsError) as info:
        weights.download("test.tiny", progress=False, force=True)
    message = str(info.value)
    assert good_hash in message and bad_hash in message and "\n" not in message
    assert path.read_bytes() == good
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.json", "tiny.pth"]


def test_download_mismatch_leaves_nothing(
    cache: Path, server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.files["/tiny.pth"] = _torch_bytes({"w": torch.zeros(4)}, tmp_path)
    _add_spec(monkeypatch, f"{server.base}/tiny.pth", "0" * 64)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        weights.download("test.tiny", progress=False)
    assert list((cache / "weights").iterdir()) == []


def test_download_http_404_names_url_and_import_command(
    cache: Path, server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{server.base}/missing.pth"
    _add_spec(monkeypatch, url, "0" * 64)
    with pytest.raises(WeightsError) as info:
        weights.download("test.tiny", progress=False)
    message = str(info.value)
    assert url in message and "HTTP 404" in message
    assert "`pdd weights import test.tiny /path/to/missing.pth`" in message
    assert list((cache / "weights").iterdir()) == []


@pytest.mark.parametrize(("published", "message"), [
    (True, "checksum mismatch"),
    (False, "not usable wide_resnet50_2 weights .*corrupt or truncated"),
])
def test_download_cut_off_leaves_nothing(
    cache: Path, server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    published: bool, message: str,
) -> None:
    body = _torch_bytes({"w": torch.randn(1000)}, tmp_path)
    server.files["/tiny.pth"] = body
    server.short.add("/tiny.pth")  # urllib reports no error for a short body: the checks must
    digest = hashlib.sha256(body).hexdigest() if published else None
    _add_spec(monkeypatch, f"{server.base}/tiny.pth", digest)
    with pytest.raises(WeightsError, match=message):
        weights.download("test.tiny", progress=False)
    assert list((cache / "weights").iterdir()) == []


def test_download_offline_gives_import_command(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{_free_port()}/tiny.pth"
    _add_spec(monkeypatch, url, "0" * 64)
    with pytest.raises(WeightsError) as info:
        weights.download("test.tiny", progress=False)
    message = str(info.value)
    assert message.startswith(f"{url}: could not be fetched")
    assert "`pdd weights import test.tiny /path/to/tiny.pth`" in message
    assert "\n" not in message


def test_download_url_override(
    cache: Path, server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = _torch_bytes({"w": torch.ones(2)}, tmp_path)
    server.files["/mirror/tiny.pth"] = body
    _add_spec(monkeypatch, f"{server.base}/gone.pth", hashlib.sha256(body).hexdigest())
    path = weights.download("test.tiny", progress=False, url=f"{server.base}/mirror/tiny.pth")
    assert path.read_bytes() == body
    assert _manifest(cache)["test.tiny"]["origin"].endswith("/mirror/tiny.pth")


def test_download_without_published_hash_trusts_first_use(
    cache: Path, server: _Server, wrn_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = wrn_files["good"].read_bytes()
    server.files["/wrn.pth"] = first
    spec = _add_spec(monkeypatch, f"{server.base}/wrn.pth", None)
    path = weights.download("test.tiny", progress=False)
    entry = _manifest(cache)["test.tiny"]
    assert entry["sha256"] == hashlib.sha256(first).hexdigest()
    assert entry["basis"] == "first-use"
    assert weights.verify("test.tiny").basis == "first-use"
    assert weights.list_weights()[-1]["checksum"] == "first-use"

    server.files["/wrn.pth"] = wrn_files["bad_shape"].read_bytes()
    with pytest.raises(WeightsError, match="recorded on first use"):
        weights.download("test.tiny", progress=False, force=True)
    assert path.read_bytes() == first
    # a first download that does not fit the teacher is never trusted
    path.unlink()
    (cache / "weights" / "manifest.json").unlink()
    with pytest.raises(WeightsError, match=f"{spec.url}: the download is not usable .*shape"):
        weights.download("test.tiny", progress=False)
    assert sorted(p.name for p in (cache / "weights").iterdir()) == []


# ---------------------------------------------------------------- verify and resolve


def test_verify_detects_a_modified_file(
    cache: Path, server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = _torch_bytes({"w": torch.ones(8)}, tmp_path)
    server.files["/tiny.pth"] = body
    _add_spec(monkeypatch, f"{server.base}/tiny.pth", hashlib.sha256(body).hexdigest())
    path = weights.download("test.tiny", progress=False)
    result = weights.verify("test.tiny")
    assert (result.path, result.basis) == (path, "registry")
    assert result.sha256 == hashlib.sha256(body).hexdigest()

    data = bytearray(body)
    data[-30] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum mismatch") as info:
        weights.verify("test.tiny")
    assert str(path) in str(info.value)


def test_verify_of_uncached_file_says_how_to_get_it(cache: Path) -> None:
    with pytest.raises(WeightsError, match="pdd weights download vmamba_tiny_v0.in1k"):
        weights.verify("vmamba_tiny_v0.in1k")


def test_resolve_missing_names_file_and_commands(cache: Path) -> None:
    with pytest.raises(WeightsError) as info:
        weights.resolve("wide_resnet50_2")
    message = str(info.value)
    expected = cache / "weights" / "wide_resnet50_2.racm_in1k.safetensors"
    assert message.startswith(f"{expected}:")
    assert "`pdd weights download wide_resnet50_2.racm_in1k`" in message
    assert (
        "`pdd weights import wide_resnet50_2.racm_in1k /path/to/model.safetensors`" in message
    )
    assert "--teachers random" in message and "\n" not in message


def test_resolve_finds_cached_file(cache: Path) -> None:
    target = weights.cached_path("vmamba_tiny_v0.in1k")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert weights.resolve("vmamba_tiny_v0") == target
    with pytest.raises(WeightsError, match="not found"):
        weights.resolve("wide_resnet50_2", "wide_resnet50_2.tv2_in1k")
    with pytest.raises(WeightsError, match="are for wide_resnet50_2, not vmamba_tiny_v0"):
        weights.resolve("vmamba_tiny_v0", "wide_resnet50_2.tv_in1k")
    with pytest.raises(WeightsError, match="unknown teacher 'resnet18'"):
        weights.resolve("resnet18")
    with pytest.raises(WeightsError, match="unknown weights 'nope'"):
        weights.resolve("vmamba_tiny_v0", "nope")


def test_list_weights_rows(cache: Path) -> None:
    target = weights.cached_path("wide_resnet50_2.tv_in1k")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    rows = {row["name"]: row for row in weights.list_weights()}
    assert set(rows) == set(weights.WEIGHTS)
    tv = rows["wide_resnet50_2.tv_in1k"]
    assert tv["cached"] is True and tv["default"] is False and tv["path"] == str(target)
    assert tv["checksum"] == "registry" and tv["sha256"].startswith("95faca4d")
    racm = rows["wide_resnet50_2.racm_in1k"]
    assert racm["default"] is True and racm["cached"] is False
    assert racm["url"] == weights.WEIGHTS["wide_resnet50_2.racm_in1k"].url


# ---------------------------------------------------------------- safe loading


def test_read_state_dict_unwraps_and_reads_safetensors(tmp_path: Path) -> None:
    sd = {"a.weight": torch.randn(2, 3), "a.bias": torch.zeros(2)}
    for wrapper in ("model", "state_dict"):
        path = tmp_path / f"{wrapper}.pth"
        torch.save({wrapper: sd, "epoch": 3}, path)
        loaded = weights.read_state_dict(path)
        assert loaded.keys() == sd.keys() and torch.equal(loaded["a.weight"], sd["a.weight"])
    legacy = tmp_path / "legacy.pth"  # torch's pre-1.6 (non-zip) serialisation
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(weights.read_state_dict(legacy)["a.bias"], sd["a.bias"])
    st = tmp_path / "weights.bin"  # the format is read from the content, not the name
    save_file(sd, str(st))
    assert torch.equal(weights.read_state_dict(st)["a.weight"], sd["a.weight"])


def _evil_payload(marker: Path) -> object:
    class Evil:
        def __reduce__(self) -> tuple:
            return (os.mkdir, (str(marker),))

    return {"model": Evil()}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "empty (0 bytes)"),
        ("truncated_torch", "corrupt or truncated PyTorch file"),
        ("truncated_safetensors", "corrupt or truncated safetensors file"),
        ("garbage", "not a PyTorch or safetensors weights file"),
        ("not_a_dict", "holds a list, not a state dict"),
        ("non_tensor", "entry 'note' is a str, not a tensor"),
        ("pickle_code", "would run code"),
    ],
)
def test_read_state_dict_rejects_bad_files(tmp_path: Path, case: str, message: str) -> None:
    path = tmp_path / f"{case}.pth"
    marker = tmp_path / "code_ran"
    good = tmp_path / "good.pth"
    torch.save({"w": torch.randn(64, 64)}, good)
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated_torch":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "truncated_safetensors":
        save_file({"w": torch.randn(64, 64)}, str(path))
        path.write_bytes(path.read_bytes()[:-100])
    elif case == "garbage":
        path.write_bytes(b"this is not a checkpoint\n" * 10)
    elif case == "not_a_dict":
        torch.save([torch.ones(1)], path)
    elif case == "non_tensor":
        torch.save({"w": torch.ones(1), "note": "hello"}, path)
    elif case == "pickle_code":
        torch.save(_evil_payload(marker), path)
    with pytest.raises(WeightsError) as info:
        weights.read_state_dict(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert not marker.exists()


# ---------------------------------------------------------------- import (strict architecture check)


@pytest.fixture(scope="module")
def wrn_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random-init torchvision WRN-50-2 backbone state dict, and one with a wrong shape."""
    root = tmp_path_factory.mktemp("wrn")
    torch.manual_seed(0)
    sd = {k: v for k, v in torchvision.models.wide_resnet50_2().state_dict().items()
          if not k.startswith("fc.")}
    good = root / "wrn_random.pth"
    torch.save(sd, good)
    sd["layer1.0.conv2.weight"] = torch.zeros(128, 128, 1, 1)
    bad_shape = root / "wrn_bad_shape.pth"
    torch.save(sd, bad_shape)
    return {"good": good, "bad_shape": bad_shape}


def test_import_valid_backbone(
    cache: Path, wrn_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = wrn_files["good"]
    digest = weights.sha256_file(source)
    _add_spec(monkeypatch, "http://127.0.0.1:9/unused", digest)
    path = weights.import_file("test.tiny", source)
    assert path == cache / "weights" / "tiny.pth"
    assert weights.sha256_file(path) == digest
    assert _manifest(cache)["test.tiny"]["basis"] == "registry"
    assert weights.verify("test.tiny").basis == "registry"
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.json", "tiny.pth"]


def test_import_checksum_mismatch_needs_explicit_consent(
    cache: Path, wrn_files: dict[str, Path]
) -> None:
    name = "wide_resnet50_2.tv_in1k"
    source = wrn_files["good"]
    with pytest.raises(WeightsError) as info:
        weights.import_file(name, source)
    message = str(info.value)
    assert weights.WEIGHTS[name].sha256 in message
    assert weights.sha256_file(source) in message and "--allow-checksum-mismatch" in message
    assert not weights.cached_path(name).exists()

    path = weights.import_file(name, source, allow_checksum_mismatch=True)
    assert _manifest(cache)[name]["basis"] == "accepted-mismatch"
    result = weights.verify(name)
    assert (result.path, result.basis) == (path, "accepted-mismatch")
    row = next(r for r in weights.list_weights() if r["name"] == name)
    assert row["checksum"] == "accepted-mismatch" and row["cached"]


@pytest.mark.parametrize("case", ["wrong_keys", "wrong_shape", "zero_byte", "corrupt", "pickle_code"])
def test_import_rejects_bad_files(
    cache: Path, wrn_files: dict[str, Path], tmp_path: Path, case: str
) -> None:
    name = "wide_resnet50_2.racm_in1k"
    marker = tmp_path / "code_ran"
    path = tmp_path / f"{case}.pth"
    if case == "wrong_keys":
        torch.save({"encoder.conv.weight": torch.zeros(3, 3)}, path)
    elif case == "wrong_shape":
        path = wrn_files["bad_shape"]
    elif case == "zero_byte":
        path.write_bytes(b"")
    elif case == "corrupt":
        path.write_bytes(wrn_files["good"].read_bytes()[:4096])
    elif case == "pickle_code":
        torch.save(_evil_payload(marker), path)
    with pytest.raises(WeightsError) as info:
        weights.import_file(name, path, allow_checksum_mismatch=True)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    if case in ("wrong_keys", "wrong_shape"):
        assert "weights do not fit the wide_resnet50_2 teacher" in message
    assert not marker.exists()
    assert not (cache / "weights").exists() or list((cache / "weights").iterdir()) == []


def test_import_missing_file(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such weights file"):
        weights.import_file("vmamba_tiny_v0.in1k", tmp_path / "nothing.pth")
