"""One text rule (`engine.darknet.cfg.text_problem`): `looks_binary` (read_cfg's check of a huge file, the
CLI's "is MODEL a cfg"), `read_cfg` and `engine.filekind.classify` / `sniff` (`info`, `--quantized`,
`QuantizedModel.load`) agree on what is text. They had two rules: `looks_binary` forgave any bad byte in
the last 3 bytes of what it read, so a file ending in 0xFF was a cfg for one and binary for the other."""
from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
import pytest
from PIL import Image

from engine.darknet.cfg import looks_binary, read_cfg, text_problem
from engine.errors import CfgError
from engine.filekind import classify, sniff

TEXT_KINDS = ("cfg", "text")


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "[net]\n")
    return buf.getvalue()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


CFG = "[net]\n# café ✓\nwidth=416\nheight=416\nchannels=3\n[maxpool]\nsize=2\nstride=2\n"
# name: (whole file, is it binary)
SAMPLES = {
    "utf8": (CFG.encode(), False),
    "utf8_bom": (b"\xef\xbb\xbf" + CFG.encode(), False),
    "utf16_bom": (CFG.encode("utf-16"), False),            # PowerShell 5's `>`: read as its UTF-8 twin
    "utf16le": (CFG.encode("utf-16-le"), True),
    "nul": (CFG.encode().replace(b"width", b"wid\x00th"), True),
    "weights": (struct.pack("<iiiq", 0, 2, 0, 0) + np.arange(8, dtype=np.float32).tobytes(), True),
    "zip": (_zip(), True),
    "png": (_png(), True),
    "ends_in_ff": (CFG.encode() + b"\xff", True),            # a bad byte at the very end
    "ends_mid_char": (CFG.encode() + "✓".encode()[:2], True),  # the file ends inside a character
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_looks_binary_read_cfg_and_classify_agree_on_a_whole_file(name, tmp_path):
    data, binary = SAMPLES[name]
    path = tmp_path / f"{name}.cfg"
    path.write_bytes(data)
    assert looks_binary(data, complete=True) is binary
    assert (text_problem(data, complete=True) is not None) is binary
    for images in (True, False):
        assert (classify(data, len(data), path.name, images=images)[0] not in TEXT_KINDS) is binary
    assert sniff(path)[0] == classify(data, len(data), path.name)[0]
    if binary:
        with pytest.raises(CfgError, match="not a text cfg file|NUL bytes; not a text cfg file"):
            read_cfg(path)
    else:
        cfg = read_cfg(path)
        assert cfg.net.get_int("width") == 416 and len(cfg.layers) == 1


def test_the_kinds_the_samples_are():
    kinds = {n: classify(d, len(d), n)[0] for n, (d, _) in SAMPLES.items()}
    assert kinds == {"utf8": "cfg", "utf8_bom": "cfg", "utf16_bom": "cfg", "utf16le": "binary", "nul": "binary",
                     "weights": "weights", "zip": "zip", "png": "image", "ends_in_ff": "binary",
                     "ends_mid_char": "binary"}


def test_a_head_cut_inside_a_character_is_text_for_both():
    data = ("# " + "€" * 3000 + "\n[net]\n").encode()     # byte 4096 falls inside a 3-byte character
    head = data[:4096]
    assert head[-1:] != b"\n" and not looks_binary(head) and text_problem(head) is None
    assert classify(head, len(data), "big.cfg")[0] == "text"
    assert looks_binary(head + b"\xff") and classify(head[:-1] + b"\xff", len(data), "big.cfg")[0] == "binary"
