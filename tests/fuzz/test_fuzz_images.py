"""Hypothesis fuzzing of image decoding: mutated small files of every common format must decode to
RGB or raise ImageError (Pillow's own exceptions never escape). Derandomized, 300 examples."""
from __future__ import annotations

import io
import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.errors import ImageError
from engine.darknet.image import image_to_array, open_image

FUZZ = settings(deadline=None, derandomize=True, database=None, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _encode(fmt: str, mode: str) -> bytes:
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buf, fmt)
    return buf.getvalue()


SEEDS = {f"{fmt}-{mode}": _encode(fmt, mode) for fmt, mode in [
    ("PNG", "RGB"), ("PNG", "P"), ("PNG", "LA"), ("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("GIF", "P"),
    ("BMP", "RGB"), ("TIFF", "RGB"), ("TIFF", "CMYK"), ("WEBP", "RGB"), ("PPM", "RGB"), ("TGA", "RGB")]}


@st.composite
def mutated_image(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "set", "insert"]))
        if op == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif op == "set" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        else:
            k = draw(st.integers(0, len(data)))
            data[k:k] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@FUZZ
@given(mutated_image())
def test_mutated_images_decode_to_rgb_or_raise_image_error(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about skipped TIFF tags etc.
        try:
            im = open_image(data)
        except ImageError:
            return
        assert im.mode == "RGB" and im.size[0] >= 1 and im.size[1] >= 1
        x = image_to_array(data)
    assert x.shape == (3, im.size[1], im.size[0]) and x.dtype == np.float32
