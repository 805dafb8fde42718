"""Reliability corpus (issue 16; listed in tests/corpus/README.md, "Reliability round 2").

One or more cases per defect class: files and crash safety (temp names, FIFO/device/folder
targets, missing folders), names and paths (symlinks out of a workspace, hand-edited index
names, Unicode normalisation), untrusted files (forged sizes and shapes, truncated/empty/malformed
records and quantized models, implausible values). Each case goes through a public entry point
and must raise the listed EngineError subclass with the fragment (and the file's name where one
is involved), leave nothing behind, and use little memory.
"""
from __future__ import annotations

import io
import json
import os
import struct
import time
import tracemalloc
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.atomic import atomic_savez, atomic_write, sweep_temp_files, temp_path
from engine.errors import EngineError, FileError, WeightsError
from engine.npzfile import NpzReader
from engine.workspace import Workspace, WorkspaceError
from helpers import cli

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus"
WEIGHTS_CFG = CORPUS / "weights" / "tiny.cfg"
RAW = (IndexError, ZeroDivisionError, MemoryError, RecursionError, AttributeError, TypeError, KeyError,
       struct.error, OverflowError, EOFError, UnicodeDecodeError, zipfile.BadZipFile, FileNotFoundError)


def expect(cls, fragment, fn, *args, **kwargs) -> BaseException:
    try:
        fn(*args, **kwargs)
    except cls as err:
        assert isinstance(err, EngineError), f"{type(err).__name__} is not an EngineError"
        assert fragment in str(err), f"{fragment!r} not in {str(err)!r}"
        return err
    except RAW as err:  # pragma: no cover - the failure report
        pytest.fail(f"raw {type(err).__name__}: {err}")
    pytest.fail(f"no {cls.__name__} raised")


def litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".qwtmp-" in p.name or p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def corpus_q():
    from engine.calib.collect import collect
    from engine.quant.qmodel import quantize_model
    model = engine.load(WEIGHTS_CFG, random_weights=0)
    xs = [np.random.default_rng(i).random(model.input_shape, dtype=np.float32) for i in range(2)]
    return model, quantize_model(model, collect(model, xs, progress=False), "minmax", per_channel=True)


