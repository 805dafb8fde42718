"""Image input: safe decoding with Pillow, and Darknet's exact resize / letterbox preprocessing.

Darknet's `resize_image` is an align-corners bilinear resize computed in float32 with a
truncating index (`darknet-semantics.md` B.5); it is not OpenCV's or Pillow's bilinear, so it is
re-implemented here, vectorised, operation for operation in float32.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.errors import ImageError
from engine.npzfile import open_regular

MAX_PIXELS = 64_000_000  # ~8000x8000; bigger inputs are refused before decoding (decompression bombs)
RESIZE_MODES = ("letterbox", "stretch")
# the Pillow decoders tried: stb_image's formats (Darknet's reader) that Pillow has, plus TIFF and WebP, which
# the workspace takes too. Pillow alone would try every plugin it knows, and its EPS plugin runs Ghostscript on
# whatever a file named .jpg holds (when Ghostscript is installed), its exotic ones parse hostile bytes for nothing;
# JPEG covers MPO (multi-picture camera files)
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM", "TGA", "PSD")

ImageLike = Union[str, Path, bytes, np.ndarray, Image.Image]


def open_image(source: ImageLike, *, max_pixels: int = MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Decode an image file (path or bytes) to an 8-bit RGB PIL image, refusing bombs and non-images; an image
    array (as `image_to_array` takes: uint8 (H, W, 3|4), float32 (3, H, W) in [0, 1]) becomes the picture it holds.

    Grayscale, palette, RGBA (alpha dropped, as stb_image does for Darknet), CMYK and 16-bit
    inputs are converted to RGB. EXIF orientation is ignored, as Darknet ignores it.
    Raises: ImageError naming the file.
    """
    if isinstance(source, Image.Image):
        _check_size(source.size[0], source.size[1], max_pixels, name or "<PIL image>")
        return _to_rgb(source, name or "<PIL image>")
    if isinstance(source, np.ndarray):
        # image_to_array takes arrays, so image lists hold them (calibration, compare, Monte Carlo); what works on
        # a picture (augmented variants, mosaics) needs them as one: its 8-bit values, exact for a uint8 array
        x = np.nan_to_num(_array_to_chw(source), nan=0.0)
        _check_size(x.shape[2], x.shape[1], max_pixels, name or f"image array {source.dtype} {source.shape}")
        return Image.fromarray(np.rint(x.transpose(1, 2, 0) * 255).clip(0, 255).astype(np.uint8))
    if not isinstance(source, (str, Path, bytes, bytearray)):
        # open() would accept an int as a file descriptor and close it afterwards (maybe the
        # kernel's own socket); anything else would fail with a raw TypeError
        raise ImageError(f"{name or 'image'}: cannot read an image from a {type(source).__name__}; expected "
                         "a file path, encoded bytes, a PIL image or a uint8 (H, W, 3) / float32 (3, H, W) array")
    label = name or (str(source) if isinstance(source, (str, Path)) else "<image bytes>")
    try:
        fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open_regular(source)
    except OSError as err:
        raise ImageError(f"{label}: cannot open image: {err.strerror or err}") from err
    with fp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                Image.init()          # registers every plugin once: open(formats=) looks names up, never loads
                im = Image.open(fp, formats=IMAGE_FORMATS)
                _check_size(im.size[0], im.size[1], max_pixels, label)
                im.load()
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageError(f"{label}: refused as a possible decompression bomb: {err}") from err
        except UnidentifiedImageError as err:
            # Pillow's message names the BytesIO object (a memory address, different every run)
            raise ImageError(f"{label}: not a decodable image (expected JPEG, PNG, BMP, GIF, TIFF, WebP, PNM, TGA or "
                             "PSD data)") from err
        except MemoryError:
            raise
        except Exception as err:
            # Truncated or corrupt data inside Pillow: OSError, SyntaxError and ValueError mostly, but a plugin
            # parsing hostile bytes raises whatever it meets (a damaged TIFF tag type: TypeError; a DDS pixel
            # format it lacks: NotImplementedError), and every one of them is this file's fault
            what = "" if isinstance(err, (OSError, SyntaxError, ValueError)) else f"{type(err).__name__}: "
            raise ImageError(f"{label}: corrupt or truncated image data ({what}{err})") from err
    return _to_rgb(im, label)


def _check_size(w: int, h: int, max_pixels: int, label: str) -> None:
    if w < 1 or h < 1:
        raise ImageError(f"{label}: image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(f"{label}: {w}x{h} = {w * h} pixels exceeds the limit of "
                         f"{max_pixels} (possible decompression bomb)")


def _to_rgb(im: Image.Image, label: str) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # stb_image keeps the high byte of 16-bit samples
        arr = (np.asarray(im).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode == "F":
        arr = np.nan_to_num(np.asarray(im), nan=0.0).clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageError(f"{label}: cannot convert image mode {im.mode} to RGB ({err})") from err


def image_to_array(source: ImageLike, **kw) -> np.ndarray:
    """Image as (3, H, W) float32 in [0, 1] (8-bit value / 255, planar RGB), like `load_image_color`."""
    if isinstance(source, np.ndarray):
        return _array_to_chw(source)
    im = open_image(source, **kw)
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)).astype(np.float32) / np.float32(255)


