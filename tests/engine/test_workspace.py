"""Workspace: CRUD and metadata, name safety, content checks, size/bomb limits, crash safety,
concurrent writers. Crash and concurrency tests use real subprocesses (SIGKILL, parallel writers)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path

import pytest
from PIL import Image

from engine.atomic import atomic_write, file_lock, sweep_temp_files
from engine.mounts import host_id
from engine.workspace import Limits, Workspace, WorkspaceError, default_root, ensure_tutorials
from helpers import IMAGES, SHARED

REPO = Path(__file__).resolve().parents[2]
MODELS = SHARED / "models"
CFG = b"[net]\nwidth=416\nheight=416\nchannels=3\n\n[convolutional]\nfilters=16\nsize=3\n"
# the floats CFG's one conv needs (16 x 3 x 3 x 3 weights + 16 biases, 3 x 16 batch-norm values): a pair
# whose counts disagree is refused at upload
WEIGHTS = struct.pack("<3iq", 0, 2, 5, 0) + struct.pack("<448f", *range(448))


def png_bytes(w: int = 8, h: int = 6, color=(200, 30, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb_header(w: int = 30000, h: int = 30000) -> bytes:
    """A tiny PNG whose IHDR claims w x h pixels (a decompression-bomb header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")


def run_py(code: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, **kw)


def index_doc(ws: Workspace) -> dict:
    return json.loads((ws.root / ".qw-index.json").read_text("utf-8"))


# ----- basics and metadata -------------------------------------------------------------------
def test_root_is_created_private(tmp_path):
    ws = Workspace(tmp_path / "a" / "b")
    assert ws.root.is_dir()
    assert stat.S_IMODE(ws.root.stat().st_mode) == 0o700


def test_default_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("QW_WORKSPACE", str(tmp_path / "custom"))
    assert default_root() == tmp_path / "custom"
    assert Workspace().root == tmp_path / "custom"
    monkeypatch.delenv("QW_WORKSPACE")
    assert default_root() == Path.home() / "qwidgets-workspace"


def test_save_bytes_records_metadata(ws):
    data = png_bytes()
    e = ws.save_bytes("red", "image", {"red.png": data}, source="unit", method="upload")
    assert (e.name, e.kind, e.files, e.size) == ("red", "image", ("red.png",), len(data))
    assert e.sha256 == hashlib.sha256(data).hexdigest()
    created = datetime.fromisoformat(e.created)
    assert created.tzinfo is not None and created.utcoffset().total_seconds() == 0
    assert abs((datetime.now(timezone.utc) - created).total_seconds()) < 60
    assert ws.info("red") == e
    assert ws.read_bytes("red") == data
    assert ws.path_of("red") == ws.root / "images" / "red" / "red.png"
    assert index_doc(ws)["entries"]["red"]["sha256"] == e.sha256


def test_model_pair_from_real_yolov3_tiny_is_accepted(ws):
    cfg, weights = (MODELS / "yolov3-tiny.cfg").read_bytes(), (MODELS / "yolov3-tiny.weights").read_bytes()
    e = ws.save_bytes("tiny", "model", {"yolov3-tiny.cfg": cfg, "yolov3-tiny.weights": weights})
    assert e.files == ("yolov3-tiny.cfg", "yolov3-tiny.weights")
    assert e.size == len(cfg) + len(weights)
    manifest = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in
                       [("yolov3-tiny.cfg", cfg), ("yolov3-tiny.weights", weights)])
    assert e.sha256 == hashlib.sha256(manifest.encode()).hexdigest()
    assert ws.path_of("tiny", "yolov3-tiny.weights").read_bytes() == weights


def test_list_filters_by_kind_and_sorts(ws):
    ws.save_bytes("b-img", "image", {"b.png": png_bytes()})
    ws.save_bytes("a-rec", "record", {"run.json": b'{"map": 0.5}'})
    ws.save_bytes("c-set", "imageset", {"1.png": png_bytes(), "2.png": png_bytes(3, 3)})
    assert [e.name for e in ws.list()] == ["a-rec", "b-img", "c-set"]
    assert [e.name for e in ws.list("imageset")] == ["c-set"]
    with pytest.raises(WorkspaceError, match="kind 'weird'"):
        ws.list("weird")


