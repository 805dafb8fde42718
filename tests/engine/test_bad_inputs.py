"""Bad-input corpus (tests/corpus/README.md): every malformed input gives the engine's own clear error.

Each case goes through a public entry point (`engine.load`, `Model.forward/detect/set_param`,
`engine.darknet.image.open_image`, `python -m engine`, `Workspace`) and must raise the expected error
class with a message naming the file / line / layer and the offending value, never a raw
IndexError, ZeroDivisionError, MemoryError, ... ("handled correctly" cases check the result).
"""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import engine
from engine.session.edits import EditError, check_int8
from engine.errors import ArgumentError, CfgError, EngineError, EngineWarning, ImageError, UnsupportedError, WeightsError
from engine.darknet.image import image_to_array, open_image
from engine.workspace.uploads import WorkspaceError
from engine.workspace import Workspace
from helpers import ROOT, TINY_CFG, TINY_WEIGHTS

CORPUS = ROOT / "tests" / "corpus"
CFGS = sorted((CORPUS / "cfg").glob("*.cfg"))
WEIGHTS_CFG = CORPUS / "weights" / "tiny.cfg"
DETECTOR_CFG = CORPUS / "detector.cfg"
ERRORS = {c.__name__: c for c in (CfgError, WeightsError, ImageError, UnsupportedError, WorkspaceError, EditError,
                                  ValueError, KeyError)}
# never acceptable as the answer to bad input (the engine must translate them)
RAW = (IndexError, ZeroDivisionError, MemoryError, RecursionError, AttributeError, TypeError, struct.error,
       OverflowError)
# files whose expectation cannot be written on their first line
HEADERLESS = {"binary_bytes.cfg": "CfgError: not a text cfg file"}


def expect_error(cls: type[BaseException], fragment: str, fn, *args, **kwargs) -> BaseException:
    """Call fn; it must raise `cls` (exactly that class name) whose message contains `fragment`."""
    try:
        fn(*args, **kwargs)
    except RAW as err:
        pytest.fail(f"raw {type(err).__name__} instead of {cls.__name__}: {err}")
    except Exception as err:  # noqa: BLE001 - the class is checked just below
        assert type(err).__name__ == cls.__name__, f"{type(err).__name__}: {err} (expected {cls.__name__})"
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        assert fragment in message, f"{fragment!r} not in {message!r}"
        return err
    pytest.fail(f"no error; expected {cls.__name__} containing {fragment!r}")


def expectation(path: Path) -> tuple[str, str]:
    """('CfgError', fragment) or ('ok', 'C,H,W') from the file's `# expect:` first line."""
    if path.name in HEADERLESS:
        line = HEADERLESS[path.name]
    else:
        first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8").rstrip("\r")
        assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: ...'"
        line = first[len("# expect: "):]
    kind, fragment = line.split(": ", 1)
    return kind, fragment


# ----------------------------------------------------------------------------------------- cfgs
@pytest.mark.parametrize("path", CFGS, ids=[p.stem for p in CFGS])
def test_cfg_corpus(path):
    kind, fragment = expectation(path)
    if kind == "ok":
        if path.stem == "unknown_keys_ignored":      # loads, and says which key Darknet would not read
            with pytest.warns(EngineWarning, match=r"unknown_keys_ignored\.cfg:8 \[convolutional\] \(layer 0\) foo=bar: not a key"):
                model = engine.load(path, random_weights=0)
        else:
            model = engine.load(path, random_weights=0)
        outs = model.forward(np.random.default_rng(0).random(model.input_shape, dtype=np.float32))
        assert outs[-1].shape == tuple(int(v) for v in fragment.split(","))
        assert all(np.isfinite(y).all() for y in outs)
        return
    err = expect_error(ERRORS[kind], fragment, engine.load, path, random_weights=0)
    assert path.name in str(err), f"the message must name the file: {err}"