def _array_to_chw(a: np.ndarray) -> np.ndarray:
    if a.ndim == 3 and a.shape[0] == 3 and a.dtype == np.float32:
        _check_size(a.shape[2], a.shape[1], MAX_PIXELS, f"image array {a.dtype} {a.shape}")
        return a  # already a planar float tensor
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
        raise ImageError(f"image array: expected uint8 (H, W, 3|4) or float32 (3, H, W), got {a.dtype} {a.shape}")
    _check_size(a.shape[1], a.shape[0], MAX_PIXELS, f"image array {a.dtype} {a.shape}")
    return np.ascontiguousarray(a[:, :, :3].transpose(2, 0, 1)).astype(np.float32) / np.float32(255)


def resize_image(x: np.ndarray, w: int, h: int) -> np.ndarray:
    """Darknet `resize_image`: (C, H, W) float32 -> (C, h, w) float32, align-corners bilinear.

    Horizontal pass first, then vertical; indexes are truncated float32 products; the last output
    column copies the last input column, and the last output row uses only `(1 - dy) * row[iy]`
    (so for some heights it is ~0, as in Darknet).
    """
    c, ih, iw = x.shape
    f32 = np.float32
    with np.errstate(divide="ignore", invalid="ignore"):
        w_scale = f32(iw - 1) / f32(w - 1)
        h_scale = f32(ih - 1) / f32(h - 1)
    part = np.empty((c, ih, w), np.float32)
    if iw == 1:
        part[:] = x[:, :, -1:]
    else:
        sx = np.arange(w - 1, dtype=np.float32) * w_scale
        ix = sx.astype(np.int64)
        dx = sx - ix.astype(np.float32)
        ix1 = np.minimum(ix + 1, iw - 1)
        part[:, :, :-1] = (f32(1) - dx) * x[:, :, ix] + dx * x[:, :, ix1]
        part[:, :, -1] = x[:, :, -1]
    sy = np.arange(h, dtype=np.float32) * h_scale if h > 1 else np.zeros(1, np.float32)
    iy = np.minimum(sy.astype(np.int64), ih - 1)
    dy = (sy - iy.astype(np.float32))[None, :, None]
    out = (f32(1) - dy) * part[:, iy, :]
    if ih > 1 and h > 1:
        iy1 = np.minimum(iy[:-1] + 1, ih - 1)
        out[:, :-1, :] += dy[:, :-1] * part[:, iy1, :]
    return out.astype(np.float32, copy=False)


def letterbox_size(im_w: int, im_h: int, net_w: int, net_h: int) -> tuple[int, int]:
    """Darknet's letterbox inner size (new_w, new_h): integer division, float32 comparison.

    Unlike Darknet, a side is at least 1 pixel: a 2000x1 strip on a 16x16 input would be 0 rows
    high in Darknet (an empty resize, then a division by zero when boxes are mapped back).
    """
    if np.float32(net_w) / np.float32(im_w) < np.float32(net_h) / np.float32(im_h):
        return net_w, max(1, (im_h * net_w) // im_w)
    return max(1, (im_w * net_h) // im_h), net_h


@dataclass(frozen=True)
class Preprocessed:
    """A network input tensor and how it was made from the original image (for box mapping)."""
    x: np.ndarray            # (3, net_h, net_w) float32
    image_w: int
    image_h: int
    resize: str              # "letterbox" | "stretch"

    def inner_size(self) -> tuple[int, int]:
        """(new_w, new_h) of the image inside the network input."""
        _, h, w = self.x.shape
        if self.resize == "letterbox":
            return letterbox_size(self.image_w, self.image_h, w, h)
        return w, h

    def inner(self) -> np.ndarray:
        """The image's part of the network input, (3, new_h, new_w) float32: the letterbox border
        (centred as `letterbox` placed it) cut off; the whole input for "stretch". A view, not a copy."""
        if self.resize != "letterbox":
            return self.x
        _, h, w = self.x.shape
        iw, ih = self.inner_size()
        top, left = (h - ih) // 2, (w - iw) // 2
        return self.x[:, top:top + ih, left:left + iw]

    def to_image(self) -> Image.Image:
        """The original-size RGB image recovered from the network input (for display, when the photo
        itself is not at hand): `inner()` as 8-bit RGB (round(v * 255), clipped), resized back to
        image_w x image_h with Pillow's bilinear filter (the resize undone approximately, not exactly)."""
        rgb = np.clip(np.rint(self.inner().transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(rgb).resize((self.image_w, self.image_h), Image.Resampling.BILINEAR)


def letterbox(x: np.ndarray, net_w: int, net_h: int) -> np.ndarray:
    """Darknet `letterbox_image`: keep the aspect ratio, centre on a 0.5-grey canvas."""
    c, ih, iw = x.shape
    new_w, new_h = letterbox_size(iw, ih, net_w, net_h)
    out = np.full((c, net_h, net_w), 0.5, np.float32)
    top, left = (net_h - new_h) // 2, (net_w - new_w) // 2
    out[:, top:top + new_h, left:left + new_w] = resize_image(x, new_w, new_h)
    return out


def preprocess(source: ImageLike, net_w: int, net_h: int, resize: str = "letterbox") -> Preprocessed:
    """Load an image and make the (3, net_h, net_w) network input (`letterbox` or `stretch`)."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize={resize!r}: expected one of {', '.join(RESIZE_MODES)}")
    x = image_to_array(source)
    _, ih, iw = x.shape
    if resize == "letterbox":
        return Preprocessed(letterbox(x, net_w, net_h), iw, ih, resize)
    return Preprocessed(resize_image(x, net_w, net_h), iw, ih, resize)
