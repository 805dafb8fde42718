"""Image augmentation with Pillow: one image -> original, rotate, blur, flip, flop (+ extras).

Conventions (ImageMagick's names): `flip` mirrors top-bottom (`Image.Transpose.FLIP_TOP_BOTTOM`),
`flop` mirrors left-right (`FLIP_LEFT_RIGHT`). `rotate` turns counter-clockwise by `angle`
degrees about the centre, keeps the size (corners filled black) with bicubic resampling; `blur`
is a Gaussian blur of `blur_radius` pixels. Optional extras: `brightness` (factor, 1 = same),
`noise` (Gaussian, sigma in 0..255 units, seeded), `scale` (factor, bilinear resize).
Every output is an 8-bit RGB image and is a deterministic function of the inputs.
"""
from __future__ import annotations

import io
from typing import TYPE_CHECKING, Mapping

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from engine.darknet.image import ImageLike, open_image

if TYPE_CHECKING:  # engine.workspace.store is only needed by save_augmented's callers
    from engine.workspace.store import Entry, Workspace

BASIC = ("original", "rotate", "blur", "flip", "flop")
ROTATE_RESAMPLE = Image.Resampling.BICUBIC
SCALE_RESAMPLE = Image.Resampling.BILINEAR


def augment(image: ImageLike, *, angle: float = 15.0, blur_radius: float = 2.0,
            brightness: float | None = None, noise_sigma: float | None = None, seed: int = 0,
            scale: float | None = None) -> dict[str, Image.Image]:
    """Return {name: RGB image}: `BASIC` keys always, plus `brightness`/`noise`/`scale` if given.

    image: a path, encoded bytes, PIL image or uint8 array (decoded with `open_image`, so
    bombs and corrupt files are refused). noise: `clip(rint(x + N(0, sigma)), 0, 255)` with
    `numpy.random.default_rng(seed)`.
    Raises: ImageError for an unusable image; ValueError for a negative radius/sigma or a scale
    that gives an empty image.
    """
    if blur_radius < 0:
        raise ValueError(f"blur_radius={blur_radius}: expected >= 0")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"image array: expected uint8 (H, W) or (H, W, 3|4), got {image.dtype} {image.shape}")
        image = Image.fromarray(image if image.ndim == 2 else np.ascontiguousarray(image[..., :3]))
    im = open_image(image)
    out = {
        "original": im.copy(),
        "rotate": im.rotate(angle, resample=ROTATE_RESAMPLE, expand=False, fillcolor=(0, 0, 0)),
        "blur": im.filter(ImageFilter.GaussianBlur(blur_radius)),
        "flip": im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
        "flop": im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    }
    if brightness is not None:
        out["brightness"] = ImageEnhance.Brightness(im).enhance(brightness)
    if noise_sigma is not None:
        out["noise"] = add_noise(im, noise_sigma, seed)
    if scale is not None:
        size = (round(im.width * scale), round(im.height * scale))
        if min(size) < 1:
            raise ValueError(f"scale={scale}: gives an empty {size[0]}x{size[1]} image from {im.width}x{im.height}")
        out["scale"] = im.resize(size, SCALE_RESAMPLE)
    return out


def add_noise(im: Image.Image, sigma: float, seed: int = 0) -> Image.Image:
    """Additive Gaussian noise, rounded half-to-even and saturated to 0..255."""
    if sigma < 0:
        raise ValueError(f"noise_sigma={sigma}: expected >= 0")
    x = np.asarray(im, dtype=np.float64)
    noise = np.random.default_rng(seed).normal(0.0, sigma, size=x.shape)
    return Image.fromarray(np.clip(np.rint(x + noise), 0, 255).astype(np.uint8), "RGB")


def to_png(im: Image.Image | np.ndarray, max_side: int | None = None, compress_level: int = 6) -> bytes:
    """PNG bytes of `im` (a PIL image or a uint8 (H, W) / (H, W, 3) array), shrunk to fit `max_side` if given.

    Views redraw on every step, so they ask for `compress_level=1` (zlib's fastest)."""
    if isinstance(im, np.ndarray):
        im = Image.fromarray(im)
    if max_side is not None and max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def save_augmented(workspace: Workspace, name: str, images: Mapping[str, Image.Image], *,
                   stem: str = "img", parent: str | None = None,
                   params: Mapping[str, object] | None = None, overwrite: bool = False) -> Entry:
    """Store an augmentation set as an `imageset` entry of PNG files `<stem>-<key>.png`.

    PNG keeps the pixels exact, so a calibration run sees what the preview showed. `parent` is
    the source image's entry (if it is one), `params` the augmentation settings (kept in meta).
    Returns the new `Entry`. Raises: WorkspaceError (bad name, exists, ...).
    """
    files = {f"{stem}-{key}.png": to_png(im) for key, im in images.items()}
    return workspace.save_bytes(name, "imageset", files, source=parent or stem, method="augment",
                                parent=parent, meta={"augment": dict(params or {})}, overwrite=overwrite)