@pytest.mark.parametrize("name", ["unknown_section", "route_forward_ref", "net_65536_square", "binary_bytes"])
def test_cli_info_reports_corpus_errors_without_traceback(name):
    path = CORPUS / "cfg" / f"{name}.cfg"
    _, fragment = expectation(path)
    r = subprocess.run([sys.executable, "-m", "engine", "info", str(path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith("error: ") and fragment in r.stderr


def test_readme_lists_every_case():
    readme = (CORPUS / "README.md").read_text()
    ids = [p.stem for p in CFGS] + [c[0] for c in WEIGHTS_CASES] + [c[0] for c in IMAGE_CASES] + \
        [c[0] for c in OK_IMAGES] + [c[0] for c in WORKSPACE_NAMES] + [c[0] for c in EDIT_CASES] + \
        [c[0] for c in FORWARD_CASES] + [c[0] for c in INT8_CASES] + [c[0] for c in MODEL_FILE_CASES] + \
        ["m_pk_magic_only", "m_truncated_zip"] + [c[0] for c in QMODEL_FILE_CASES] + \
        [c[0] for c in SESSION_EDIT_CASES]
    missing = [i for i in ids if f"`{i}`" not in readme]
    assert not missing, f"tests/corpus/README.md does not list {missing}"
    assert len(set(ids)) == len(ids) >= 50


# -------------------------------------------------------------------------------------- weights
N_FLOATS = 233  # tests/corpus/weights/tiny.cfg


def header(major: int = 0, minor: int = 2, revision: int = 0, seen: int = 0) -> bytes:
    seen_b = struct.pack("<Q", seen) if major * 10 + minor >= 2 else struct.pack("<i", seen)
    return struct.pack("<iii", major, minor, revision) + seen_b


def body(n: int = N_FLOATS) -> np.ndarray:
    b = np.random.default_rng(1).uniform(-1, 1, n).astype("<f4")
    b[4 + 8:4 + 12] = np.abs(b[4 + 8:4 + 12])  # conv 0 rolling_variance (after biases, scales, mean)
    return b


def poke(index: int, value: float) -> bytes:
    b = body()
    b[index] = value
    return header() + b.tobytes()


VALID = header() + body().tobytes()
# (id, file bytes or a path under tmp_path, expected class, message fragment)
WEIGHTS_CASES = [
    ("w_empty", b"", WeightsError, "0 bytes is too short for a Darknet weights header"),
    ("w_short_header", VALID[:10], WeightsError, "10 bytes is too short"),
    ("w_header_only", VALID[:20], WeightsError,
     "holds 0 floats after the header but the cfg needs exactly 233 (233 missing; the file ends inside layer 0 "
     "[convolutional])"),
    ("w_truncated_last_float", VALID[:-4], WeightsError, "1 missing; the file ends inside layer 3 [connected]"),
    ("w_truncated_mid", VALID[:20 + 4 * 130], WeightsError, "the file ends inside layer 2 [convolutional]"),
    ("w_odd_bytes", VALID + b"\0\0", WeightsError, "934 bytes after the 20-byte header is not a whole number"),
    ("w_extra_float", VALID + b"\0" * 4, WeightsError, "1 extra floats = 4 bytes"),
    ("w_doubled", VALID + VALID[20:], WeightsError, "233 extra floats"),
    ("w_negative_major", header(-1) + VALID[20:], WeightsError, "header version -1.2.0 is not a Darknet weights"),
    ("w_huge_version", struct.pack("<iii", 2**31 - 1, 0, 0) + VALID[12:], WeightsError,
     "is not a Darknet weights header"),
    ("w_text_cfg", WEIGHTS_CFG.read_bytes(), WeightsError, "looks like a text cfg"),
    ("w_png", b"\x89PNG\r\n\x1a\n" + bytes(1000), WeightsError, "is not a Darknet weights header"),
    # (regression) both read as "header version 1936876918.544108393.1886680168 is not a Darknet weights header"
    ("w_git_lfs_pointer", b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 35434956\n",
     WeightsError, "a Git LFS pointer (a small text file): the real file was never downloaded"),
    ("w_html_page", b"\n<!DOCTYPE html>\n<html lang=\"en\"><head><title>Sign in</title></head></html>\n", WeightsError,
     "an HTML/XML page: the download saved an error or sign-in page"),
    ("w_old_header_with_20_bytes", header(0, 1) + b"\0" * 4 + VALID[20:], WeightsError, "1 extra floats"),
    ("w_header_bitflip_minor", header(0, 0) + VALID[16:], WeightsError, "1 extra floats"),
    ("w_nan_weight", poke(4 * 4 + 7, np.nan), WeightsError,
     "layer 0 [convolutional] weights holds 1 NaN/Inf values (first at flat index 7: nan)"),
    ("w_inf_bias", poke(124 + 10, np.inf), WeightsError, "layer 3 [connected] biases holds 1 NaN/Inf"),
    ("w_neg_inf_scale", poke(4, -np.inf), WeightsError, "layer 0 [convolutional] scales holds 1 NaN/Inf"),
    ("w_negative_variance", poke(4 + 8, -1.0), WeightsError, "rolling_variance has negative values"),
    ("w_wrong_model", TINY_WEIGHTS, WeightsError, "8858734 floats after the header but the cfg needs exactly 233"),
    ("w_dev_zero", Path("/dev/zero"), WeightsError, "not a regular file"),
    ("w_directory", "DIR", WeightsError, "cannot read weights"),
    ("w_missing_file", "MISSING", WeightsError, "cannot read weights: No such file"),
]


@pytest.mark.parametrize("case", WEIGHTS_CASES, ids=[c[0] for c in WEIGHTS_CASES])
def test_weights_corpus(case, tmp_path):
    name, data, cls, fragment = case
    if isinstance(data, bytes):
        path = tmp_path / f"{name}.weights"
        path.write_bytes(data)
    else:
        path = {"DIR": tmp_path, "MISSING": tmp_path / "missing.weights"}.get(data, data)
    expect_error(cls, fragment, engine.load, WEIGHTS_CFG, weights=path)


def test_weights_16_byte_header_and_transposed_files_load_correctly(tmp_path):
    b = body()
    (tmp_path / "old.weights").write_bytes(header(0, 1) + b.tobytes())
    old = engine.load(WEIGHTS_CFG, weights=tmp_path / "old.weights")
    np.testing.assert_array_equal(old.params[3]["weights"].reshape(-1), b[124 + 10 + 3:124 + 10 + 99])
    (tmp_path / "t.weights").write_bytes(header(1001, 0) + b.tobytes())
    t = engine.load(WEIGHTS_CFG, weights=tmp_path / "t.weights")  # [in][out] stored: transposed on load
    np.testing.assert_array_equal(t.params[3]["weights"], b[124 + 10 + 3:124 + 10 + 99].reshape(32, 3).T)


# ---------------------------------------------------------------------------- engine model files
def _text(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), np.uint8)


# (id, changes to the valid model file's arrays (None = delete the key), expected class, fragment, open bug)
MODEL_FILE_CASES = [
    ("m_format_wrong", {"format": _text("qwidgets-engine-model/9")}, WeightsError, "expected 'qwidgets-engine-model/1'",
     False),
    ("m_format_not_utf8", {"format": np.array([255, 254], np.uint8)}, WeightsError, "cannot read engine model file",
     False),
    ("m_missing_cfg", {"cfg": None}, WeightsError, "not an engine model file (missing 'cfg'", False),
    ("m_cfg_no_layers", {"cfg": _text("[net]\nwidth=8\nheight=8\n")}, CfgError, "[net] has no layers after it",
     False),
    ("m_meta_bad_json", {"meta": _text("{")}, WeightsError, "cannot read engine model file", False),
    ("m_params_float64", {"layer0/weights": np.zeros((4, 3, 3, 3))}, WeightsError,
     "layer0/weights is float64(4, 3, 3, 3), expected float32(4, 3, 3, 3)", False),
    ("m_params_wrong_shape", {"layer3/weights": np.zeros((32, 3), np.float32)}, WeightsError,
     "layer3/weights is float32(32, 3), expected float32(3, 32)", False),
    ("m_params_missing", {"layer3/weights": None}, WeightsError, "missing array layer3/weights for layer 3 [connected]",
     False),
    ("m_params_nan", {"layer0/biases": np.full(4, np.nan, np.float32)}, WeightsError,
     "layer 0 [convolutional] biases holds 4 NaN/Inf values", False),
    ("m_object_array", {"cfg": np.array([None], dtype=object)}, WeightsError, "cannot read engine model file", False),
    ("m_meta_is_a_list", {"meta": _text("[1, 2]")}, WeightsError, "meta", False),
    ("m_class_names_not_a_list", {"meta": _text('{"class_names": 5}')}, WeightsError, "class_names", False),
    ("m_header_5_values", {"header": np.arange(5, dtype=np.uint64)}, WeightsError, "header", False),
]


@pytest.mark.parametrize("case", MODEL_FILE_CASES, ids=[c[0] for c in MODEL_FILE_CASES])
def test_engine_model_file_corpus(case, tmp_path):
    name, changes, cls, fragment, _ = case
    arrays = engine.load(WEIGHTS_CFG, random_weights=0).to_arrays()
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    path = tmp_path / f"{name}.npz"
    np.savez(path, **arrays)
    expect_error(cls, fragment, engine.load, path)


@pytest.mark.parametrize("data", [b"PK\x03\x04" + bytes(60), "TRUNCATED"], ids=["m_pk_magic_only", "m_truncated_zip"])
def test_broken_zip_model_files(data, tmp_path):
    path = tmp_path / "broken.npz"
    if data == "TRUNCATED":
        engine.load(WEIGHTS_CFG, random_weights=0).save(path)
        data = path.read_bytes()[:300]
    path.write_bytes(data)
    expect_error(WeightsError, "broken.npz: cannot read engine model file", engine.load, path)


# --------------------------------------------------------------------------------------- images
def encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid tiny PNG whose IHDR claims width x height (CRC fixed): a decompression-bomb header."""
    data = bytearray(encode(Image.new("L", (1, 1))))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def _jpeg() -> bytes:
    rng = np.random.default_rng(2)
    return encode(Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)), "JPEG")


JPEG = _jpeg()
PNG = encode(Image.fromarray(np.random.default_rng(3).integers(0, 255, (16, 16, 3), dtype=np.uint8)))
# (id, file bytes (written to <id>.<ext>) / an in-memory source, expected class, fragment)
IMAGE_CASES = [
    ("i_empty_file", b"", ImageError, "not a decodable image"),
    ("i_text_file", b"hello, not an image\n", ImageError, "not a decodable image"),
    ("i_html_as_jpg", b"<!DOCTYPE html><html><body>404</body></html>", ImageError, "not a decodable image"),
    ("i_weights_as_image", VALID, ImageError, "not a decodable image"),
    ("i_truncated_jpeg", JPEG[:len(JPEG) // 2], ImageError, "corrupt or truncated image data"),
    ("i_truncated_png", PNG[:len(PNG) - 40], ImageError, "corrupt or truncated image data"),
    ("i_png_bad_ihdr_crc", PNG[:29] + b"\0\0\0\0" + PNG[33:], ImageError, "not a decodable image"),
    ("i_gif_header_only", b"GIF89a", ImageError, "image"),
    ("i_png_20000x20000", png_declaring(20000, 20000), ImageError, "refused as a possible decompression bomb"),
    ("i_png_1x100000000", png_declaring(1, 100_000_000), ImageError, "refused as a possible decompression bomb"),
    ("i_png_9000x9000", png_declaring(9000, 9000), ImageError,
     "9000x9000 = 81000000 pixels exceeds the limit of 64000000 (possible decompression bomb)"),
    ("i_png_0x0", png_declaring(0, 0), ImageError, "i_png_0x0"),
    ("i_missing_file", "MISSING", ImageError, "cannot open image: No such file"),
    ("i_directory", "DIR", ImageError, "cannot open image"),
    ("i_int_source", 5, ImageError, "cannot read an image from a int"),
    ("i_none_source", None, ImageError, "cannot read an image from a NoneType"),
    ("i_array_empty", np.zeros((0, 0, 3), np.uint8), ImageError, "image has no pixels (0x0)"),
    ("i_array_float_empty", np.zeros((3, 0, 5), np.float32), ImageError, "image has no pixels (5x0)"),
    ("i_array_float64", np.zeros((3, 4, 4)), ImageError, "expected uint8 (H, W, 3|4) or float32 (3, H, W), got float64"),
    ("i_array_4d", np.zeros((1, 4, 4, 3), np.uint8), ImageError, "got uint8 (1, 4, 4, 3)"),
    ("i_pil_empty", Image.new("RGB", (0, 0)), ImageError, "image has no pixels (0x0)"),
    ("i_pil_too_many_pixels", Image.new("1", (9000, 9000)), ImageError, "9000x9000 = 81000000 pixels exceeds"),
]


@pytest.fixture(scope="module")
def detector():
    return engine.load(DETECTOR_CFG, random_weights=0)


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_image_corpus(case, tmp_path, detector):
    name, data, cls, fragment = case
    if isinstance(data, bytes):
        source = tmp_path / f"{name}.jpg"
        source.write_bytes(data)
    elif isinstance(data, str):
        source = {"DIR": tmp_path, "MISSING": tmp_path / "missing.jpg"}[data]
    else:
        source = data
    expect_error(cls, fragment, detector.detect, source)
    if isinstance(data, (bytes, str)):
        err = expect_error(cls, fragment, open_image, source)
        assert str(source) in str(err), f"the message must name the file: {err}"


def _gray(): return Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, "L")
def _rgba(): return Image.fromarray(np.random.default_rng(4).integers(0, 255, (6, 5, 4), dtype=np.uint8), "RGBA")
def _cmyk(): return Image.fromarray(np.random.default_rng(5).integers(0, 255, (6, 5, 4), dtype=np.uint8), "CMYK")


# "handled correctly": (id, encoded bytes, file extension, expected (3, H, W) uint8 pixels)
OK_IMAGES = [
    ("ok_1x1_png", encode(Image.new("RGB", (1, 1), (255, 0, 0))), "png", np.array([255, 0, 0]).reshape(3, 1, 1)),
    ("ok_grayscale_png", encode(_gray()), "png", np.repeat(np.asarray(_gray())[None], 3, 0)),
    ("ok_rgba_png_alpha_dropped", encode(_rgba()), "png", np.asarray(_rgba())[:, :, :3].transpose(2, 0, 1)),
    ("ok_cmyk_tiff", encode(_cmyk(), "TIFF"), "tif", np.asarray(_cmyk().convert("RGB")).transpose(2, 0, 1)),
    ("ok_16bit_png", encode(Image.fromarray(np.full((3, 4), 0x1234, np.uint16))), "png",
     np.full((3, 3, 4), 0x12)),
    ("ok_palette_gif", encode(_gray().convert("P"), "GIF"), "gif",
     np.asarray(_gray().convert("P").convert("RGB")).transpose(2, 0, 1)),
    ("ok_1x2000_strip", encode(Image.new("RGB", (2000, 1), (0, 255, 0))), "png",
     np.broadcast_to(np.array([0, 255, 0]).reshape(3, 1, 1), (3, 1, 2000))),
]


@pytest.mark.parametrize("case", OK_IMAGES, ids=[c[0] for c in OK_IMAGES])
def test_image_modes_are_handled_correctly(case, tmp_path, detector):
    name, data, ext, pixels = case
    path = tmp_path / f"{name}.{ext}"
    path.write_bytes(data)
    x = image_to_array(path)
    np.testing.assert_array_equal(np.rint(x * 255).astype(int), pixels)
    pre = detector.preprocess(path)
    assert pre.x.shape == (3, 16, 16) and np.isfinite(pre.x).all() and (pre.x >= 0).all() and (pre.x <= 1).all()
    dets = detector.detect(path, thresh=0.0)
    assert all(np.isfinite([d.x1, d.y1, d.x2, d.y2, d.score]).all() for d in dets)


def test_cli_detect_reports_bad_images_per_image(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(JPEG[:100])
    good = tmp_path / "good.png"
    good.write_bytes(PNG)
    (tmp_path / "w.weights").write_bytes(header() + np.zeros(8 * 4 + 8 * 3 * 9 + 12 + 12 * 8, "<f4").tobytes())
    r = subprocess.run([sys.executable, "-m", "engine", "detect", str(DETECTOR_CFG), "--weights",
                        str(tmp_path / "w.weights"), str(bad), str(good), "--json"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "bad.jpg: corrupt or truncated image data" in r.stderr and '"good.png"' in r.stdout


# ------------------------------------------------------------------------------ workspace names
WORKSPACE_NAMES = [
    ("n_empty", "", "empty; expected 1-128 characters"),
    ("n_dot", ".", "starts with '.'"),
    ("n_dotdot", "..", "starts with '.'"),
    ("n_parent_path", "../escape", "contains a path separator"),
    ("n_slash", "a/b", "contains a path separator"),
    ("n_backslash", "a\\b", "contains a path separator"),
    ("n_absolute", "/etc/passwd", "contains a path separator"),
    ("n_nul", "nul\x00byte", "U+0000"),
    ("n_newline", "two\nlines", "U+000A"),
    ("n_rtl_override", "photo\u202egpj.exe", "U+202E"),
    ("n_zero_width", "a\u200bb", "U+200B"),
    ("n_too_long", "x" * 129, "at most 128 characters"),
    ("n_too_many_bytes", "\u00e9" * 101, "202 UTF-8 bytes"),
    ("n_leading_space", " lead", "leading or trailing whitespace"),
    ("n_hidden", ".qw-index.json", "starts with '.'"),
    ("n_not_str", 5, "expected a str, got int"),
    ("n_none", None, "expected a str, got NoneType"),
]


@pytest.mark.parametrize("case", WORKSPACE_NAMES, ids=[c[0] for c in WORKSPACE_NAMES])
def test_workspace_names_are_refused(case, tmp_path):
    _, name, fragment = case
    ws = Workspace(tmp_path / "ws")
    expect_error(WorkspaceError, fragment, ws.save_bytes, name, "record", {"notes.txt": b"hi"})
    ws.save_bytes("ok", "record", {"notes.txt": b"hi"})
    expect_error(WorkspaceError, fragment, ws.rename, "ok", name)
    assert [e.name for e in ws.list()] == ["ok"] and sorted(p.name for p in (tmp_path / "ws").iterdir()) == [
        ".qw-index.json", ".qw-index.lock", ".qw-staging", "records"]


def test_workspace_unknown_entries_and_unconfirmed_delete(tmp_path):
    ws = Workspace(tmp_path / "ws")
    expect_error(WorkspaceError, "entry 'nope': not in workspace", ws.info, "nope")
    ws.save_bytes("keep", "record", {"notes.txt": b"hi"})
    expect_error(WorkspaceError, "delete needs confirm=True", ws.delete, "keep")
    expect_error(WorkspaceError, "kind 'bogus'", ws.save_bytes, "x", "bogus", {"a.txt": b""})
    assert ws.exists("keep")


# -------------------------------------------------------------------------------- edits, forward
@pytest.fixture
def tiny_model():
    return engine.load(WEIGHTS_CFG, random_weights=0)


# (id, layer, param, value, expected class, fragment, known open bug)
EDIT_CASES = [
    ("e_nan", 0, "weights", np.full((4, 3, 3, 3), np.nan), ValueError, "layer 0 [convolutional] weights: values "
     "must be finite", False),
    ("e_inf_bias", 3, "biases", np.array([0, np.inf, 0]), ValueError, "layer 3 [connected] biases: values must be "
     "finite", False),
    ("e_overflow_to_inf", 0, "biases", np.full(4, 1e300), ValueError, "values must be finite", False),
    ("e_wrong_shape", 0, "weights", np.zeros((4, 3, 1, 1)), ValueError, "shape (4, 3, 1, 1) given, (4, 3, 3, 3) "
     "expected", False),
    ("e_transposed", 3, "weights", np.zeros((32, 3)), ValueError, "shape (32, 3) given, (3, 32) expected", False),
    ("e_unknown_param", 0, "gamma", np.zeros(4), KeyError, "layer 0 [convolutional] has no parameter 'gamma'", False),
    ("e_param_of_maxpool", 1, "weights", np.zeros(4), KeyError, "layer 1 [maxpool] has no parameter 'weights'; it "
     "has none", False),
    ("e_layer_out_of_range", 9, "weights", np.zeros(4), KeyError, "layer 9", False),
    ("e_negative_layer", -1, "biases", np.zeros(3), KeyError, "layer -1", False),
    ("e_complex_values", 0, "biases", np.full(4, 1 + 2j), ValueError, "layer 0", False),
    ("e_string_value", 0, "biases", "abc", ValueError, "layer 0 [convolutional] biases", False),
]


@pytest.mark.parametrize("case", EDIT_CASES, ids=[c[0] for c in EDIT_CASES])
def test_float_edits_are_validated(case, tiny_model):
    _, layer, param, value, cls, fragment, _ = case
    before = [{k: v.copy() for k, v in p.items()} for p in tiny_model.params]
    with np.errstate(all="ignore"):
        expect_error(cls, fragment, tiny_model.set_param, layer, param, value)
    for p, q in zip(before, tiny_model.params):  # a refused edit changes nothing
        assert p.keys() == q.keys() and all(np.array_equal(p[k], q[k]) for k in p)


INT8_CASES = [
    ("q_128", np.array([0, 128]), "int8 values must be in [-127, 127] (symmetric int8), got 0..128"),
    ("q_minus_128", np.array([-128], np.int8), "got -128..0"),
    ("q_nan", np.array([np.nan]), "int8 values must be finite integers"),
    ("q_fraction", np.array([1.5]), "int8 values must be whole numbers, got e.g. 1.5"),
    ("q_complex", np.array([1j]), "int8 values must be integers, got dtype complex128"),
]


@pytest.mark.parametrize("case", INT8_CASES, ids=[c[0] for c in INT8_CASES])
def test_int8_edit_values_are_validated(case):
    """The shared validator; the same values through the Session are the s_* cases below."""
    _, value, fragment = case
    expect_error(EditError, fragment, check_int8, value, "layer 0 w_q")


FORWARD_CASES = [
    ("f_wrong_input_shape", "forward", (np.zeros((3, 16, 16), np.float32),), {}, ValueError,
     "input tensor has shape (3, 16, 16); this model expects (3, 8, 8)", False),
    ("f_hwc_input", "forward", (np.zeros((8, 8, 3), np.float32),), {}, ValueError, "has shape (8, 8, 3)", False),
    ("f_nan_input", "forward", (np.full((3, 8, 8), np.nan, np.float32),), {}, ValueError, "contains NaN/Inf", False),
    ("f_stop_past_the_end", "forward", (np.zeros((3, 8, 8), np.float32),), {"stop": 9}, ValueError, "stop=9", False),
    ("f_detect_thresh_nan", "detect", (PNG,), {"thresh": float("nan")}, ValueError, "thresh=nan", False),
    ("f_detect_nms_2", "detect", (PNG,), {"nms": 2.0}, ValueError, "nms=2.0: expected 0 <= nms <= 1", False),
    ("f_detect_resize", "detect", (PNG,), {"resize": "crop"}, ValueError, "resize='crop': expected one of", False),
]


@pytest.mark.parametrize("case", FORWARD_CASES, ids=[c[0] for c in FORWARD_CASES])
def test_forward_and_detect_arguments(case, tiny_model):
    _, method, args, kwargs, cls, fragment, _ = case
    expect_error(cls, fragment, getattr(tiny_model, method), *args, **kwargs)


def test_load_refuses_sizes_that_are_not_whole_numbers():
    # 3.5 used to raise a raw TypeError and True to build a 1x1 model
    for size in (3.5, True, (320.0, 256), (32, False), object, "32x"):
        expect_error(ArgumentError, f"size {size!r}: expected", engine.load, DETECTOR_CFG, random_weights=0, size=size)
    assert engine.load(DETECTOR_CFG, random_weights=0, size=np.int64(32)).input_shape == (3, 32, 32)
    assert engine.load(DETECTOR_CFG, random_weights=0, size=[32, 8]).input_shape == (3, 8, 32)
    assert engine.load(DETECTOR_CFG, random_weights=0, size="32x8").input_shape == (3, 8, 32)


def test_process_survives_the_whole_corpus():
    """Nothing above closed a file descriptor it did not open (open_image(5) used to close fd 5)."""
    r, w = os.pipe()
    try:
        expect_error(ImageError, "cannot read an image", open_image, w)
        os.write(w, b"x")  # still open
    finally:
        os.close(r)
        os.close(w)


# ------------------------------------------------------------------ quantized model files, Session edits
@pytest.fixture(scope="module")
def corpus_q():
    """(model, quantized model) for tests/corpus/weights/tiny.cfg, random weights, minmax per channel."""
    from engine.calib.collect import collect
    from engine.quant.qmodel import quantize_model
    model = engine.load(WEIGHTS_CFG, random_weights=0)
    xs = [np.random.default_rng(i).random(model.input_shape, dtype=np.float32) for i in range(2)]
    return model, quantize_model(model, collect(model, xs, progress=False), "minmax", per_channel=True)


def _meta(arrays: dict, **changes) -> dict:
    import json
    meta = json.loads(bytes(arrays["meta"]).decode())
    for key, value in changes.items():
        if value is _DROP:
            meta.pop(key)
        elif isinstance(value, dict) and isinstance(meta.get(key), dict):
            meta[key] = {**meta[key], **value}
        else:
            meta[key] = value
    return {**arrays, "meta": _text(json.dumps(meta))}


_DROP = object()


def _meta_without(arrays: dict, key: str, member: str) -> dict:
    """arrays whose meta[key] (a dict) lacks `member`."""
    import json
    meta = json.loads(bytes(arrays["meta"]).decode())
    del meta[key][member]
    return {**arrays, "meta": _text(json.dumps(meta))}
# (id, arrays -> arrays (or raw bytes), fragment); every case raises WeightsError
QMODEL_FILE_CASES = [
    ("qm_truncated", lambda a, raw: raw[:len(raw) // 2], "cannot read quantized model"),
    ("qm_text_file", lambda a, raw: b"not a zip at all\n", "cannot read quantized model"),
    ("qm_wrong_format", lambda a, raw: {**a, "format": _text("qwidgets-engine-model/1")}, "not a quantized model file"),
    ("qm_meta_not_json", lambda a, raw: {**a, "meta": _text("{oops")}, "meta is missing or not JSON"),
    ("qm_meta_is_a_list", lambda a, raw: {**a, "meta": _text("[1, 2]")}, "meta must be a JSON object, got list"),
    ("qm_meta_lacks_method", lambda a, raw: _meta(a, method=_DROP), "meta lacks 'method'"),
    ("qm_per_channel_string", lambda a, raw: _meta(a, per_channel="yes"), "'per_channel' must be bool, got str"),
    ("qm_scale_nan", lambda a, raw: _meta(a, scales={"0": float("nan")}), "scales of 0 must be finite and > 0"),
    ("qm_scale_zero", lambda a, raw: _meta(a, scales={"input": 0.0}), "scales of input must be finite and > 0"),
    ("qm_scale_string", lambda a, raw: _meta(a, scales={"2": "0.1"}), "scales of 2 must be finite and > 0"),
    ("qm_threshold_negative", lambda a, raw: _meta(a, thresholds={"0": -1.0}), "thresholds of 0 must be finite and >= 0"),
    ("qm_in_scale_inf", lambda a, raw: _meta(a, in_scales={"0": float("inf")}), "in_scales of 0 must be finite"),
    ("qm_scale_of_unknown_tensor", lambda a, raw: _meta(a, scales={"99": 0.1}), "scales name tensors the cfg does not have: 99"),
    ("qm_float_layers_strings", lambda a, raw: _meta(a, float_layers=["3"]), "float_layers must be layer indices"),
    ("qm_layer_out_of_range", lambda a, raw: _meta(a, in_scales={"9": 0.1}, schemes={"9": "minmax"}),
     "quantized layer '9' is not a layer of the cfg (0..3)"),
    ("qm_layer_of_maxpool", lambda a, raw: _meta(a, in_scales={"1": 0.1}, schemes={"1": "minmax"}),
     "layer 1 [maxpool] has no weights to quantize"),
    ("qm_missing_b_q", lambda a, raw: {k: v for k, v in a.items() if k != "layer2/b_q"}, "layer 2 [convolutional]: array b_q is missing"),
    ("qm_w_q_int16", lambda a, raw: {**a, "layer0/w_q": a["layer0/w_q"].astype(np.int16)}, "w_q must be int8 of shape (4, 3, 3, 3), got int16"),
    ("qm_w_q_wrong_shape", lambda a, raw: {**a, "layer3/w_q": a["layer3/w_q"].T.copy()}, "layer 3 [connected]: w_q must be int8 of shape (3, 32)"),
    ("qm_w_q_minus_128", lambda a, raw: {**a, "layer0/w_q": np.full_like(a["layer0/w_q"], -128)}, "holds -128"),
    ("qm_b_q_float", lambda a, raw: {**a, "layer0/b_q": a["layer0/b_q"].astype(np.float32)}, "b_q must be int32 of shape (4,), got float32"),
    ("qm_w_scale_negative", lambda a, raw: {**a, "layer0/w_scale": -a["layer0/w_scale"]}, "w_scale must be finite and > 0"),
    ("qm_w_scale_wrong_length", lambda a, raw: {**a, "layer0/w_scale": a["layer0/w_scale"][:2]}, "w_scale must be 1 or 4 floats"),
    ("qm_cfg_garbage", lambda a, raw: {**a, "cfg": _text("[net]\nwidth=abc\n")}, "the embedded cfg does not build"),
    ("qm_histogram_damaged", lambda a, raw: {k: v for k, v in a.items() if k != "calib/images"}, "calibration histograms are damaged"),
    # (regression) these loaded, and thresholds re-read from them were meaningless (NaN counts: a RuntimeWarning)
    ("qm_histogram_nan_counts", lambda a, raw: _calib(a, "counts", lambda c: np.where(np.arange(c.size) == 3, np.nan, c)),
     "calibration histograms are damaged (counts must be whole numbers (found NaN, infinity or a fraction))"),
    ("qm_histogram_negative_counts", lambda a, raw: _calib(a, "counts", lambda c: c - 1),
     "calibration histograms are damaged (counts must be >= 0)"),
    ("qm_histogram_2d_counts", lambda a, raw: _calib(a, "counts", lambda c: c.reshape(2, -1)),
     "calibration histograms are damaged (counts must be a 1-D array of numbers"),
    ("qm_histogram_infinite_range", lambda a, raw: _calib(a, "meta", lambda m: np.where(np.arange(5) == 0, np.inf, m)),
     "calibration histograms are damaged (meta must be 5 finite numbers"),
    ("qm_histogram_negative_images", lambda a, raw: {**a, "calib/images": np.array([-5], np.int64)},
     "calibration histograms are damaged (images must be one count >= 0"),
    # (regression) a file lacking a scale or a layer's int8 weights ran into KeyError 'input', an AttributeError
    # traceback inside the INT conv, or silently ran the layer's output on a scale of 1.0
    ("qm_scales_lack_input", lambda a, raw: _meta_without(a, "scales", "input"), "scales lack tensor input;"),
    ("qm_scales_lack_layer", lambda a, raw: _meta_without(a, "scales", "2"), "scales lack tensor 2;"),
    ("qm_in_scales_lack_layer", lambda a, raw: _meta_without(_meta_without(a, "in_scales", "2"), "schemes", "2"),
     "in_scales lack layer 2 [convolutional];"),
]


def _calib(arrays: dict, part: str, change) -> dict:
    """`arrays` with the first calibration histogram's counts or meta changed."""
    key = sorted(k for k in arrays if k.startswith("calib/") and k.endswith("/" + part))[0]
    return {**arrays, key: change(arrays[key].astype(np.float64) if part == "counts" else arrays[key])}


@pytest.mark.parametrize("case", QMODEL_FILE_CASES, ids=[c[0] for c in QMODEL_FILE_CASES])
def test_quantized_model_file_corpus(case, corpus_q, tmp_path):
    from engine.quant.qmodel import QuantizedModel
    _, mutate, fragment = case
    _, qm = corpus_q
    good = qm.save(tmp_path / "good.npz")
    out = mutate(qm.to_arrays(), good.read_bytes())
    bad = tmp_path / "bad.npz"
    if isinstance(out, bytes):
        bad.write_bytes(out)
    else:
        np.savez(bad, **out)
    err = expect_error(WeightsError, fragment, QuantizedModel.load, bad)
    assert str(bad) in str(err)                     # the message names the file


def test_quantized_model_for_another_cfg_is_refused_by_the_session(corpus_q):
    from engine.session import Session
    _, qm = corpus_q
    other = engine.load(DETECTOR_CFG, random_weights=0)
    expect_error(EngineError, "was made for a different cfg", Session, other, qm, "int")


# (id, call on an INT Session of the corpus model, error class, fragment)
SESSION_EDIT_CASES = [
    ("s_w_q_128", lambda s: s.edit_weights(0, (0, 0, 0, 0), 128, target="int8"), EditError, "[-127, 127]"),
    ("s_w_q_nan", lambda s: s.edit_weights(0, (0, 0, 0, 0), np.nan, target="int8"), EditError, "finite integers"),
    ("s_w_q_fraction", lambda s: s.edit_weights(0, (0, 0, 0, 0), 0.5, target="int8"), EditError, "whole numbers"),
    ("s_w_q_bad_region", lambda s: s.edit_weights(0, (9, 0, 0, 0), 1, target="int8"), EditError, "not valid for shape (4, 3, 3, 3)"),
    ("s_w_q_bad_values_shape", lambda s: s.edit_weights(0, 0, np.zeros((2, 2)), target="int8"), EditError, "do not fit"),
    ("s_b_q_nan", lambda s: s.edit_weights(0, 1, np.nan, param="biases", target="int8"), EditError, "int32 values must be finite"),
    ("s_b_q_fraction", lambda s: s.edit_weights(0, 1, 0.25, param="biases", target="int8"), EditError, "whole numbers, got e.g. 0.25"),
    ("s_b_q_huge", lambda s: s.edit_weights(0, 1, 2.0 ** 31, param="biases", target="int8"), EditError, "below 2**31"),
    ("s_b_q_string", lambda s: s.edit_weights(0, 1, "7", param="biases", target="int8"), EditError, "must be integers, got dtype <U1"),
    ("s_int8_edit_of_maxpool", lambda s: s.edit_weights(1, 0, 1, target="int8"), EditError, "has no int8 weights"),
    ("s_scale_zero", lambda s: s.set_scale("0", 0.0), EditError, "tensor 0: scale must be finite and > 0, got 0.0"),
    ("s_scale_nan", lambda s: s.set_scale("input", float("nan")), EditError, "must be finite and > 0, got nan"),
    ("s_scale_string", lambda s: s.set_scale("0", "big"), EditError, "scale must be a number, got 'big'"),
    ("s_threshold_negative", lambda s: s.set_threshold("2", -3), EditError, "threshold must be finite and > 0"),
    ("s_scale_unknown_tensor", lambda s: s.set_scale("99", 0.1), EditError, "tensor '99' has no activation scale"),
    ("s_filter_out_of_range", lambda s: s.zero_filter(0, 9, target="int8"), EditError, "filter 9 does not exist (0..3)"),
    ("s_scale_factor_inf", lambda s: s.scale_filter(0, 0, float("inf"), target="int8"), EditError, "scale factor must be finite"),
    ("s_prune_negative", lambda s: s.prune(0, -0.1, target="int8"), EditError, "prune fraction -0.1"),
    ("s_layer_out_of_range", lambda s: s.edit_weights(99, 0, 1, target="int8"), ArgumentError, "layer 99 does not exist; this model has layers 0..3"),
    ("s_bad_target", lambda s: s.edit_weights(0, 0, 1, target="int4"), ArgumentError, "target='int4'"),
]


@pytest.mark.parametrize("case", SESSION_EDIT_CASES, ids=[c[0] for c in SESSION_EDIT_CASES])
def test_session_int8_and_scale_edits_are_validated(case, corpus_q):
    """A refused edit leaves the quantized model, the float model and the undo journal unchanged."""
    from engine.session import Session
    _, call, cls, fragment = case
    model, qm = corpus_q
    s = Session(model, qm, "int", np.random.default_rng(9).random(model.input_shape, dtype=np.float32))
    s.run()
    before = s.qmodel.to_arrays()
    with np.errstate(all="ignore"):
        expect_error(cls, fragment, call, s)
    after = s.qmodel.to_arrays()
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert len(s.journal) == 0 and s.stale_from is None


def test_a_flipped_exponent_bit_in_the_weights_is_refused_naming_the_layer(tmp_path):
    # -0.45 -> 1e38: a single damaged bit used to load, and detect found nothing (exit 0)
    raw = bytearray(TINY_WEIGHTS.read_bytes())
    at = 20 + 4 * 16 * 4 + 4 * 10                       # header, layer 0's bn vectors, weight 10
    raw[at + 3] ^= 0x40
    bad = tmp_path / "flip.weights"
    bad.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match=r"flip.weights: layer 0 \[convolutional\] weights holds 1 values beyond "
                                           r"\+-1e\+30 \(first at flat index 10: 1.05\d+e\+38\)"):
        engine.load(TINY_CFG, bad)
