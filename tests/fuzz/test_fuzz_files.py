"""Hypothesis fuzzing of the untrusted-file readers (issue 16): engine model files, quantized model
files and run records.

Valid files of the corpus model are truncated, bit-flipped, given forged zip sizes or .npy headers;
loading must either succeed (then the result is a usable model / session) or raise the reader's
WeightsError subclass naming the file: never a raw zip, JSON, decoding, NumPy or memory error.
Derandomized; about 450 examples.
"""
from __future__ import annotations

import atexit
import io
import shutil
import struct
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from engine.errors import CfgError

ROOT = Path(__file__).resolve().parents[2]
CFG = ROOT / "tests" / "corpus" / "weights" / "tiny.cfg"
FUZZ = settings(deadline=None, derandomize=True, database=None, max_examples=150,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_TMP = Path(tempfile.mkdtemp(prefix="qw-fuzz-files-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


@lru_cache(maxsize=None)
def valid(kind: str) -> bytes:
    from engine.calib.collect import collect
    from engine.quant.qmodel import quantize_model
    from engine.session import Session
    model = engine.load(CFG, random_weights=0)
    x = np.random.default_rng(0).random(model.input_shape, dtype=np.float32)
    qm = quantize_model(model, collect(model, [x], progress=False), "minmax")
    path = _TMP / f"{kind}.npz"
    if kind == "model":
        model.save(path)
    elif kind == "qmodel":
        qm.save(path)
    else:
        s = Session(model, qm, "int", x)
        s.run()
        s.save_record(path)
    return path.read_bytes()


def load(kind: str, path: Path):
    from engine.quant.qmodel import QuantizedModel
    from engine.session import Session
    if kind == "model":
        m = engine.load(path)
        m.forward(np.zeros(m.input_shape, np.float32))
    elif kind == "qmodel":
        QuantizedModel.load(path)
    else:
        Session.open_record(path)


mutation = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=8)),
    st.tuples(st.just("size"), st.floats(0, 1), st.sampled_from([0, 1, 2**31 - 1, 2**32 - 1, 3 << 30])),
    st.tuples(st.just("header"), st.floats(0, 1), st.sampled_from([(1 << 40,), (3, 1 << 20, 1 << 20), (0,), (-1,)]),
              st.sampled_from(["<f4", "<i8", "|i1", "|O", ">f4", "<U3"])),
)


def mutate(data: bytes, m) -> bytes:
    kind = m[0]
    if kind == "truncate":
        return data[:int(m[1] * len(data))]
    b = bytearray(data)
    if kind == "flip":
        for pos, bit in m[1]:
            b[min(int(pos * len(b)), len(b) - 1)] ^= 1 << bit
        return bytes(b)
    infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    info = infos[min(int(m[1] * len(infos)), len(infos) - 1)]
    if kind == "size":   # forge the uncompressed size in the local header and the central directory
        struct.pack_into("<I", b, info.header_offset + 22, m[2])
        start = zipfile.ZipFile(io.BytesIO(data)).start_dir
        pos = start
        while b[pos:pos + 4] == b"PK\x01\x02":
            n, extra, comment = struct.unpack_from("<3H", b, pos + 28)
            if b[pos + 46:pos + 46 + n] == info.filename.encode():
                struct.pack_into("<I", b, pos + 24, m[2])
            pos += 46 + n + extra + comment
        return bytes(b)
    # rewrite one member's .npy header (shape / dtype), keeping its data
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for i in src.infolist():
            raw = src.read(i.filename)
            if i.filename == info.filename:
                f = io.BytesIO(raw)
                np.lib.format.read_magic(f)
                np.lib.format.read_array_header_1_0(f)
                hdr = io.BytesIO()
                shape = tuple(d if d >= 0 else 5 for d in m[2]) if m[2] != (-1,) else (-1,)
                header = {"descr": m[3], "fortran_order": False, "shape": shape}
                try:
                    np.lib.format.write_array_header_1_0(hdr, header)
                except ValueError:
                    hdr = io.BytesIO(b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + repr(header).encode().ljust(117) + b"\n")
                raw = hdr.getvalue() + raw[f.tell():]
            zf.writestr(i.filename, raw)
    return out.getvalue()


@pytest.mark.parametrize("kind", ["model", "qmodel", "record"])
@FUZZ
@given(m=mutation)
def test_mutated_files_load_or_raise_the_readers_error(kind, m):
    path = _TMP / f"bad-{kind}.npz"
    path.write_bytes(mutate(valid(kind), m))
    try:
        load(kind, path)
    except CfgError as err:   # WeightsError, RecordError; a model file whose zip magic is gone reads as a cfg
        assert str(path) in str(err) or path.name in str(err), str(err)
