"""A damaged image whose Pillow plugin fails with an error other than OSError / ValueError / SyntaxError is one
ImageError naming the file: a TIFF whose StripOffsets tag has the wrong type made Pillow raise a raw TypeError,
a DDS with a pixel format Pillow lacks a NotImplementedError, and `detect` stopped with a traceback, losing the
results of the other images (the Explorer's image picker and a workspace upload raised them too)."""
from __future__ import annotations

import io
import json
import re
import struct

import numpy as np
import pytest
from PIL import Image

from engine.darknet.image import image_to_array
from engine.errors import ImageError
from engine.workspace import Limits, Workspace, WorkspaceError
from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS, cli

_STRIP_OFFSETS, _ASCII = 273, 2


def _photo(mode: str) -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((12, 17, 3)) * 255).astype(np.uint8)).convert(mode)


def tiff_with_text_strip_offsets() -> bytes:
    """A little-endian TIFF whose StripOffsets entry says its values are ASCII text (a one-byte change)."""
    buf = io.BytesIO()
    _photo("I;16").save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    assert data[:4] == b"II*\0"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for k in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack_from("<H", data, entry)[0] == _STRIP_OFFSETS:
            struct.pack_into("<H", data, entry + 2, _ASCII)
            return bytes(data)
    raise AssertionError("no StripOffsets tag")


def dds_with_unknown_pixel_format() -> bytes:
    """A DDS whose DDS_PIXELFORMAT flags (bytes 80-83) name FOURCC | 0x10 with no FourCC: no format Pillow has."""
    buf = io.BytesIO()
    _photo("RGBA").save(buf, "DDS")
    data = bytearray(buf.getvalue())
    assert data[:4] == b"DDS "
    struct.pack_into("<I", data, 80, 0x14)
    return bytes(data)


def refused_everywhere(tmp_path, data: bytes, filename: str, why: str) -> None:
    """`data` refused with the message `why` (a regex) as bytes, as the file `filename` and as a workspace upload
    of it, each message led by what names it; the workspace keeps nothing."""
    with pytest.raises(ImageError, match=rf"^<image bytes>: {why}"):
        image_to_array(data)
    path = tmp_path / filename
    path.write_bytes(data)
    with pytest.raises(ImageError, match=rf"^{re.escape(str(path))}: {why}"):
        image_to_array(path)
    ws = Workspace(tmp_path / "ws", limits=Limits())
    with pytest.raises(WorkspaceError, match=rf"^{re.escape(path.stem)}/{re.escape(filename)}: {why}"):
        ws.add_upload({filename: data})
    assert ws.list() == []


@pytest.mark.parametrize("make, raised", [(tiff_with_text_strip_offsets, "TypeError")], ids=["tiff"])
def test_a_damaged_image_a_plugin_fails_on_is_an_image_error_naming_it(tmp_path, make, raised):
    refused_everywhere(tmp_path, make(), "scan.tif", rf"corrupt or truncated image data \({raised}: ")


def test_detect_reports_the_damaged_image_and_keeps_the_others(tmp_path, capsys):
    bad = tmp_path / "scan.tif"
    bad.write_bytes(tiff_with_text_strip_offsets())
    code, out, err = cli(capsys, "detect", TINY_CFG, "--weights", TINY_WEIGHTS, "--size", "320", "--json",
                         IMAGES / "dog.jpg", bad)
    assert code == 1 and "Traceback" not in err
    assert f"error: {bad}: corrupt or truncated image data (TypeError: " in err
    images = json.loads(out)["images"]
    assert images["scan.tif"]["detections"] == [] and "TypeError" in images["scan.tif"]["error"]
    assert {d["name"] for d in images["dog.jpg"]["detections"]} >= {"dog", "bicycle"}


def eps_file() -> bytes:
    """An Encapsulated PostScript header Pillow's EPS plugin opens (10x10) and would render with Ghostscript."""
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n"


@pytest.mark.parametrize("make", [dds_with_unknown_pixel_format, eps_file], ids=["dds", "eps"])
def test_formats_outside_darknets_readers_are_not_handed_to_pillows_plugins(tmp_path, make, monkeypatch):
    """Only the formats Darknet's stb_image reads (plus TIFF and WebP) are decoded: a file named .jpg that holds
    PostScript would make Pillow's EPS plugin run Ghostscript on it, and other plugins parse hostile bytes for
    formats no camera writes (the DDS above raised NotImplementedError from inside its plugin)."""
    from PIL import EpsImagePlugin

    def no_ghostscript(*a, **k):
        raise AssertionError("Ghostscript was asked to render an uploaded file")
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_ghostscript)
    refused_everywhere(tmp_path, make(), "photo.jpg", r"not a decodable image \(expected JPEG, PNG, ")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM", "TGA"])
def test_the_formats_darknet_and_the_workspace_take_still_decode(fmt):
    buf = io.BytesIO()
    _photo("RGB").save(buf, fmt)
    x = image_to_array(buf.getvalue())
    assert x.shape == (3, 12, 17) and x.dtype == np.float32
