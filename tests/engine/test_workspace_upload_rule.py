"""A model pair is refused at upload exactly when loading would refuse it, with the loader's reason.

The upload checks used to repeat the loader's rules by hand (a UTF-16 decode, a `[net]` line search, a
`.weights` header parsed with its own bounds) and disagreed with it both ways: files that load were refused
at upload, and a damaged file that loading refuses was stored.
"""
from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

import engine
from engine.darknet.weights import write_weights
from engine.errors import EngineError
from engine.workspace import Workspace, WorkspaceError

CFG = b"[net]\nwidth=416\nheight=416\nchannels=3\n\n[convolutional]\nfilters=16\nsize=3\n"
FLOATS = struct.pack("<448f", *range(448))       # CFG's one conv: 16x3x3x3 weights + 16 biases
WEIGHTS = struct.pack("<3iq", 0, 2, 5, 0) + FLOATS


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")


def load_verdict(folder: Path, cfg: bytes, weights: bytes) -> str | None:
    """None if `engine.load` reads the pair from disk, else its message."""
    folder.mkdir(exist_ok=True)
    (folder / "m.cfg").write_bytes(cfg)
    (folder / "m.weights").write_bytes(weights)
    try:
        engine.load(folder / "m.cfg", weights=folder / "m.weights")
    except EngineError as err:
        return str(err)
    return None


POOL = b"[net]\nwidth=8\nheight=6\n[maxpool]\nsize=2\nstride=2\n"      # no parameters at all


@pytest.mark.parametrize("cfg, weights, shape", [
    (b"\xef\xbb\xbf" + CFG, WEIGHTS, (16, 414, 414)),                   # Notepad's UTF-8 with a byte-order mark
    (CFG.replace(b"[net]", b"[ net ]"), WEIGHTS, (16, 414, 414)),       # Darknet drops every space of a line
    (CFG, struct.pack("<3iq", 5000, 0, 0, 0) + FLOATS, (16, 414, 414)),  # major > 1000: connected stored [in][out]
    (POOL, struct.pack("<4i", 0, 1, 0, 0), (3, 3, 4)),                  # a 16-byte header and no floats
], ids=["utf8-bom", "spaced-header", "transposed-major", "16-byte-header"])
def test_a_pair_that_loads_is_accepted_at_upload(ws, tmp_path, cfg, weights, shape):
    """(regression) each of these loaded, and the upload refused it ('no [net] section', 'header version
    5000.0.0 is not plausible', '16 bytes; a Darknet .weights file has a 20-byte header')."""
    assert load_verdict(tmp_path / "disk", cfg, weights) is None
    entry = ws.add_upload({"m.cfg": cfg, "m.weights": weights})[0]
    assert (entry.kind, entry.files) == ("model", ("m.cfg", "m.weights"))
    model = engine.load(ws.path_of("m", "m.cfg"), weights=ws.path_of("m", "m.weights"))
    assert model.layers[-1].out_shape == shape


@pytest.mark.parametrize("value", [math.nan, math.inf, 3e38])
def test_a_weights_file_with_values_loading_refuses_is_refused_at_upload(ws, tmp_path, value):
    """(regression) a .weights with a NaN, an Inf or a flipped exponent bit (3e38) had the right size, so it was
    stored; loading it said 'weights must be finite', after the user had moved on."""
    weights = WEIGHTS[:20 + 4 * 9] + struct.pack("<f", value) + WEIGHTS[20 + 4 * 10:]     # biases[9]
    why = load_verdict(tmp_path / "disk", CFG, weights)
    assert why is not None and why.startswith("m.weights: layer 0 [convolutional] biases holds 1 ")
    with pytest.raises(WorkspaceError) as err:
        ws.add_upload({"m.cfg": CFG, "m.weights": weights})
    assert str(err.value) == f"entry 'm': {why}"
    assert "(first at flat index 9: " in why and ws.list() == []


