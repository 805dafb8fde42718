"""A validation set made from a few photos: deterministic variants nobody calibrates on.

Quantization choices (method, refinements, layers kept FLOAT) are tuned on these, never on the
photos alone: crops, a mirror, scale, brightness / contrast, noise, JPEG recompression, blur and
2x2 mosaics of the photos. The variants move objects, sizes and intensity statistics the way other
photos do, so a setting that only fits the calibration photos shows up here.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterable

from PIL import Image, ImageEnhance, ImageFilter

from engine.calib.collect import image_list
from engine.darknet.image import ImageLike, open_image
from engine.imaging.augment import add_noise

KINDS = ("flop", "crop", "corner", "scale", "dark", "bright", "contrast", "noise", "jpeg", "blur")


@dataclass
class Variant:
    name: str            # "<photo>:<kind>" or "mosaic<k>"
    image: Image.Image


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def variant(im: Image.Image, kind: str, seed: int = 0) -> Image.Image:
    """One named variant of an RGB image (see KINDS); raises ValueError for an unknown kind."""
    w, h = im.size
    if kind == "flop":
        return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if kind == "crop":                                   # centre 70%: objects larger, some cut
        return im.crop((int(0.15 * w), int(0.15 * h), int(0.85 * w), int(0.85 * h)))
    if kind == "corner":                                 # a different 75% window
        return im.crop((int(0.25 * w), int(0.2 * h), w, int(0.95 * h)))
    if kind == "scale":                                  # down and back up: lost detail
        return im.resize((max(1, w // 3), max(1, h // 3)), Image.Resampling.BILINEAR).resize((w, h))
    if kind == "dark":
        return ImageEnhance.Brightness(im).enhance(0.55)
    if kind == "bright":
        return ImageEnhance.Brightness(im).enhance(1.4)
    if kind == "contrast":
        return ImageEnhance.Contrast(im).enhance(0.6)
    if kind == "noise":
        return add_noise(im, 12.0, seed)
    if kind == "jpeg":
        return _jpeg(im, 15)
    if kind == "blur":
        return im.filter(ImageFilter.GaussianBlur(2.5))
    raise ValueError(f"variant kind {kind!r}: expected one of {', '.join(KINDS)}")


def mosaic(images: list[Image.Image], size: int = 832, order: Iterable[int] = (0, 1, 2, 3)) -> Image.Image:
    """A 2x2 grid of the images (each resized to fill its cell), cycling if fewer than 4."""
    cell = size // 2
    out = Image.new("RGB", (size, size))
    for slot, k in enumerate(order):
        out.paste(images[k % len(images)].resize((cell, cell), Image.Resampling.BILINEAR),
                  ((slot % 2) * cell, (slot // 2) * cell))
    return out


def variants(source: str | list[ImageLike], kinds: Iterable[str] = KINDS, mosaics: int = 2) -> list[Variant]:
    """Variants of every photo in `source` (folder, file or list), then `mosaics` 2x2 mosaics."""
    items = image_list(source)
    photos = [open_image(i) for i in items]
    names = [getattr(i, "stem", None) or getattr(i, "name", None) or f"image{k}" for k, i in enumerate(items)]
    out = [Variant(f"{n}:{kind}", variant(im, kind, seed=k)) for k, (n, im) in enumerate(zip(names, photos))
           for kind in kinds]
    orders = [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2), (2, 0, 3, 1)]
    out += [Variant(f"mosaic{m}", mosaic(photos, order=orders[m % 4])) for m in range(mosaics)]
    return out


def second_variants(source: str | list[ImageLike]) -> list[Variant]:
    """A differently parameterised set (other crop windows, intensities, noise seeds, JPEG quality, blur
    radius, rotations and mosaic orders): a choice made on `variants` should carry over to it."""
    items = image_list(source)
    photos = [open_image(i) for i in items]
    names = [getattr(i, "stem", None) or getattr(i, "name", None) or f"image{k}" for k, i in enumerate(items)]
    out = []
    for k, (n, im) in enumerate(zip(names, photos)):
        w, h = im.size
        kinds = {
            "crop2": im.crop((0, int(0.1 * h), int(0.8 * w), h)),
            "dark2": ImageEnhance.Brightness(im).enhance(0.7),
            "bright2": ImageEnhance.Brightness(im).enhance(1.25),
            "contrast2": ImageEnhance.Contrast(im).enhance(1.3),
            "noise2": add_noise(im, 8.0, 100 + k),
            "jpeg2": _jpeg(im, 30),
            "blur2": im.filter(ImageFilter.GaussianBlur(1.5)),
            "rotate": im.rotate(6, resample=Image.Resampling.BILINEAR, expand=False),
            "scale2": im.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BILINEAR).resize((w, h)),
        }
        out += [Variant(f"{n}:{kind}", v) for kind, v in kinds.items()]
    orders = [(2, 3, 0, 1), (0, 2, 1, 3)]
    out += [Variant(f"mosaic2-{m}", mosaic(photos, size=640, order=orders[m])) for m in range(2)]
    return out


def random_variants(source: str | list[ImageLike], per_photo: int, seed: int) -> list[Variant]:
    """`per_photo` random compositions of every photo, a deterministic function of `seed`: a crop window of
    60-100% of each side, a mirror, a down-up scale, brightness / contrast, noise, JPEG, blur and a small
    rotation, each drawn independently. Two seeds give two disjoint sets: one to fit a setting on, one to
    check it on."""
    import numpy as np
    rng = np.random.default_rng(seed)
    items = image_list(source)
    photos = [open_image(i) for i in items]
    names = [getattr(i, "stem", None) or getattr(i, "name", None) or f"image{k}" for k, i in enumerate(items)]
    out = []
    for n, im in zip(names, photos):
        w, h = im.size
        for j in range(per_photo):
            fw, fh = rng.uniform(0.6, 1.0, 2)
            x0, y0 = rng.uniform(0, 1 - fw) * w, rng.uniform(0, 1 - fh) * h
            v = im.crop((int(x0), int(y0), int(x0 + fw * w), int(y0 + fh * h)))
            if rng.random() < 0.5:
                v = v.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if rng.random() < 0.3:
                f = rng.uniform(1.5, 3.0)
                v = v.resize((max(1, int(v.width / f)), max(1, int(v.height / f))),
                             Image.Resampling.BILINEAR).resize(v.size)
            v = ImageEnhance.Brightness(v).enhance(rng.uniform(0.6, 1.4))
            v = ImageEnhance.Contrast(v).enhance(rng.uniform(0.7, 1.3))
            if rng.random() < 0.3:
                v = v.rotate(rng.uniform(-8, 8), resample=Image.Resampling.BILINEAR, expand=False)
            if rng.random() < 0.3:
                v = v.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.0)))
            if rng.random() < 0.5:
                v = add_noise(v, rng.uniform(3, 12), int(rng.integers(1 << 30)))
            if rng.random() < 0.5:
                v = _jpeg(v, int(rng.integers(15, 90)))
            out.append(Variant(f"{n}:r{seed}-{j}", v))
    return out


def fitting_images(source: str | list[ImageLike], per_photo: int = 20, seed: int = 1) -> list[Variant]:
    """The calibration photos themselves and `per_photo` random compositions of each (seed 1): what a setting
    measured through the INT network (engine/quant/refine/margin.py) is fitted on. Validation sets use other
    seeds and the named variants above."""
    items = image_list(source)
    names = [getattr(i, "stem", None) or getattr(i, "name", None) or f"image{k}" for k, i in enumerate(items)]
    return [Variant(n, open_image(i)) for n, i in zip(names, items)] + random_variants(items, per_photo, seed)
