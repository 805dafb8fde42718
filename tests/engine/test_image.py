"""Image decoding and Darknet's exact resize / letterbox."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.errors import ImageError
from engine.darknet.image import image_to_array, letterbox, letterbox_size, open_image, preprocess, resize_image
from helpers import IMAGES, REFERENCE


def resize_naive(im: np.ndarray, w: int, h: int) -> np.ndarray:
    """Darknet's resize_image loop, transcribed (float32 arithmetic)."""
    c, ih, iw = im.shape
    f = np.float32
    part = np.zeros((c, ih, w), f)
    resized = np.zeros((c, h, w), f)
    w_scale = f(iw - 1) / f(w - 1)
    h_scale = f(ih - 1) / f(h - 1)
    for k in range(c):
        for r in range(ih):
            for col in range(w):
                if col == w - 1 or iw == 1:
                    val = im[k, r, iw - 1]
                else:
                    sx = f(col) * w_scale
                    ix = int(sx)
                    dx = sx - f(ix)
                    val = (f(1) - dx) * im[k, r, ix] + dx * im[k, r, ix + 1]
                part[k, r, col] = val
    for k in range(c):
        for r in range(h):
            sy = f(r) * h_scale
            iy = int(sy)
            dy = sy - f(iy)
            resized[k, r] = (f(1) - dy) * part[k, iy]
            if r == h - 1 or ih == 1:
                continue
            resized[k, r] += dy * part[k, iy + 1]
    return resized


@pytest.mark.parametrize("src, dst", [((7, 5), (13, 9)), ((16, 3), (416, 11)), ((31, 31), (17, 20)), ((1, 4), (5, 3))])
def test_resize_equals_darknet_loop_bit_for_bit(src, dst):
    x = np.random.default_rng(1).random((2, *src), dtype=np.float32)
    np.testing.assert_array_equal(resize_image(x, dst[1], dst[0]), resize_naive(x, dst[1], dst[0]))


def test_resize_last_row_quirk_for_height_16():
    y = resize_image(np.ones((1, 16, 4), np.float32), 4, 416)
    assert y[0, -1, 0] < 1e-5 and y[0, 0, 0] == 1.0


def test_letterbox_equals_reference_input_given_opencv_decoded_pixels():
    import cv2
    ref = np.load(REFERENCE / "opencv-yolov3-tiny-dog.npz")["input"]
    rgb = cv2.cvtColor(cv2.imread(str(IMAGES / "dog.jpg")), cv2.COLOR_BGR2RGB)
    x = image_to_array(rgb)
    ours = letterbox(x, 416, 416)
    assert np.abs(ours - ref).max() <= 1.2e-7  # bit-exact or 1 ulp, as the reference README states


def test_letterbox_geometry_and_grey_fill():
    assert letterbox_size(768, 576, 416, 416) == (416, 312)
    assert letterbox_size(352, 448, 416, 416) == (326, 416)
    pre = preprocess(IMAGES / "dog.jpg", 416, 416)
    assert pre.x.shape == (3, 416, 416) and pre.inner_size() == (416, 312)
    assert (pre.x[:, :52] == 0.5).all() and (pre.x[:, 364:] == 0.5).all()
    stretch = preprocess(IMAGES / "dog.jpg", 416, 416, "stretch")
    assert stretch.inner_size() == (416, 416) and not (stretch.x[:, :52] == 0.5).all()


def test_pillow_decode_is_within_a_few_levels_of_opencv():
    import cv2
    ours = np.asarray(open_image(IMAGES / "dog.jpg")).astype(int)
    theirs = cv2.cvtColor(cv2.imread(str(IMAGES / "dog.jpg")), cv2.COLOR_BGR2RGB).astype(int)
    assert np.abs(ours - theirs).max() <= 3


def _png(mode: str, size=(5, 4), color=None) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="TIFF" if mode == "CMYK" else "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode, color, rgb", [("L", 128, (128, 128, 128)), ("RGBA", (10, 20, 30, 0), (10, 20, 30)),
                                              ("CMYK", (0, 0, 0, 0), (255, 255, 255)), ("I;16", 65535, (255, 255, 255))])
def test_other_modes_become_rgb(mode, color, rgb):
    x = image_to_array(_png(mode, color=color))
    assert x.shape == (3, 4, 5)
    assert tuple(np.round(x[:, 0, 0] * 255).astype(int)) == rgb


def test_one_pixel_image_letterboxes():
    pre = preprocess(_png("RGB", (1, 1), (255, 0, 0)), 416, 416)
    assert pre.x.shape == (3, 416, 416) and np.isfinite(pre.x).all()


@pytest.mark.parametrize("data, fragment", [
    (b"not an image at all", "not a decodable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "not a decodable image|corrupt"),
])
def test_corrupt_images_raise_image_error(data, fragment):
    with pytest.raises(ImageError, match=fragment) as err:
        open_image(data, name="x.png")
    assert " at 0x" not in str(err.value)      # no BytesIO repr: the message is the same on every run


def test_truncated_jpeg_is_an_image_error():
    data = (IMAGES / "dog.jpg").read_bytes()
    with pytest.raises(ImageError, match="dog-cut.jpg"):
        open_image(data[: len(data) // 3], name="dog-cut.jpg")


def test_huge_declared_size_is_refused_before_decoding():
    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, format="PNG")  # compresses to a few hundred KB
    with pytest.raises(ImageError, match="bomb.png: .*400000000 pixels.*(decompression bomb|exceeds the limit)"):
        open_image(buf.getvalue(), name="bomb.png")


def test_missing_file_is_named():
    with pytest.raises(ImageError, match="nope.jpg: cannot open image"):
        open_image("nope.jpg")


@pytest.mark.parametrize("size", [(200, 100), (90, 160)])
def test_the_letterbox_undone_gives_the_image_back(size):
    """Preprocessed.inner / to_image: the image's part of the network input (borders computed here by
    hand: 200x100 on 64x64 is 64x32 at row 16; 90x160 is 36x64 at column 14) and the photo at its size."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) * 255 // (w + h - 2)], axis=2).astype(np.uint8)
    pre = preprocess(rgb, 64, 64)
    (iw, ih), (top, left) = ((64, 32), (16, 0)) if w > h else ((36, 64), (0, 14))
    inner = pre.inner()
    np.testing.assert_array_equal(inner, pre.x[:, top:top + ih, left:left + iw])
    np.testing.assert_array_equal(inner, resize_image(image_to_array(rgb), iw, ih))   # what letterbox put there
    back = pre.to_image()
    assert back.size == (w, h) and back.mode == "RGB"
    assert np.abs(np.asarray(back, np.float64) - rgb).mean() < 4            # a smooth image: a few levels off
    stretch = preprocess(rgb, 64, 64, "stretch")
    assert stretch.inner() is stretch.x and stretch.to_image().size == (w, h)
