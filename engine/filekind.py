"""What a file that is no zip archive is, told by its content (never its name): for a message about a file given
in the wrong place ("--quantized dog.jpg", a `.weights` opened as a quantized model). The CLI's `info` and
its `--quantized` check (engine/cli/options.py) and `QuantizedModel.load` share it."""
from __future__ import annotations

import os
import re
from pathlib import Path

from engine.darknet.cfg import UTF16_BOMS, download_mistake, text_problem

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")     # a zip's first member, or the end record of one with none
# the first bytes of the image files a photo folder holds
IMAGE_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def classify(head: bytes, size: int, name: str, images: bool = True) -> tuple[str, str]:
    """(kind, detail) of a file from its first bytes (up to 64 KiB) and size: "zip", "empty", "image" (detail:
    its format), "cfg" (text with a [section] line), "text" (detail: a Git LFS pointer or HTML page in words, else
    ""), "weights" (detail: its header in words) or "binary" (detail: why it is neither text nor a Darknet
    .weights file). Without `images`, an empty file is "text" and an image "binary" (what `info` reads: a cfg,
    text or weights)."""
    if head[:4] in ZIP_MAGIC:
        return "zip", ""
    if images and size == 0:
        return "empty", ""
    image = next((fmt for magic, fmt in IMAGE_MAGIC if head.startswith(magic)), None)
    if image is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        image = "WebP"
    if images and image is not None:
        return "image", image
    why = text_problem(head, complete=len(head) == size)
    if why is None:
        # a UTF-8 byte-order mark before [net] (Notepad) is a cfg, as read_cfg reads it
        if head.startswith(UTF16_BOMS):        # PowerShell's `>`: UTF-16 text
            text = head[:len(head) & ~1].decode("utf-16", errors="replace")
            return ("cfg" if re.search(r"^\s*\[", text, re.MULTILINE) else "text"), ""
        if re.search(rb"^\s*\[", head.removeprefix(b"\xef\xbb\xbf"), re.MULTILINE):
            return "cfg", ""
        return "text", download_mistake(head) or ""         # detail: a Git LFS pointer or an HTML page, if one
    from engine.darknet.weights import read_header
    from engine.errors import WeightsError
    try:
        h = read_header(head[:20], name)
        if (size - h.size) % 4 or size == h.size:
            raise WeightsError(f"{size - h.size} bytes after its {h.size}-byte header are not a whole, non-zero "
                               "number of float32 values")
    except WeightsError as err:
        return "binary", f"not a text cfg file ({why}), nor a Darknet .weights file ({str(err).removeprefix(name + ': ')})"
    return "weights", (f"header version {h.major}.{h.minor}.{h.revision}, {(size - h.size) // 4:,} float32 values")


def read_head(path: str | os.PathLike) -> tuple[bytes, int]:
    """The first 64 KiB and the size of a regular file (a FIFO or device is refused: OSError)."""
    from engine.npzfile import open_regular
    with open_regular(path) as f:
        return f.read(1 << 16), os.fstat(f.fileno()).st_size


def sniff(path: str | os.PathLike) -> tuple[str, str] | None:
    """`classify` of a regular file's head, or None when it cannot be read (missing, a FIFO, a folder)."""
    try:
        head, size = read_head(path)
    except OSError:
        return None
    return classify(head, size, Path(path).name)


def words(kind: str, detail: str) -> str:
    """A `classify` result in words: "a JPEG image", "a Darknet .weights file (header version ...)"."""
    return {"zip": "a zip archive (an .npz)", "empty": "an empty file", "image": f"a {detail} image",
            "cfg": "a text file with [section] lines (a Darknet .cfg)", "text": detail or "a text file (not a Darknet .cfg)",
            "weights": f"a Darknet .weights file ({detail})",
            "binary": "a binary file of no kind the engine reads (not a zip archive, an image or a Darknet .weights "
                      "file)"}[kind]


def describe(path: str | os.PathLike) -> str:
    """A file in words (`words`), or why it cannot be read."""
    try:
        head, size = read_head(path)
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    return words(*classify(head, size, Path(path).name))