@pytest.mark.parametrize("cfg, weights, fragment", [
    (CFG, b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n", "a Git LFS pointer"),
    (CFG, CFG + b"\n\n\n\n", "looks like a text cfg, not a binary .weights file"),
    (CFG, b"PK\x03\x04" + bytes(40), "an .npz archive (an engine model file from `convert`?)"),
    (CFG, struct.pack("<3i", 500000, 0, 0) + bytes(20), "is not a Darknet weights header"),
    (CFG, b"\0" * 12, "12 bytes is too short for a Darknet weights header"),
    (CFG, WEIGHTS + b"\0\0", "1794 bytes after the 20-byte header is not a whole number of float32 values"),
    (b"<!DOCTYPE html>\n<html>[net]</html>\n", WEIGHTS, "an HTML/XML page"),
    (b"\xff\xfe[net]", WEIGHTS, "not UTF-8, nor UTF-16 after its byte-order mark (byte 6 is not UTF-16)"),
    (b"[net]\nwidth=8\n\0\0\n[maxpool]\n", WEIGHTS, "contains NUL bytes"),
    (b"[convolutional]\nfilters=1\n" + CFG, WEIGHTS, ":1 [convolutional] the first section must be [net]"),
], ids=["lfs-weights", "cfg-as-weights", "npz-as-weights", "huge-major", "short", "odd-bytes", "html-cfg",
        "bad-utf16", "nul-cfg", "net-not-first"])
def test_an_upload_refused_gives_the_loaders_reason_after_its_label(ws, tmp_path, cfg, weights, fragment):
    """(regression) the upload said 'header version 1936876918.544108393.1886680168 is not plausible' for a Git
    LFS pointer, and so for a cfg or an engine model file given as the weights; the loader names each."""
    why = load_verdict(tmp_path / "disk", cfg, weights)
    assert why is not None and fragment in why
    bad = "m.weights" if cfg is CFG else "m.cfg"
    reason = why.split(bad, 1)[1]          # what follows the file name (a folder, or nothing, before it)
    with pytest.raises(WorkspaceError) as err:
        ws.save_bytes("m", "model", {"m.cfg": cfg, "m.weights": weights})
    # the one difference: the .weights alone does not know how many bytes its cfg expects
    assert str(err.value) == f"m/{bad}{reason}".removesuffix(" (expected 1792 bytes)")
    assert not ws.exists("m")


def test_the_upload_checks_read_only_the_header_bytes_the_loader_reads(ws, monkeypatch):
    """The header rule gets the first 20 bytes, as `read_weights` gives it, not the whole file: its search for
    a download mistake lowercased a copy of all of it (up to the 512 MB limit) at every upload."""
    from engine.darknet import weights as darknet_weights
    seen = []
    real = darknet_weights.read_header
    monkeypatch.setattr(darknet_weights, "read_header", lambda data, label: seen.append(len(data)) or real(data, label))
    ws.save_bytes("m", "model", {"m.cfg": CFG, "m.weights": WEIGHTS})
    assert seen and set(seen) == {20}


DETECTOR = Path(__file__).resolve().parents[1] / "corpus" / "detector.cfg"      # one class


@pytest.mark.parametrize("data", ["person\r\n".encode("utf-16"), b"\xef\xbb\xbfperson\n"],
                         ids=["utf16-bom", "utf8-bom"])
def test_a_names_file_the_loader_reads_is_accepted_in_a_model_entry(ws, tmp_path, data):
    """(regression) a PowerShell `>` names file (UTF-16 with its byte-order mark) loads, but a model folder holding
    one was refused at import: 'not UTF-8 text at byte 0; expected UTF-8 text'."""
    folder = tmp_path / "detector"
    folder.mkdir()
    (folder / "detector.cfg").write_bytes(DETECTOR.read_bytes())
    model = engine.load(DETECTOR, random_weights=0)
    write_weights(folder / "detector.weights", model.layers, model.params)
    (folder / "detector.names").write_bytes(data)
    entry = ws.import_path(folder, name="det")
    assert entry.files == ("detector.cfg", "detector.names", "detector.weights")
    loaded = engine.load(ws.path_of("det", "detector.cfg"), weights=ws.path_of("det", "detector.weights"),
                         names=ws.path_of("det", "detector.names"))
    assert loaded.class_names == ["person"]


def test_a_utf16_names_file_without_its_byte_order_mark_is_refused_by_loading_and_upload(ws, tmp_path):
    """(regression) without its mark, UTF-16 decoded as UTF-8 into names full of NULs: loading gave the classes
    'p\\x00e\\x00r\\x00s\\x00o\\x00n\\x00' and '\\x00' (a warning said only that there were 2 names for 1 class)."""
    data = "person\n".encode("utf-16-le")
    names = tmp_path / "nobom.names"
    names.write_bytes(data)
    with pytest.raises(EngineError) as err:
        engine.load(DETECTOR, random_weights=0, names=names)
    assert str(err.value) == (f"{names}: cannot read class names: it contains NUL bytes; expected a text file, one "
                              "name per line")
    model = engine.load(DETECTOR, random_weights=0)
    write_weights(tmp_path / "d.weights", model.layers, model.params)
    files = {"d.cfg": DETECTOR.read_bytes(), "d.weights": (tmp_path / "d.weights").read_bytes(), "d.names": data}
    with pytest.raises(WorkspaceError) as up:
        ws.save_bytes("d", "model", files)
    assert str(up.value) == ("d/d.names: cannot read class names: it contains NUL bytes; expected a text file, one "
                             "name per line")
