"""An archive that is nothing but a huge central directory is refused from a count of its entries, before
`zipfile` makes an object of each: opening a 51 MB .npz of 1,000,000 one-name entries took 600 MB and 12 s before
NpzReader's member limit could refuse it, and a 1 GB image-set upload (its zip limit) could take a kernel's memory
before the workspace's 10,000-member limit was checked."""
from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from engine.errors import WeightsError
from engine.npzfile import MAX_MEMBERS, NpzReader
from engine.quant.qmodel import QuantizedModel
from engine.workspace import Limits, Workspace, WorkspaceError
from engine.zipdir import count_entries


def directory_only(entries: int, *, declared: int | None = None, zip64: bool = True) -> bytes:
    """A zip that is one small member's local header and data, then a central directory of `entries` entries
    named 'a.npy', its end record declaring `declared` entries (default: the truth); zip64 end records when
    `zip64`."""
    one = io.BytesIO()
    with zipfile.ZipFile(one, "w") as zf:
        zf.writestr("a.npy", b"")
    with zipfile.ZipFile(one) as zf:
        prefix = one.getvalue()[:zf.start_dir]
    name = b"a.npy"
    entry = struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0, len(name),
                        0, 0, 0, 0, 0, 0) + name
    directory = entry * entries
    n, size, at = entries if declared is None else declared, len(directory), len(prefix)
    if not zip64:
        return prefix + directory + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, size, at, 0)
    return (prefix + directory + struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, size, at)
            + struct.pack("<4sLQL", b"PK\x06\x07", 0, at + size, 1)
            + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))


def peak_bytes(call) -> tuple[BaseException, int]:
    tracemalloc.start()
    try:
        call()
    except (WeightsError, WorkspaceError) as err:
        return err, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    raise AssertionError("not refused")


@pytest.mark.parametrize("declared", [None, 1], ids=["true-count", "declares-one"])
def test_an_npz_that_is_a_huge_directory_is_refused_before_zipfile_parses_it(tmp_path, declared):
    """200,000 entries (10 MB): zipfile alone traces ~130 MB for them; the count stops at MAX_MEMBERS + 1.
    An end record declaring one entry changes nothing: zipfile walks the directory by its byte size."""
    path = tmp_path / "q.npz"
    path.write_bytes(directory_only(2 * MAX_MEMBERS, declared=declared))
    err, peak = peak_bytes(lambda: QuantizedModel.load(path))
    assert "q.npz: cannot read quantized model: " in str(err) and f"the limit {MAX_MEMBERS}" in str(err).replace(",", "")
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MB traced before the refusal"


def test_an_image_set_zip_that_is_a_huge_directory_is_refused_before_zipfile_parses_it(tmp_path):
    data = directory_only(50_000, zip64=False)
    ws = Workspace(tmp_path / "ws", limits=Limits())
    err, peak = peak_bytes(lambda: ws.add_upload({"holiday.zip": data}))
    assert str(err).startswith("holiday.zip: ") and "members than the limit of 10000" in str(err)
    assert peak < 4 << 20, f"{peak / 2**20:.0f} MB traced before the refusal"
    assert ws.list() == []


def test_the_count_is_zipfiles_own_on_real_archives():
    """Stored, deflated, with a comment, zip64 (forced), an empty archive: the count equals len(infolist())."""
    for kw in ({}, {"compression": zipfile.ZIP_DEFLATED}, {"comment": b"x" * 1000}, {"zip64": True}, {"empty": True}):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", kw.get("compression", zipfile.ZIP_STORED)) as zf:
            zf.comment = kw.get("comment", b"")
            for i in range(0 if "empty" in kw else 7):
                with zf.open(f"m{i}.npy", "w", force_zip64=kw.get("zip64", False)) as f:
                    np.save(f, np.arange(i))
        with zipfile.ZipFile(buf) as zf:
            real = len(zf.infolist())
        assert count_entries(buf, 100) == real and buf.tell() == 0, kw
        assert count_entries(buf, 3) == min(real, 4)
        if real:
            with NpzReader(buf.getvalue(), "m.npz") as r:
                assert len(r) == real
    assert count_entries(io.BytesIO(b"not a zip at all"), 10) == 0


@pytest.mark.parametrize("zip64", [False, True], ids=["zip", "zip64"])
def test_signature_bytes_in_the_end_records_disk_fields_do_not_hide_the_directory(tmp_path, zip64):
    """The end record's disk numbers (which zipfile never reads) set to b'PK\\x05\\x06': the count searched for
    the last signature first, found that copy with no room for a record after it, counted 0, and zipfile went
    on to make an object of every entry (the limit never applied)."""
    data = bytearray(directory_only(2 * MAX_MEMBERS, declared=None if zip64 else 1, zip64=zip64))   # 16-bit count
    data[-18:-14] = b"PK\x05\x06"                 # disk, disk of the directory: the record's bytes 4..8
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        assert len(zf.infolist()) == 2 * MAX_MEMBERS          # zipfile reads this archive whole
    assert count_entries(io.BytesIO(bytes(data)), MAX_MEMBERS) == MAX_MEMBERS + 1
    path = tmp_path / "q.npz"
    path.write_bytes(bytes(data))
    err, peak = peak_bytes(lambda: QuantizedModel.load(path))
    assert f"the limit {MAX_MEMBERS}" in str(err).replace(",", "")
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MB traced before the refusal"


def test_an_end_record_with_the_longest_comment_and_a_byte_after_it_is_found():
    """zipfile searches 65,536 bytes before the record's 22 (one more than a comment can hold), so it opens an
    archive of a 65,535-byte comment followed by one stray byte; the count searched one byte less, counted 0 and
    let such an archive past the member limit."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.comment = b"c" * 0xFFFF
        for i in range(50):
            zf.writestr(f"m{i}.npy", b"")
    data = buf.getvalue() + b"x"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert len(zf.infolist()) == 50
    assert count_entries(io.BytesIO(data), 10) == 11
    assert count_entries(io.BytesIO(data), 100) == 50