def test_parent_must_exist_and_is_recorded(ws):
    ws.save_bytes("base", "model", {"m.cfg": CFG, "m.weights": WEIGHTS})
    e = ws.save_bytes("base-q", "quantized", {"m.cfg": CFG, "m.weights": WEIGHTS, "calib.json": b"{}"},
                      method="quantize:kl", parent="base")
    assert (e.parent, e.method) == ("base", "quantize:kl")
    with pytest.raises(WorkspaceError, match="parent 'nope'"):
        ws.save_bytes("x", "quantized", {"m.cfg": CFG, "m.weights": WEIGHTS}, parent="nope")


# ----- names ---------------------------------------------------------------------------------
BAD_NAMES = ["../x", "/etc/passwd", "a/b", "a\\b", "..", ".", ".hidden", "", "a\x00b", "a\nb",
             "tab\tname", "evil\u202egnp.exe", "zero\u200bwidth", " lead", "trail ", "x" * 129, "a\x1bb",
             "\U0001F600" * 60, "bad\udc80surrogate", 42]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_entry_names_are_refused(ws, bad, tmp_path):
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(WorkspaceError):
        ws.save_bytes(bad, "image", {"ok.png": png_bytes()})
    with pytest.raises(WorkspaceError):
        ws.save_bytes("ok", "image", {bad: png_bytes()})  # as a file name inside the entry
    assert ws.list() == [] and not ws.exists("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written beside the root
    assert not Path("/etc/passwd.png").exists()


@pytest.mark.parametrize("bad", ["../escape", "/abs", "new\nline", "rtl\u202e"])
def test_bad_names_are_refused_by_rename_and_upload(ws, bad):
    ws.save_bytes("good", "record", {"r.txt": b"hello"})
    with pytest.raises(WorkspaceError):
        ws.rename("good", bad)
    with pytest.raises(WorkspaceError):
        ws.add_upload({f"{bad}.png": png_bytes()})
    assert [e.name for e in ws.list()] == ["good"]
    assert (ws.root / "records" / "good" / "r.txt").read_bytes() == b"hello"


def test_error_message_names_the_character(ws):
    with pytest.raises(WorkspaceError, match=r"U\+202E"):
        ws.save_bytes("a\u202eb", "record", {"r.txt": b"x"})


def test_unicode_names_are_allowed_and_nfc_normalised(ws):
    e = ws.save_bytes("chien-e\u0301te\u0301", "record", {"r.txt": b"x"})
    assert e.name == "chien-\u00e9t\u00e9"
    assert ws.exists("chien-\u00e9t\u00e9")


# ----- content checks ------------------------------------------------------------------------
@pytest.mark.parametrize("files, match", [
    ({"m.cfg": b"[convolutional]\nfilters=1\n", "m.weights": WEIGHTS}, r"the first section must be \[net\]"),
    ({"m.cfg": b"\xff\xfe[net]", "m.weights": WEIGHTS}, "not UTF-8"),
    ({"m.cfg": CFG, "m.weights": b"\0" * 12}, "12 bytes"),
    ({"m.cfg": CFG, "m.weights": struct.pack("<3i", 500000, 0, 0) + b"\0" * 20}, "is not a Darknet weights header"),
    ({"m.cfg": CFG, "m.weights": WEIGHTS + b"\0\0"}, "whole number of float32"),
    ({"m.cfg": CFG}, "needs one .cfg with one .weights"),
    ({"m.cfg": CFG, "m.weights": WEIGHTS, "m.exe": b"MZ"}, "has type '.exe'"),
    ({"m.npz": b"PK not really"}, "not a NumPy .npz"),
])
def test_model_content_is_checked(ws, files, match):
    with pytest.raises(WorkspaceError, match=match):
        ws.save_bytes("m", "model", files)
    assert not ws.exists("m")


def test_engine_npz_model_is_accepted_and_any_other_npz_refused_as_loading_would(ws, tmp_path):
    """An engine model .npz (Model.save) or quantized model .npz is read at upload as engine.load /
    QuantizedModel.load read it: a bare np.savez, or one kind filed as the other, is refused with the loader's
    reason instead of being stored and failing when first opened."""
    import numpy as np
    from helpers import one_conv_session
    s = one_conv_session(tmp_path)
    s.model.save(tmp_path / "m.npz")
    s.qmodel.save(tmp_path / "q.npz")
    model_npz, q_npz = (tmp_path / "m.npz").read_bytes(), (tmp_path / "q.npz").read_bytes()
    assert ws.save_bytes("npz", "model", {"m.npz": model_npz}).files == ("m.npz",)
    assert ws.save_bytes("qnpz", "quantized", {"q.npz": q_npz}).files == ("q.npz",)
    buf = io.BytesIO()
    np.savez(buf, w=np.zeros(3, np.float32))
    with pytest.raises(WorkspaceError, match=r"^entry 'bare': bare/m\.npz: not an engine model file \(missing "
                                             r"'format'"):
        ws.save_bytes("bare", "model", {"m.npz": buf.getvalue()})
    with pytest.raises(WorkspaceError, match=r"^entry 'swapped': swapped/m\.npz: not a quantized model file"):
        ws.save_bytes("swapped", "quantized", {"m.npz": model_npz})
    assert sorted(e.name for e in ws.list()) == ["npz", "qnpz"]


def test_image_must_decode(ws):
    with pytest.raises(WorkspaceError, match="not a decodable image"):
        ws.save_bytes("fake", "image", {"fake.png": b"this is not a png"})
    with pytest.raises(WorkspaceError, match="corrupt or truncated"):
        ws.save_bytes("cut", "image", {"cut.jpg": (IMAGES / "dog.jpg").read_bytes()[:5000]})


def test_png_bomb_header_is_refused(ws):
    bomb = png_bomb_header(30000, 30000)
    assert len(bomb) < 200
    # 900 Mpx: Pillow itself refuses it at open() (over twice its own limit)
    with pytest.raises(WorkspaceError, match=r"bomb.png: .*900000000 pixels.*decompression bomb"):
        ws.add_upload({"bomb.png": bomb})
    # 72 Mpx: under Pillow's warning level, refused by open_image's max_pixels before decoding
    with pytest.raises(WorkspaceError, match=r"9000x8000 = 72000000 pixels exceeds the limit of 64000000"):
        ws.save_bytes("b2", "image", {"b2.png": png_bomb_header(9000, 8000)})
    with pytest.raises(WorkspaceError, match="decompression bomb"):
        ws.add_upload({"bombs.zip": zip_bytes({"a.png": png_bytes(), "b.png": bomb})})
    assert ws.list() == []


def test_oversize_upload_is_refused(ws, tmp_path):
    small = Workspace(tmp_path / "small", limits=Limits(image=1000, weights=64))
    with pytest.raises(WorkspaceError, match=r"exceeds the image limit of 1000 bytes"):
        small.add_upload({"dog.jpg": (IMAGES / "dog.jpg").read_bytes()})
    with pytest.raises(WorkspaceError, match=r"exceeds the weights limit of 64 bytes"):
        small.save_bytes("m", "model", {"m.cfg": CFG, "m.weights": WEIGHTS + b"\0" * 64})
    assert small.list() == []


def bytes_read_by_this_process() -> int:
    """`rchar` of /proc/self/io: every byte this process's read() calls returned, a sparse file's zeros
    included (Linux; CI and the hub run Linux)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_oversize_import_is_refused_before_reading(tmp_path):
    big = tmp_path / "huge.weights"
    with open(big, "wb") as f:  # sparse 8 GiB file: reading it would take long and use the RAM
        f.truncate(8 << 30)
    (tmp_path / "huge.cfg").write_bytes(CFG)
    ws = Workspace(tmp_path / "ws")
    before = bytes_read_by_this_process()
    with pytest.raises(WorkspaceError, match="exceeds the file limit"):
        ws.import_path(tmp_path / "huge.cfg")
    # the refusal reads the small cfg (and whatever a lazy import loads), not the weights: by the count of
    # bytes read, not by the time taken, which a loaded host stretches past any bound
    read = bytes_read_by_this_process() - before
    assert read < 4 << 20, f"{read} bytes read before refusing an 8 GiB file"
    with open(big, "rb") as f:  # the counter sees a read of this file (else the check above proves nothing)
        f.read(16 << 20)
    assert bytes_read_by_this_process() - before >= 16 << 20
    assert ws.list() == []


def test_zip_of_images_keeps_only_images(ws):
    data = zip_bytes({"set/a.png": png_bytes(), "set/b.jpg": (IMAGES / "dog.jpg").read_bytes(),
                      "set/readme.txt": b"hello", "__MACOSX/._a.png": b"junk", "set/sub/a.png": png_bytes(2, 2)})
    [e] = ws.add_upload({"holiday.zip": data})
    assert (e.name, e.kind) == ("holiday", "imageset")
    assert e.files == ("a-1.png", "a.png", "b.jpg")
    assert ws.path_of("holiday", "b.jpg").read_bytes() == (IMAGES / "dog.jpg").read_bytes()


@pytest.mark.parametrize("member", ["../evil.png", "/etc/evil.png", "a/../../evil.png", "C:/evil.png"])
def test_zip_with_escaping_member_is_refused(ws, member):
    with pytest.raises(WorkspaceError, match="absolute or '..' path"):
        ws.add_upload({"x.zip": zip_bytes({"ok.png": png_bytes(), member: png_bytes()})})
    assert ws.list() == []
    assert not (ws.root.parent / "evil.png").exists()


def test_zip_bomb_is_refused(tmp_path):
    ws = Workspace(tmp_path / "ws", limits=Limits(image=4 << 20, zip_total=8 << 20))
    bomb = zip_bytes({f"b{i}.png": b"\0" * (3 << 20) for i in range(4)})  # 12 MiB unpacked
    assert len(bomb) < 100_000  # highly compressed
    with pytest.raises(WorkspaceError, match="exceeds the total uncompressed zip limit"):
        ws.add_upload({"bomb.zip": bomb})
    one_big = zip_bytes({"big.png": b"\0" * (6 << 20)})
    with pytest.raises(WorkspaceError, match="possible zip bomb"):
        ws.add_upload({"one.zip": one_big})
    many = zip_bytes({f"{i}.txt": b"" for i in range(50)})
    with pytest.raises(WorkspaceError, match="more members than the limit of 10"):
        Workspace(tmp_path / "w2", limits=Limits(zip_members=10)).add_upload({"many.zip": many})
    assert ws.list() == []


def test_zip_without_images_is_refused(ws):
    with pytest.raises(WorkspaceError, match="no image members"):
        ws.add_upload({"docs.zip": zip_bytes({"a.txt": b"x"})})


# ----- uploads and imports -------------------------------------------------------------------
def test_upload_groups_files_into_entries(ws):
    done = ws.add_upload({"net.cfg": CFG, "net.weights": WEIGHTS, "dog.jpg": (IMAGES / "dog.jpg").read_bytes(),
                          "cal.zip": zip_bytes({"p.png": png_bytes()}), "run.json": b"[1, 2]"})
    assert sorted((e.name, e.kind) for e in done) == [
        ("cal", "imageset"), ("dog", "image"), ("net", "model"), ("run", "record")]
    assert ws.info("net").files == ("net.cfg", "net.weights")
    assert ws.info("dog").source == "upload:dog.jpg"


def test_upload_is_all_or_nothing(ws):
    with pytest.raises(WorkspaceError, match="unsupported file type"):
        ws.add_upload({"ok.png": png_bytes(), "virus.exe": b"MZ"})
    with pytest.raises(WorkspaceError, match="not a decodable image"):
        ws.add_upload({"ok.png": png_bytes(), "bad.png": b"nope"})
    with pytest.raises(WorkspaceError, match="no matching .weights"):
        ws.add_upload({"a.cfg": CFG, "b.cfg": CFG, "a.weights": WEIGHTS})
    assert ws.list() == []


def test_import_path_file_folder_and_model(ws, tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    (folder / "1.png").write_bytes(png_bytes())
    (folder / "2.jpg").write_bytes((IMAGES / "horses.jpg").read_bytes())
    (folder / "notes.txt").write_text("skip me")
    (folder / ".hidden.png").write_bytes(png_bytes())
    e = ws.import_path(folder)
    assert (e.name, e.kind, e.files, e.method) == ("calib", "imageset", ("1.png", "2.jpg"), "import")
    m = ws.import_path(MODELS / "yolov3-tiny.cfg", name="tiny")
    assert m.kind == "model" and m.files == ("yolov3-tiny.cfg", "yolov3-tiny.weights")
    (tmp_path / "lonely.cfg").write_bytes(CFG)
    with pytest.raises(WorkspaceError, match="matching .weights file .* was not found"):
        ws.import_path(tmp_path / "lonely.cfg")
    with pytest.raises(WorkspaceError, match="no such file"):
        ws.import_path(tmp_path / "missing.png")
    with pytest.raises(WorkspaceError, match="empty path"):
        ws.import_path("")


# ----- rename / delete / overwrite / export --------------------------------------------------
def test_rename_moves_folder_and_keeps_metadata(ws):
    e = ws.save_bytes("old", "record", {"r.txt": b"data"}, source="s")
    r = ws.rename("old", "new")
    assert (r.name, r.path, r.created, r.sha256) == ("new", "records/new", e.created, e.sha256)
    assert not ws.exists("old") and not (ws.root / "records" / "old").exists()
    assert ws.read_bytes("new") == b"data"
    ws.save_bytes("other", "record", {"r.txt": b"o"})
    with pytest.raises(WorkspaceError, match="already exists"):
        ws.rename("new", "other")
    with pytest.raises(WorkspaceError, match="'ghost': not in workspace"):
        ws.rename("ghost", "x")


def test_interrupted_rename_is_rolled_forward(ws, monkeypatch):
    ws.save_bytes("old", "record", {"r.txt": b"data"})
    import engine.workspace.store as wsmod

    def die(*_a):
        raise KeyboardInterrupt("killed between journal and folder move")
    monkeypatch.setattr(wsmod.os, "rename", die)
    with pytest.raises(KeyboardInterrupt):
        ws.rename("old", "new")
    monkeypatch.undo()
    assert index_doc(ws)["entries"]["new"]["moving_from"] == "records/old"  # journal was written
    assert (ws.root / "records" / "old" / "r.txt").exists()
    ws.save_bytes("next", "record", {"n.txt": b"n"})  # any writer finishes the move
    assert ws.read_bytes("new") == b"data"
    assert "moving_from" not in index_doc(ws)["entries"]["new"]


def test_delete_requires_explicit_confirm(ws):
    ws.save_bytes("keep", "record", {"r.txt": b"data"})
    for confirm in (False, "yes", 1):
        with pytest.raises(WorkspaceError, match="needs confirm=True; nothing was deleted"):
            ws.delete("keep", confirm=confirm)
    with pytest.raises(WorkspaceError, match="needs confirm=True"):
        ws.delete("keep")
    assert ws.read_bytes("keep") == b"data"
    ws.delete("keep", confirm=True)
    assert not ws.exists("keep") and not (ws.root / "records" / "keep").exists()
    with pytest.raises(WorkspaceError, match="nothing deleted"):
        ws.delete("keep", confirm=True)


def test_overwrite_is_explicit_and_replaces_content(ws):
    ws.save_bytes("r", "record", {"a.txt": b"one"})
    with pytest.raises(WorkspaceError, match="already exists"):
        ws.save_bytes("r", "record", {"a.txt": b"two"})
    assert ws.read_bytes("r") == b"one"
    e = ws.save_bytes("r", "record", {"b.txt": b"two"}, overwrite=True)
    assert ws.read_bytes("r") == b"two" and e.files == ("b.txt",)
    assert [p.name for p in (ws.root / "records").iterdir()] == [Path(e.path).name]


def test_export_zip_has_files_and_metadata(ws, tmp_path):
    ws.save_bytes("set", "imageset", {"1.png": png_bytes(), "2.png": png_bytes(4, 4)})
    out = ws.export("set", tmp_path / "out")
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["set/1.png", "set/2.png", "set/qwidgets-entry.json"]
        assert zf.read("set/2.png") == png_bytes(4, 4)
        assert json.loads(zf.read("set/qwidgets-entry.json"))["sha256"] == ws.info("set").sha256


def test_corrupt_index_is_reported_and_kept(ws):
    ws.save_bytes("r", "record", {"a.txt": b"one"})
    (ws.root / ".qw-index.json").write_text("{not json")
    with pytest.raises(WorkspaceError, match="unreadable workspace index"):
        ws.list()
    with pytest.raises(WorkspaceError, match="unreadable workspace index"):
        ws.save_bytes("s", "record", {"a.txt": b"two"})
    assert (ws.root / ".qw-index.json").read_text() == "{not json"


# ----- crash safety --------------------------------------------------------------------------
def test_atomic_write_killed_mid_write_keeps_old_file(tmp_path):
    target = tmp_path / "model.weights"
    target.write_bytes(b"OLD" * 1000)
    proc = run_py("""
        import sys, time
        from engine.atomic import atomic_write
        def slow(f):
            for i in range(1000):
                f.write(b"NEW" * 100_000)
                f.flush()
                if i == 2:
                    print("writing", flush=True)
                time.sleep(0.01)
        atomic_write(sys.argv[1], slow)
        print("done", flush=True)
    """, str(target), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    temps = list(tmp_path.glob(".model.weights.qwtmp-*"))
    assert len(temps) == 1 and temps[0].stat().st_size >= 300_000  # really mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"OLD" * 1000
    assert sweep_temp_files(tmp_path) == temps and not temps[0].exists()


def test_atomic_write_failure_keeps_old_file_and_cleans_up(tmp_path):
    target = tmp_path / "f.json"
    atomic_write(target, "old")
    os.chmod(target, 0o640)

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o640


def test_workspace_save_killed_mid_write_keeps_old_entry(ws):
    old = ws.save_bytes("big", "record", {"data.txt": b"old content\n" * 1000})
    proc = run_py("""
        import sys
        from engine.workspace import Limits, Workspace
        ws = Workspace(sys.argv[1], limits=Limits(record=2 << 30))
        ws.save_bytes("big", "record", {"data.txt": b"x" * (600 << 20)}, overwrite=True)
        print("finished", flush=True)
    """, str(ws.root), stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    staged = []
    while time.monotonic() < deadline and proc.poll() is None:
        staged = [p for p in (ws.root / ".qw-staging").glob(f"h{host_id()}-{proc.pid}-*/data.txt") if p.stat().st_size > 0]
        if staged:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert staged, "the writer never started writing its file"
    assert proc.returncode == -signal.SIGKILL and proc.stdout.read() == ""  # killed before the commit
    assert ws.info("big") == old
    assert ws.read_bytes("big") == b"old content\n" * 1000
    assert hashlib.sha256(ws.read_bytes("big")).hexdigest() == old.sha256
    assert list(index_doc(ws)["entries"]) == ["big"]
    ws.save_bytes("after", "record", {"a.txt": b"a"})  # next writer sweeps the dead writer's staging
    assert not any((ws.root / ".qw-staging").glob(f"h{host_id()}-{proc.pid}-*"))


def test_concurrent_writers_keep_every_entry(ws):
    n_proc, n_each = 6, 12
    go = ws.root / "go"
    procs = [run_py("""
        import os, sys, time
        from engine.workspace import Workspace
        root, who, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
        ws = Workspace(root)
        while not os.path.exists(go):
            time.sleep(0.001)
        for j in range(n):
            ws.save_bytes(f"w{who}-{j}", "record", {"r.txt": f"{who}:{j}".encode()})
            ws.save_bytes("shared", "record", {"r.txt": f"{who}:{j}".encode()}, overwrite=True)
    """, str(ws.root), str(i), str(n_each), str(go), stderr=subprocess.PIPE, text=True)
        for i in range(n_proc)]
    time.sleep(0.5)
    go.touch()
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read()
    entries = index_doc(ws)["entries"]  # valid JSON
    expected = {f"w{i}-{j}" for i in range(n_proc) for j in range(n_each)} | {"shared"}
    assert set(entries) == expected
    for name in expected - {"shared"}:
        assert ws.read_bytes(name) == f"{name[1:].replace('-', ':')}".encode()
    assert ws.read_bytes("shared").decode() in {f"{i}:{n_each - 1}" for i in range(n_proc)}
    folders = {p.name for p in (ws.root / "records").iterdir()}
    assert folders == {Path(d["path"]).name for d in entries.values()}  # no leftovers of overwrites


def test_file_lock_excludes_other_processes(tmp_path):
    # the other process holds the lock until told to let go (it held it for a fixed 1 s: a test process
    # descheduled for ~0.8 s on a loaded CI host then found it free, or waited less than its 0.2 s bound)
    lock, released = tmp_path / "lock", tmp_path / "released"
    proc = run_py("""
        import sys
        from pathlib import Path
        from engine.atomic import file_lock
        with file_lock(sys.argv[1]):
            print("locked", flush=True)
            sys.stdin.readline()
            Path(sys.argv[2]).touch()        # the last thing it does while holding the lock
    """, str(lock), str(released), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    got: list[bool] = []
    acquired = threading.Event()

    def waiter() -> None:
        with file_lock(lock, timeout=60):
            got.append(released.exists())
            acquired.set()
    t = threading.Thread(target=waiter)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(TimeoutError, match="lock still held"):
            with file_lock(lock, timeout=0.2):
                pass
        t.start()
        assert not acquired.wait(0.3)        # still held: the waiter keeps waiting
    finally:
        proc.stdin.write("release\n")       # (also when a check failed: the holder never waits for ever)
        proc.stdin.close()
    if t.ident is not None:
        t.join(90)
    assert proc.wait(60) == 0
    assert got == [True]                     # it got the lock, and only after the holder let go


# ----- tutorials and import boundary ---------------------------------------------------------
def test_ensure_tutorials_copies_once_and_keeps_user_edits(tmp_path):
    src = tmp_path / "shared-tutorials"
    (src / "data").mkdir(parents=True)
    (src / "01_intro.ipynb").write_text('{"cells": []}')
    (src / "data" / "x.txt").write_text("x")
    (src / ".ipynb_checkpoints").mkdir()
    (src / ".ipynb_checkpoints" / "old.ipynb").write_text("{}")
    for p in (src / "01_intro.ipynb", src / "data" / "x.txt"):
        os.chmod(p, 0o444)  # read-only shared copy
    ws = Workspace(tmp_path / "ws")
    copied = ensure_tutorials(src, ws)
    dest = ws.root / "tutorials"
    assert sorted(copied) == [dest / "01_intro.ipynb", dest / "data" / "x.txt"]
    assert stat.S_IMODE((dest / "01_intro.ipynb").stat().st_mode) == 0o600
    (dest / "01_intro.ipynb").write_text("my edits")
    assert ensure_tutorials(src, ws) == []
    assert (dest / "01_intro.ipynb").read_text() == "my edits"
    with pytest.raises(WorkspaceError, match="not a directory"):
        ensure_tutorials(tmp_path / "missing", ws)


def test_engine_workspace_imports_no_widget_modules():
    out = subprocess.run([sys.executable, "-c", "import sys, engine.workspace.store, engine.imaging.augment; "
                          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                          "('ipywidgets', 'traitlets', 'IPython')))"],
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_open_root_is_warned_about_not_changed(tmp_path, caplog):
    root = tmp_path / "shared"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    with caplog.at_level("WARNING", logger="engine.workspace.store"):
        Workspace(root)
    assert "readable by other users (mode 755)" in caplog.text
    assert stat.S_IMODE(root.stat().st_mode) == 0o755


def test_tampered_index_path_is_never_followed(ws, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    ws.save_bytes("r", "record", {"keep.txt": b"mine"})
    doc = index_doc(ws)
    doc["entries"]["r"]["path"] = "../victim"
    (ws.root / ".qw-index.json").write_text(json.dumps(doc))
    for action in (lambda: ws.path_of("r"), lambda: ws.read_bytes("r"), lambda: ws.export_bytes("r"),
                   lambda: ws.delete("r", confirm=True), lambda: ws.rename("r", "s")):
        with pytest.raises(WorkspaceError, match="outside the workspace"):
            action()
    assert (victim / "keep.txt").read_text() == "precious"
    assert index_doc(ws) == doc  # nothing changed


def test_upload_with_clashing_entry_names_saves_nothing(ws):
    with pytest.raises(WorkspaceError, match="several files would become entry 'dog'"):
        ws.add_upload({"dog.jpg": (IMAGES / "dog.jpg").read_bytes(), "dog.png": png_bytes()})
    assert ws.list() == []


def test_an_entry_file_cannot_take_the_exports_metadata_name(ws, tmp_path):
    # it used to be stored, and its export zip then held two members 'notes/qwidgets-entry.json'
    for name in ("qwidgets-entry.json", "QWidgets-Entry.JSON"):
        with pytest.raises(WorkspaceError, match="reserved for the entry's metadata"):
            ws.save_bytes("notes", "record", {name: b"{}", "a.txt": b"x"})
    assert ws.list() == []
    ws.save_bytes("notes", "record", {"entry.json": b"{}"})
    with zipfile.ZipFile(ws.export("notes", tmp_path / "out")) as zf:
        names = zf.namelist()
    assert len(names) == len(set(names)) == 2


def test_upload_and_import_file_an_npz_by_its_content(ws, tmp_path):
    """(regression) every .npz became a "model" entry: a quantized model uploaded with the view's "auto"
    kind was missing from the Explorer's quantized picker and failed to open as a model."""
    import numpy as np

    import engine
    from engine.calib.collect import collect
    from engine.quant.qmodel import quantize_model
    from engine.session import Session
    model = engine.load(REPO / "tests" / "corpus" / "weights" / "tiny.cfg", random_weights=0)
    x = np.random.default_rng(0).random(model.input_shape, dtype=np.float32)
    qm = quantize_model(model, collect(model, [x], progress=False), "minmax")
    run = Session(model, qm, "int", x)
    run.run()
    paths = {"m": model.save(tmp_path / "m.npz"), "q": qm.save(tmp_path / "q.npz"),
             "r": run.save_record(tmp_path / "r.npz")}
    done = ws.add_upload({f"{k}.npz": Path(p).read_bytes() for k, p in paths.items()})
    assert sorted((e.name, e.kind) for e in done) == [("m", "model"), ("q", "quantized"), ("r", "record")]
    assert ws.import_path(paths["q"], name="q2").kind == "quantized"
    assert ws.import_path(paths["m"], name="m2").kind == "model"
    # an .npz that is neither, or a quantized model filed as a model on request, would fail when opened
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(WorkspaceError, match="plain/plain.npz: not an engine model file"):
        ws.add_upload({"plain.npz": (tmp_path / "plain.npz").read_bytes()})
    with pytest.raises(WorkspaceError, match="q3/q3.npz: not an engine model file"):
        ws.add_upload({"q3.npz": Path(paths["q"]).read_bytes()}, kind="model")
    folder = tmp_path / "qfolder"
    folder.mkdir()
    (folder / "q.npz").write_bytes(Path(paths["q"]).read_bytes())
    (folder / "notes.txt").write_text("calibrated on 1 image")
    assert ws.import_path(folder, name="q4").kind == "quantized"


@pytest.mark.parametrize("weights, words", [
    (WEIGHTS[:-4], "m.weights holds 447 floats, m.cfg needs 448 (cut short: an interrupted download?; or the weights "
                   "of another cfg)"),
    (WEIGHTS + b"\0" * 4, "m.weights holds 449 floats, m.cfg needs 448 (too many; or the weights of another cfg)")])
def test_a_model_pair_whose_weights_do_not_fit_its_cfg_is_refused_at_upload(ws, weights, words):
    """(regression) a .weights one float short was stored with its cfg; the error came when the entry was
    first opened, after the user had moved on. Loading refuses both counts, so the upload does too."""
    for save in (lambda: ws.save_bytes("m", "model", {"m.cfg": CFG, "m.weights": weights}),
                 lambda: ws.add_upload({"m.cfg": CFG, "m.weights": weights})):
        with pytest.raises(WorkspaceError, match=re.escape(f"entry 'm': {words}")):
            save()
    assert ws.list() == []
    with pytest.raises(WorkspaceError, match=r"entry 'm': m\.cfg:\d+ \[convolutional\]"):     # a cfg that does not build
        ws.save_bytes("m", "model", {"m.cfg": CFG.replace(b"filters=16", b"filters=-1"), "m.weights": WEIGHTS})


def test_an_upload_of_text_instead_of_bytes_is_named(ws):
    # (regression) a str in place of the file's bytes was a raw TypeError ('string argument without an encoding')
    with pytest.raises(WorkspaceError, match=r"^upload: file 'notes\.txt': expected bytes, got str$"):
        ws.add_upload({"notes.txt": "hello"})


def test_export_to_a_folder_of_the_users_never_replaces_a_zip_there(ws, tmp_path):
    """The zip an image set was imported from may sit in the folder exported to: it holds members the import
    dropped, so an export of that name there is refused (naming it) unless overwrite=True; the workspace's own
    exports folder keeps replacing the last export."""
    out = tmp_path / "out"
    out.mkdir()
    original = out / "set.zip"
    original.write_bytes(b"the user's own zip, with notes the import dropped")
    ws.save_bytes("set", "imageset", {"1.png": png_bytes()})
    with pytest.raises(WorkspaceError, match=r"export 'set': .*set\.zip already exists; pass overwrite=True"):
        ws.export("set", out)
    assert original.read_bytes() == b"the user's own zip, with notes the import dropped"
    assert sorted(p.name for p in out.iterdir()) == ["set.zip"]           # no temp file left behind
    with zipfile.ZipFile(ws.export("set", out, overwrite=True)) as zf:
        assert "set/1.png" in zf.namelist()
    first = ws.export("set")
    ws.save_bytes("set", "imageset", {"2.png": png_bytes(4, 4)}, overwrite=True)
    assert ws.export("set") == first
    with zipfile.ZipFile(first) as zf:
        assert "set/2.png" in zf.namelist()