# ------------------------------------------------------------------------------ files and crash safety
def test_f_temp_name_is_recognisable_unique_and_bounded(tmp_path):
    import threading
    names = set()

    def make():
        names.add(temp_path(tmp_path / ("n" * 250)).name)
    threads = [threading.Thread(target=make) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(names) == 8
    for n in names:
        assert f".qwtmp-{os.getpid()}-" in n and len(n.encode()) <= 240


def test_f_250_char_name_saves(tmp_path, corpus_q):
    model, qm = corpus_q
    long = tmp_path / ("m" * 246 + ".npz")
    assert len(long.name) == 250
    model.save(long)
    assert engine.load(long).layers[0].kind == "convolutional" and litter(tmp_path) == []
    qm.save(long)
    assert litter(tmp_path) == []


@pytest.mark.parametrize("case", ["f_fifo", "f_dev_null", "f_folder", "f_missing_folder"])
def test_f_refused_targets(case, tmp_path, corpus_q):
    model, qm = corpus_q
    target = {"f_fifo": tmp_path / "pipe", "f_dev_null": Path("/dev/null"), "f_folder": tmp_path / "dir",
              "f_missing_folder": tmp_path / "missing" / "m.npz"}[case]
    if case == "f_fifo":
        os.mkfifo(target)
    if case == "f_folder":
        target.mkdir()
    fragment = {"f_fifo": "is a FIFO", "f_dev_null": "is a device node", "f_folder": "is a folder",
                "f_missing_folder": "does not exist"}[case]
    for save in (model.save, qm.save, model.save_weights, lambda p: atomic_write(p, b"x")):
        err = expect(FileError, fragment, save, target)
        assert str(target) in str(err)
    assert litter(tmp_path) == [] and not (tmp_path / "missing").exists()
    if case == "f_fifo":
        assert Path(target).is_fifo()


def test_f_dead_writers_temp_files_are_reclaimed_live_ones_kept(tmp_path):
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    from engine.atomic import _HOST
    other = "ffff" if _HOST != "ffff" else "eeee"
    leftovers = [f".m.npz.qwtmp-{dead}-{dead}-{_HOST}abcdef",                         # this writer's
                 f".m.npz.qwtmp-{dead}-7-{other}000000.old"[:-4]]                     # another host's, 2 days old
    live = [f".m.npz.qwtmp-{os.getpid()}-1-{_HOST}00ff00", f".m.npz.qwtmp-1-1-{_HOST}00ff00",  # us, and pid 1
            f".m.npz.qwtmp-{dead}-7-{other}111111"]                                 # another host's, recent
    # names of this writer's early versions are a user's hidden names too ('.thesis.20240611.bak.tmp'):
    # never reclaimed, since the sweep runs in every folder written into (a home folder)
    users = ["user.tmp", ".hidden", f".m.npz.tmp{dead}", f".idx.json.{dead}.k2j_x9.tmp", f".yolov3.weights.part{dead}"]
    live += users[2:]
    for n in leftovers + live + users[:2]:
        (tmp_path / n).write_bytes(b"x" * 10)
    old = time.time() - 2 * 24 * 3600
    os.utime(tmp_path / leftovers[-1], (old, old))
    atomic_write(tmp_path / "m.npz", b"new")      # the next save into the folder reclaims them
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(live + ["user.tmp", ".hidden", "m.npz"])
    assert sweep_temp_files(tmp_path) == []


# ------------------------------------------------------------------------------ untrusted files
def _npy_header(shape, dtype="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _with_member(good: bytes, name: str, payload: bytes, declared_size: int | None = None) -> bytes:
    """`good` (an .npz) plus member `name`; `declared_size` forges the sizes the zip directory claims."""
    buf = io.BytesIO(good)
    with zipfile.ZipFile(buf, "a", zipfile.ZIP_STORED) as zf:
        zf.writestr(name, payload)
    data = bytearray(buf.getvalue())
    if declared_size is not None:
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
            info, pos = zf.getinfo(name), zf.start_dir
        struct.pack_into("<I", data, info.header_offset + 22, declared_size)   # local header: size
        while data[pos:pos + 4] == b"PK\x01\x02":                              # central directory
            n, extra, comment = struct.unpack_from("<3H", data, pos + 28)
            if data[pos + 46:pos + 46 + n] == name.encode():
                struct.pack_into("<I", data, pos + 24, declared_size)
            pos += 46 + n + extra + comment
    return bytes(data)


def _replace_member(good: bytes, name: str, payload: bytes) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(good))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for info in src.infolist():
            zf.writestr(info.filename, payload if info.filename == name else src.read(info.filename))
    return out.getvalue()


TERA = (1 << 40) // 4
# (id, which file, mutation of its bytes, fragment); every case: WeightsError naming the file, < 64 MB peak
UNTRUSTED_CASES = [
    ("u_model_terabyte_shape", "model", lambda b: _replace_member(b, "layer0/weights.npy", _npy_header((TERA,)) + b"\0" * 64),
     "declares shape"),
    ("u_model_3gb_extra_member", "model", lambda b: _with_member(b, "junk.npy", _npy_header((3 << 28,)) + b"\0" * 64,
                                                                  declared_size=len(_npy_header((3 << 28,))) + (3 << 30)),
     "no engine model file uses them"),
    ("u_qmodel_3gb_extra_member", "qmodel", lambda b: _with_member(b, "junk.npy", _npy_header((3 << 28,)) + b"\0" * 64,
                                                                    declared_size=len(_npy_header((3 << 28,))) + (3 << 30)),
     "no quantized model uses them"),
    ("u_qmodel_3gb_w_q", "qmodel", lambda b: _with_member(b, "layer0/extra.npy", _npy_header((3 << 30,), "|i1"),
                                                           declared_size=len(_npy_header((3 << 30,), "|i1")) + (3 << 30)),
     "no quantized model uses them"),
    ("u_qmodel_terabyte_histogram", "qmodel", lambda b: _replace_member(b, "calib/0/counts.npy", _npy_header((TERA,), "<i8")),
     "declares shape"),
    ("u_qmodel_object_array", "qmodel", lambda b: _replace_member(b, "meta.npy", _npy_header((1,), "|O") + b"\0" * 8),
     "pickled data is never loaded"),
    ("u_qmodel_scale_1e-45", "qmodel", lambda b: _meta_edit(b, scales={"0": 1e-45}), "plausible scale"),
    ("u_qmodel_scale_1e30", "qmodel", lambda b: _meta_edit(b, scales={"input": 1e30}), "plausible scale"),
    ("u_qmodel_in_scale_1e-300", "qmodel", lambda b: _meta_edit(b, in_scales={"0": 1e-300}), "plausible scale"),
    ("u_qmodel_float_layers_999", "qmodel", lambda b: _meta_edit(b, float_layers=[999]), "float_layers [999]"),
    ("u_qmodel_w_scale_1e-40", "qmodel", lambda b: _array_edit(b, "layer0/w_scale", lambda a: a * 0 + 1e-40), "plausible"),
    ("u_qmodel_empty", "qmodel", lambda b: b"", "cannot read quantized model"),
    ("u_qmodel_truncated_half", "qmodel", lambda b: b[:len(b) // 2], "cannot read quantized model"),
    ("u_model_member_not_npy", "model", lambda b: _with_member(b, "notes.txt", b"hello"), "is not a .npy array"),
]


def _meta_edit(good: bytes, **changes) -> bytes:
    z = dict(np.load(io.BytesIO(good), allow_pickle=False))
    meta = json.loads(bytes(z["meta"]).decode())
    for k, v in changes.items():
        meta[k] = {**meta[k], **v} if isinstance(v, dict) else v
    z["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    out = io.BytesIO()
    np.savez(out, **z)
    return out.getvalue()


def _array_edit(good: bytes, key: str, fn) -> bytes:
    z = dict(np.load(io.BytesIO(good), allow_pickle=False))
    z[key] = fn(z[key])
    out = io.BytesIO()
    np.savez(out, **z)
    return out.getvalue()


@pytest.mark.parametrize("case", UNTRUSTED_CASES, ids=[c[0] for c in UNTRUSTED_CASES])
def test_u_untrusted_model_files(case, corpus_q, tmp_path):
    from engine.quant.qmodel import QuantizedModel
    _, which, mutate, fragment = case
    model, qm = corpus_q
    good = (model if which == "model" else qm).save(tmp_path / "good.npz").read_bytes()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(mutate(good))
    load = engine.load if which == "model" else QuantizedModel.load
    tracemalloc.start()
    try:
        err = expect(WeightsError, fragment, load, bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(bad) in str(err) and peak < 64 << 20


def test_u_upload_check_refuses_forged_npz(corpus_q, tmp_path):
    model, _ = corpus_q
    good = model.save(tmp_path / "good.npz").read_bytes()
    ws = Workspace(tmp_path / "ws")
    huge = _with_member(good, "junk.npy", _npy_header((3 << 28,)) + b"\0" * 64,
                        declared_size=len(_npy_header((3 << 28,))) + (3 << 30))
    expect(WorkspaceError, "possible zip bomb", ws.save_bytes, "m", "model", {"m.npz": huge})
    terabyte = _replace_member(good, "layer0/weights.npy", _npy_header((TERA,)))
    expect(WorkspaceError, "declares shape", ws.save_bytes, "m", "model", {"m.npz": terabyte})
    assert ws.list() == []
    ws.save_bytes("m", "model", {"m.npz": good})       # the genuine file is accepted
    assert engine.load(ws.path_of("m")).layers[0].kind == "convolutional"


def test_u_npz_reader_checks_headers_before_reading(tmp_path):
    path = atomic_savez(tmp_path / "a.npz", {"x": np.arange(6, dtype=np.int16).reshape(2, 3),
                                              "f": np.asfortranarray(np.arange(6.0).reshape(2, 3))})
    with NpzReader(path) as r:
        assert r.shape("x") == (2, 3) and r.dtype("x") == np.int16 and r.nbytes("x") == 12
        assert np.array_equal(r["x"], np.arange(6).reshape(2, 3))
        assert np.array_equal(r["f"], np.arange(6.0).reshape(2, 3))
        expect(WeightsError, "more than the 8 bytes allowed", r.read, "x", 8)
        expect(WeightsError, "array 'y' is missing", r.read, "y")


# ------------------------------------------------------------------------------ names and paths
def _ws_with_entry(tmp_path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.save_bytes("r", "record", {"a.txt": b"mine", "b.txt": b"also mine"})
    return ws


def test_p_symlinked_file_is_never_followed(tmp_path):
    ws = _ws_with_entry(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("other user's data")
    target = ws.root / ws.info("r").path / "a.txt"
    target.unlink()
    target.symlink_to(secret)
    for call in (lambda: ws.read_bytes("r", "a.txt"), lambda: ws.export_bytes("r"), lambda: ws.export("r"),
                 lambda: ws.path_of("r", "a.txt"), lambda: ws.path_of("r")):
        expect(WorkspaceError, "symlink", call)
    assert ws.read_bytes("r", "b.txt") == b"also mine"


def test_p_symlinked_entry_folder_and_kind_folder_are_refused(tmp_path):
    ws = _ws_with_entry(tmp_path)
    other = Workspace(tmp_path / "other")
    other.save_bytes("x", "record", {"a.txt": b"theirs"})
    folder = ws.root / ws.info("r").path
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
    folder.symlink_to(other.root / other.info("x").path)
    expect(WorkspaceError, "symlink", ws.read_bytes, "r", "a.txt")
    expect(WorkspaceError, "symlink", ws.export_bytes, "r")
    # a linked kind folder: a save must not land in the other workspace
    (ws.root / "images").symlink_to(other.root / "records")
    png = _png()
    expect(WorkspaceError, "is a symlink or not a folder", ws.save_bytes, "img", "image", {"i.png": png})
    assert sorted(p.name for p in (other.root / "records").iterdir()) == ["x"]


def _png() -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def test_p_hand_edited_index_names_are_validated(tmp_path):
    ws = _ws_with_entry(tmp_path)
    doc = json.loads((ws.root / ".qw-index.json").read_text())
    doc["entries"]["../../x"] = {**doc["entries"]["r"], "name": "../../x"}
    doc["entries"]["r"]["files"] = ["../../../etc/passwd"]
    (ws.root / ".qw-index.json").write_text(json.dumps(doc))
    out = tmp_path / "exports"
    expect(WorkspaceError, "path separator", ws.export, "../../x", out)
    expect(WorkspaceError, "path separator", ws.read_bytes, "r", "../../../etc/passwd")
    assert not out.exists() and not (tmp_path / "x.zip").exists()
    assert ws.list() == []   # both records are refused (and logged), the listing still works


def test_p_nfd_and_nfc_spellings_are_one_name(tmp_path):
    ws = Workspace(tmp_path / "ws")
    nfd, nfc = unicodedata.normalize("NFD", "café"), "café"
    assert nfd != nfc
    ws.save_bytes(nfd, "record", {nfd + ".txt": b"1"})
    assert ws.exists(nfc) and ws.read_bytes(nfc, nfc + ".txt") == b"1" == ws.read_bytes(nfd, nfd + ".txt")
    expect(WorkspaceError, "already exists", ws.save_bytes, nfc, "record", {"x.txt": b"2"})
    ws.rename(nfc, nfd + "2")
    assert [e.name for e in ws.list()] == [nfc + "2"]
    ws.delete(nfd + "2", confirm=True)
    assert ws.list() == []


def test_p_names_differing_only_by_normalisation_are_not_collapsed(tmp_path):
    ws = Workspace(tmp_path / "ws")
    nfd, nfc = unicodedata.normalize("NFD", "é.txt"), "é.txt"
    expect(WorkspaceError, "Unicode NFC normalisation", ws.save_bytes, "r", "record", {nfd: b"1", nfc: b"2"})
    expect(WorkspaceError, "Unicode NFC normalisation", ws.add_upload, {nfd: b"1", nfc: b"2"})
    assert ws.list() == []


def test_p_interrupted_overwrite_leaves_no_orphan_folder(tmp_path):
    """The journal states of a killed overwrite (before and after the commit) are both cleaned up."""
    ws = _ws_with_entry(tmp_path)
    old = ws.info("r").path
    for committed in (False, True):
        orphan = f"records/r~{'abcdef' if committed else '123456'}"
        (ws.root / orphan).mkdir()
        (ws.root / orphan / "a.txt").write_bytes(b"new")
        doc = json.loads((ws.root / ".qw-index.json").read_text())
        doc["pending"] = [{"name": "r", "new": orphan, "old": old}]
        if committed:
            doc["entries"]["r"]["path"] = orphan
        (ws.root / ".qw-index.json").write_text(json.dumps(doc))
        ws = Workspace(ws.root)                       # opening the workspace finishes the job
        keep = orphan if committed else old
        assert sorted(os.listdir(ws.root / "records")) == [keep.split("/")[1]]
        assert ws.info("r").path == keep and "pending" not in json.loads((ws.root / ".qw-index.json").read_text())
        old = keep


# ------------------------------------------------------------------------------ run records
@pytest.fixture(scope="module")
def good_record(corpus_q, tmp_path_factory) -> bytes:
    from engine.session import Session
    model, qm = corpus_q
    s = Session(model, qm, "int", np.random.default_rng(5).random(model.input_shape, dtype=np.float32))
    s.run()
    return s.save_record(tmp_path_factory.mktemp("rec") / "good.npz").read_bytes()


def _record_edit(good: bytes, *, drop=(), meta=None, arrays=None) -> bytes:
    z = dict(np.load(io.BytesIO(good), allow_pickle=False))
    for k in drop:
        z.pop(k)
    if meta is not None:
        m = json.loads(bytes(z["meta"]).decode())
        m.update(meta)
        z["meta"] = np.frombuffer(json.dumps(m).encode(), np.uint8)
    z.update(arrays or {})
    out = io.BytesIO()
    np.savez(out, **z)
    return out.getvalue()


def _nan_input(good: bytes) -> bytes:
    x = np.load(io.BytesIO(good))["input"].copy()
    x[0, 0, 0] = np.nan
    return _record_edit(good, arrays={"input": x})


# (id, mutation of a valid record's bytes, fragment); each: RecordError (a WeightsError) naming the file
RECORD_CASES = [
    ("r_empty", lambda b: b"", "cannot read run record"),
    ("r_truncated", lambda b: b[:len(b) // 3], "cannot read run record"),
    ("r_truncated_tail", lambda b: b[:-10], "cannot read run record"),
    ("r_not_a_zip", lambda b: b"hello world" * 10, "cannot read run record"),
    ("r_format_not_utf8", lambda b: _record_edit(b, arrays={"format": np.frombuffer(b"\xff\xfe", np.uint8)}),
     "not a run record"),
    ("r_meta_not_json", lambda b: _record_edit(b, arrays={"meta": np.frombuffer(b"{nope", np.uint8)}), "not JSON"),
    ("r_meta_not_utf8", lambda b: _record_edit(b, arrays={"meta": np.frombuffer(b"\xff{}", np.uint8)}), "not UTF-8"),
    ("r_meta_nested_100000_deep", lambda b: _record_edit(b, arrays={"meta": np.frombuffer(b"[" * 100_000, np.uint8)}),
     "not JSON"),
    ("r_meta_is_a_list", lambda b: _record_edit(b, arrays={"meta": np.frombuffer(b"[1]", np.uint8)}),
     "meta must be a JSON object"),
    ("r_meta_lacks_mode", lambda b: _drop_meta_key(b, "mode"), "meta lacks 'mode'"),
    ("r_mode_bogus", lambda b: _record_edit(b, meta={"mode": "bogus"}), "'mode' = 'bogus'"),
    ("r_position_string", lambda b: _record_edit(b, meta={"position": "3"}), "'position' = '3'"),
    ("r_position_past_end", lambda b: _record_edit(b, meta={"position": 99}), "a layer index -1..3"),
    ("r_float_layers_999", lambda b: _record_edit(b, meta={"float_layers": [999]}), "'float_layers'"),
    ("r_image_w_negative", lambda b: _record_edit(b, meta={"image_w": -5}), "'image_w' = '-5'"),
    ("r_image_h_float", lambda b: _record_edit(b, meta={"image_h": 2.5}), "'image_h'"),
    ("r_thresh_nan_string", lambda b: _record_edit(b, meta={"thresh": "nan"}), "'thresh'"),
    ("r_edits_not_list", lambda b: _record_edit(b, meta={"edits": {"a": 1}}), "'edits'"),
    ("r_nan_input", _nan_input, "input holds 1 NaN/Inf values"),
    ("r_input_missing", lambda b: _record_edit(b, drop=["input"]), "lacks its input tensor"),
    ("r_input_wrong_shape", lambda b: _record_edit(b, arrays={"input": np.zeros((3, 4, 4), np.float32)}),
     "this model expects float32 (3, 8, 8)"),
    ("r_input_terabyte_shape", lambda b: _replace_member(b, "input.npy", _npy_header((3, 1 << 19, 1 << 19))),
     "declares shape"),
    ("r_model_array_missing", lambda b: _record_edit(b, drop=["model/layer0/weights"]), "missing array layer0/weights"),
    ("r_qmodel_scale_1e30", lambda b: _record_qmeta(b, scales={"0": 1e30}), "plausible scale"),
    ("r_int_mode_without_qmodel", lambda b: _record_edit(b, drop=[k for k in np.load(io.BytesIO(b)).files
                                                                  if k.startswith("qmodel/")]),
     "does not describe a valid session"),
    ("r_3gb_extra_member", lambda b: _with_member(b, "junk.npy", _npy_header((3 << 28,)) + b"\0" * 64,
                                                  declared_size=len(_npy_header((3 << 28,))) + (3 << 30)),
     "no run record uses them"),
    ("r_image_png_garbage", lambda b: _record_edit(b, arrays={"image_png": np.frombuffer(b"not a png", np.uint8)}),
     "does not describe a valid session"),
]


def _drop_meta_key(good: bytes, key: str) -> bytes:
    m = json.loads(bytes(np.load(io.BytesIO(good))["meta"]).decode())
    m.pop(key)
    return _record_edit(good, arrays={"meta": np.frombuffer(json.dumps(m).encode(), np.uint8)})


def _record_qmeta(good: bytes, **changes) -> bytes:
    m = json.loads(bytes(np.load(io.BytesIO(good))["qmodel/meta"]).decode())
    for k, v in changes.items():
        m[k] = {**m[k], **v}
    return _record_edit(good, arrays={"qmodel/meta": np.frombuffer(json.dumps(m).encode(), np.uint8)})


@pytest.mark.parametrize("case", RECORD_CASES, ids=[c[0] for c in RECORD_CASES])
def test_r_open_record_refuses_bad_records(case, good_record, tmp_path):
    from engine.errors import RecordError
    from engine.session import Session
    _, mutate, fragment = case
    bad = tmp_path / "bad.npz"
    bad.write_bytes(mutate(good_record))
    tracemalloc.start()
    try:
        err = expect(RecordError, fragment, Session.open_record, bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(bad) in str(err) and peak < 64 << 20


def test_r_good_record_still_opens(good_record, tmp_path):
    from engine.session import Session
    p = tmp_path / "r.npz"
    p.write_bytes(good_record)
    s = Session.open_record(p)
    assert s.done and s.mode == "int" and s.position == 3


# ------------------------------------------------------------------------------ Session API misuse
# (id, call on an INT Session of the corpus model at layer 1, error class name, fragment)
API_CASES = [
    ("a_zero_filter_float_index", lambda s, d: s.zero_filter(0, 2.7), "EditError", "filter 2.7 must be an integer"),
    ("a_scale_filter_str_index", lambda s, d: s.scale_filter(0, "a", 2.0), "EditError", "filter 'a' must be an integer"),
    ("a_prune_str_fraction", lambda s, d: s.prune(0, "x"), "EditError", "prune fraction must be a number"),
    ("a_edit_weights_str_values", lambda s, d: s.edit_weights(0, 0, "abc"), "EditError", "must be integers"),
    ("a_edit_weights_str_layer", lambda s, d: s.edit_weights("0", 0, 1.0), "ArgumentError", "layer '0': expected an integer"),
    ("a_set_quantized_int", lambda s, d: s.set_quantized(42), "ArgumentError", "quantized=42"),
    ("a_set_mode_bogus", lambda s, d: s.set_mode("bogus"), "ArgumentError", "mode='bogus': expected one of float, hybrid, int"),
    ("a_set_mode_float_layers_99", lambda s, d: s.set_mode("hybrid", float_layers=[99]), "ArgumentError", "float_layers=[99]"),
    ("a_save_record_missing_folder", lambda s, d: s.save_record(d / "missing" / "r.npz"), "FileError", "does not exist"),
    ("a_save_record_onto_folder", lambda s, d: s.save_record(d), "FileError", "is a folder"),
    ("a_run_to_str", lambda s, d: s.run_to("3"), "ArgumentError", "layer '3': expected an integer layer index 0..3"),
    ("a_run_to_float", lambda s, d: s.run_to(2.5), "ArgumentError", "layer 2.5: expected an integer"),
    ("a_run_to_bool", lambda s, d: s.run_to(True), "ArgumentError", "layer True: expected an integer"),
    ("a_set_scale_1e-300", lambda s, d: s.set_scale("0", 1e-300), "EditError", "scale 1e-300 is not plausible"),
    ("a_set_threshold_1e300", lambda s, d: s.set_threshold("0", 1e300), "EditError", "is not plausible"),
    ("a_histogram_bins_negative", lambda s, d: s.histogram(0, bins=-1), "ArgumentError", "bins=-1"),
    ("a_continue_from_bogus", lambda s, d: s.continue_from("x"), "ArgumentError", "source='x'"),
    ("a_weights_kind_bogus", lambda s, d: s.weights(0, "bogus"), "ArgumentError", "kind='bogus'"),
    ("a_compare_unknown_method", lambda s, d: s.compare_methods([s.x], ["bogus"]), "UnknownNameError",
     "unknown calibration method 'bogus'; known:"),
    ("a_set_model_int", lambda s, d: s.set_model(42), "ArgumentError", "model=42"),
    ("a_session_thresh_nan", lambda s, d: type(s)(s.model, s.qmodel, "int", s.x, thresh=float("nan")),
     "ArgumentError", "thresh=nan"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_a_session_misuse_is_refused_and_changes_nothing(case, corpus_q, tmp_path):
    from engine.session import Session
    _, call, cls_name, fragment = case
    model, qm = corpus_q
    s = Session(model, qm, "int", np.random.default_rng(9).random(model.input_shape, dtype=np.float32))
    s.run_to(1)
    before = s.qmodel.to_arrays()
    err = expect(EngineError, fragment, call, s, tmp_path)
    assert type(err).__name__ == cls_name
    after = s.qmodel.to_arrays()
    assert all(np.array_equal(before[k], after[k]) for k in before) and len(s.journal) == 0
    assert s.position == 1 and litter(tmp_path) == []


def test_a_edit_error_is_an_engine_error():
    from engine.session.edits import EditError
    assert issubclass(EditError, EngineError) and issubclass(EditError, ValueError)


# ------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def cli_files(corpus_q, tmp_path_factory):
    """A corpus model as cfg + .weights and as a model file (no detection head: tiny.*, q.npz), the 16x16
    one-class [yolo] detector as a model file with its quantized model (det.npz, dq.npz: what detect needs),
    and a tiny PNG."""
    from engine.calib.collect import collect
    from engine.quant.qmodel import quantize_model
    model, qm = corpus_q
    d = tmp_path_factory.mktemp("cli")
    model.save_weights(d / "tiny.weights")
    (d / "tiny.cfg").write_text(WEIGHTS_CFG.read_text())
    model.save(d / "tiny.npz")
    qm.save(d / "q.npz")
    det = engine.load(CORPUS / "detector.cfg", random_weights=0)
    xs = [np.random.default_rng(i).random(det.input_shape, dtype=np.float32) for i in range(2)]
    det.save(d / "det.npz")
    quantize_model(det, collect(det, xs, progress=False), "minmax", per_channel=True).save(d / "dq.npz")
    (d / "img.png").write_bytes(_png())
    return d


HEADLESS = ("error: {d}/tiny.npz: {what} needs a detection head ([detection], [region] or [yolo]) and this model has "
            "none: its 4 layers end with layer 3 [connected] (a classifier or a backbone has no detections to find)\n")
# (id, argv (with {d} = the files folder, {t} = a fresh folder), fragment in stderr)
CLI_CASES = [
    ("c_report_ram_1e308", ["report", "{d}/tiny.npz", "-q", "{d}/q.npz", "--ram", "1e308", "--flash", "inf",
                            "--budget-ms", "nan"], "argument --ram: '1e308': expected a finite size in MiB"),
    ("c_report_flash_inf", ["report", "{d}/tiny.npz", "-q", "{d}/q.npz", "--flash", "inf"], "argument --flash: 'inf'"),
    ("c_report_budget_nan", ["report", "{d}/tiny.npz", "-q", "{d}/q.npz", "--budget-ms", "nan"], "argument --budget-ms: 'nan'"),
    ("c_report_repeats_zero", ["report", "{d}/tiny.npz", "-q", "{d}/q.npz", "--repeats", "0"], "argument --repeats"),
    ("c_quantize_bogus_setting", ["quantize", "{d}/tiny.npz", "--calib", "{d}/img.png", "--settings", '{"bogus": 1}',
                                  "-o", "{t}/q.npz"], "'bogus' is not a setting of method"),
    ("c_quantize_settings_not_json", ["quantize", "{d}/tiny.npz", "--calib", "{d}/img.png", "--settings", "{x",
                                      "-o", "{t}/q.npz"], "--settings '{x': not JSON"),
    ("c_detect_thresh_nan", ["detect", "{d}/det.npz", "{d}/img.png", "--thresh", "nan"],
     "argument --thresh: 'nan': expected a finite threshold in [0, 1)"),
    ("c_detect_float_layers_abc", ["detect", "{d}/det.npz", "{d}/img.png", "--mode", "int", "--quantized", "{d}/dq.npz",
                                   "--float-layers", "a,b"], "--float-layers 'a,b': expected comma-separated"),
    ("c_detect_float_layers_99", ["detect", "{d}/det.npz", "{d}/img.png", "--mode", "int", "--quantized", "{d}/dq.npz",
                                  "--float-layers", "99"], "[99] are not layers of this model (0..2)"),
    # a model without a detection head has no detections to find: "0 detections", or every image "perfect"
    ("c_detect_headless", ["detect", "{d}/tiny.npz", "{d}/img.png"], HEADLESS.format(d="{d}", what="detect")),
    ("c_montecarlo_headless", ["montecarlo", "{d}/tiny.npz", "-q", "{d}/q.npz", "--images", "{d}/img.png",
                               "--variants", "2"], HEADLESS.format(d="{d}", what="montecarlo")),
    ("c_worst_images_headless", ["worst-images", "{d}/tiny.npz", "-q", "{d}/q.npz", "--images", "{d}/img.png"],
     HEADLESS.format(d="{d}", what="worst-images")),
    ("c_explain_headless", ["explain", "{d}/tiny.npz", "-q", "{d}/q.npz", "--image", "{d}/img.png"],
     HEADLESS.format(d="{d}", what="explain")),
    ("c_detect_cfg_without_weights", ["detect", "{d}/tiny.cfg", "{d}/img.png"], "pass its weights with --weights FILE"),
    ("c_convert_onto_fifo", ["convert", "{d}/tiny.cfg", "{d}/tiny.weights", "-o", "{t}/fifo"], "is a FIFO"),
    ("c_convert_onto_dev_null", ["convert", "{d}/tiny.cfg", "{d}/tiny.weights", "-o", "/dev/null"], "is a device node"),
    ("c_convert_into_missing_folder", ["convert", "{d}/tiny.cfg", "{d}/tiny.weights", "-o", "{t}/no/m.npz"],
     "does not exist; create it first"),
    ("c_dump_onto_folder", ["dump", "{d}/tiny.npz", "--image", "{d}/img.png", "-o", "{t}"], "is a folder"),
    ("c_export_onto_fifo", ["export", "{d}/tiny.npz", "--format", "weights", "-o", "{t}/fifo"], "is a FIFO"),
    ("c_detect_save_into_missing_folder", ["detect", "{d}/tiny.npz", "{d}/img.png", "--save", "{t}/no/out"],
     "does not exist; create it first"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_c_cli_refusals_are_one_clear_line(case, cli_files, tmp_path, capsys):
    _, argv, fragment = case
    fragment = fragment.replace("{d}", str(cli_files))
    os.mkfifo(tmp_path / "fifo")
    code, out, err = cli(capsys, *[a.replace("{d}", str(cli_files)).replace("{t}", str(tmp_path)) for a in argv])
    assert code == 2 and fragment in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]     # nothing written, no temp file


def test_c_detect_missing_image_does_not_claim_0_detections(cli_files, capsys):
    code, out, err = cli(capsys, "detect", cli_files / "det.npz", cli_files / "missing.png", cli_files / "img.png")
    assert code == 1 and "missing.png: cannot open image" in err
    assert "missing.png" not in out and "img.png:" in out


def test_c_dump_prints_what_it_wrote(cli_files, tmp_path, capsys):
    code, _, err = cli(capsys, "dump", cli_files / "tiny.npz", "--image", cli_files / "img.png", "-o", tmp_path / "o.npz")
    with np.load(tmp_path / "o.npz") as z:
        assert code == 0 and z.files == ["layer0", "layer1", "layer2", "layer3"]
    assert f"wrote {tmp_path / 'o.npz'} ({(tmp_path / 'o.npz').stat().st_size:,} bytes)" in err
    assert "4 layers" in err


def test_c_cli_process_prints_no_traceback(cli_files, tmp_path):
    import subprocess
    import sys
    os.mkfifo(tmp_path / "fifo")
    res = subprocess.run([sys.executable, "-m", "engine", "convert", str(cli_files / "tiny.cfg"),
                          str(cli_files / "tiny.weights"), "-o", str(tmp_path / "fifo")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: -o/--output") and "Traceback" not in res.stderr


def test_c_detect_save_draws_labelled_boxes_in_class_colours(tmp_path, capsys):
    """yolov3-tiny on the dog photo: each box --json reports is drawn in its class colour on a copy
    of the image, saved under the image's name; the pixels away from boxes are unchanged."""
    from PIL import Image
    from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS
    from engine.imaging.draw import PALETTE
    src = tmp_path / "dog.png"
    Image.open(IMAGES / "dog.jpg").convert("RGB").save(src)
    code, out, err = cli(capsys, "detect", TINY_CFG, "--weights", TINY_WEIGHTS, src, "--json", "--save", tmp_path / "out")
    dets = json.loads(out)["images"]["dog.png"]["detections"]
    assert code == 0 and {d["name"] for d in dets} >= {"dog", "bicycle"}
    assert f"saved {tmp_path / 'out' / 'dog.png'}" in err
    drawn = np.asarray(Image.open(tmp_path / "out" / "dog.png").convert("RGB")).astype(int)
    orig = np.asarray(Image.open(src)).astype(int)
    assert drawn.shape == orig.shape
    def edge(d):
        return int(min(d["y2"], orig.shape[0] - 1)), int(max(d["x1"], 0)), int(min(d["x2"], orig.shape[1] - 1))
    for d in dets:   # the bottom edge of each box (labels sit at the top) holds its class colour
        y2, x1, x2 = edge(d)
        row = drawn[y2, x1 + 1:x2]
        colours = [PALETTE[o["class_id"] % len(PALETTE)] for o in dets if edge(o) == edge(d)]  # same box, 2 classes
        assert max((np.abs(row - c).max(axis=1) == 0).mean() for c in colours) > 0.3, d
    assert (drawn[5:20, 5:20] == orig[5:20, 5:20]).all()   # top-left corner: no box there


def test_corpus_readme_lists_every_reliability_case():
    readme = (CORPUS / "README.md").read_text()
    section = readme[readme.index("## Reliability round 2"):]
    ids = [c[0] for c in UNTRUSTED_CASES + RECORD_CASES + CLI_CASES] + [c[0] for c in API_CASES] + \
        ["f_fifo", "f_dev_null", "f_folder", "f_missing_folder"] + \
        ["u_load_fifo", "u_qmodel_fifo", "r_open_record_fifo", "u_load_dev_zero"] + \
        [name for name in globals() if name.startswith("test_") and name[5:7] in ("f_", "p_", "u_", "c_", "a_")
         and name not in ("test_u_untrusted_model_files", "test_c_cli_refusals_are_one_clear_line",
                          "test_a_session_misuse_is_refused_and_changes_nothing", "test_f_refused_targets")
         or name == "test_u_special_files_are_refused_without_blocking"]
    missing = [i for i in ids if f"`{i}`" not in section]
    assert not missing, f"tests/corpus/README.md does not list {missing}"
    assert len(set(ids)) == len(ids) >= 80


@pytest.mark.parametrize("case", ["u_load_fifo", "u_qmodel_fifo", "r_open_record_fifo", "u_load_dev_zero"])
def test_u_special_files_are_refused_without_blocking(case, tmp_path):
    """Opening a FIFO without a writer would block forever; /dev/zero never ends."""
    from engine.errors import CfgError
    from engine.quant.qmodel import QuantizedModel
    from engine.session import Session
    path = Path("/dev/zero") if case == "u_load_dev_zero" else tmp_path / "fifo"
    if case != "u_load_dev_zero":
        os.mkfifo(path)
    load = {"u_load_fifo": engine.load, "u_qmodel_fifo": QuantizedModel.load, "r_open_record_fifo": Session.open_record,
            "u_load_dev_zero": engine.load}[case]
    err = expect(CfgError, "not a regular file", load, path)
    assert str(path) in str(err)


def test_p_workspace_import_and_export_refuse_special_files(tmp_path):
    ws = _ws_with_entry(tmp_path)
    os.mkfifo(tmp_path / "pipe.jpg")
    expect(WorkspaceError, "not a regular file", ws.import_path, tmp_path / "pipe.jpg")
    (tmp_path / "afile").write_text("x")
    expect(WorkspaceError, "cannot use", ws.export, "r", tmp_path / "afile")
    expect(WorkspaceError, "cannot use", ws.export, "r", tmp_path / "pipe.jpg")
    assert [e.name for e in ws.list()] == ["r"]
