"""Augmentation: pixel-exact against Pillow's own operations on the real photos, independent NumPy
checks of the geometric ones, determinism, and saving a set into the workspace."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from engine.imaging.augment import BASIC, add_noise, augment, save_augmented, to_png
from engine.errors import ImageError
from engine.workspace import Workspace, WorkspaceError
from helpers import IMAGES

PHOTOS = sorted(IMAGES.glob("*.jpg"))


def pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"))


def test_photos_are_present():
    assert [p.name for p in PHOTOS] == ["dog.jpg", "horses.jpg", "person.jpg", "scream.jpg"]


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.stem)
@pytest.mark.parametrize("angle, radius", [(15.0, 2.0), (-37.5, 0.7)])
def test_outputs_equal_pillow_operations(path, angle, radius):
    out = augment(path, angle=angle, blur_radius=radius)
    ref = Image.open(path).convert("RGB")
    assert list(out) == list(BASIC)
    expected = {
        "original": ref,
        "rotate": ref.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0)),
        "blur": ref.filter(ImageFilter.GaussianBlur(radius)),
        "flip": ref.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
        "flop": ref.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    }
    for key, im in out.items():
        assert (im.mode, im.size) == ("RGB", ref.size), key
        np.testing.assert_array_equal(pixels(im), pixels(expected[key]), err_msg=f"{path.name} {key}")


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.stem)
def test_flip_is_top_bottom_and_flop_is_left_right(path):
    out = augment(path)
    x = pixels(out["original"])
    np.testing.assert_array_equal(pixels(out["flip"]), x[::-1, :, :])
    np.testing.assert_array_equal(pixels(out["flop"]), x[:, ::-1, :])
    assert not np.array_equal(x[::-1], x)  # the photos are not symmetric, so the check has teeth


def test_rotate_direction_and_exact_quarter_turns():
    square = pixels(Image.open(IMAGES / "dog.jpg").convert("RGB").crop((0, 0, 400, 400)))
    out = augment(square, angle=90)
    np.testing.assert_array_equal(pixels(out["rotate"]), np.rot90(square, 1))  # counter-clockwise
    x = pixels(Image.open(IMAGES / "horses.jpg"))
    np.testing.assert_array_equal(pixels(augment(x, angle=180)["rotate"]), x[::-1, ::-1])
    np.testing.assert_array_equal(pixels(augment(x, angle=0)["rotate"]), x)


def test_rotate_keeps_size_and_fills_corners_black():
    x = np.full((100, 200, 3), 255, np.uint8)
    r = pixels(augment(x, angle=30)["rotate"])
    assert r.shape == (100, 200, 3)
    assert (r[0, 0] == 0).all() and (r[-1, -1] == 0).all()   # corners rotated out
    assert (r[50, 100] == 255).all()                         # centre stays


def test_blur_radius_zero_is_identity_and_blur_smooths():
    x = pixels(Image.open(IMAGES / "person.jpg"))
    np.testing.assert_array_equal(pixels(augment(x, blur_radius=0)["blur"]), x)
    blurred = pixels(augment(x, blur_radius=3)["blur"]).astype(float)
    assert np.abs(np.diff(blurred, axis=1)).mean() < 0.6 * np.abs(np.diff(x.astype(float), axis=1)).mean()


def test_extras_match_pillow_and_defaults_add_nothing():
    ref = Image.open(IMAGES / "scream.jpg").convert("RGB")
    out = augment(ref, brightness=1.4, noise_sigma=8, seed=3, scale=0.5)
    assert list(out) == [*BASIC, "brightness", "noise", "scale"]
    np.testing.assert_array_equal(pixels(out["brightness"]), pixels(ImageEnhance.Brightness(ref).enhance(1.4)))
    np.testing.assert_array_equal(pixels(out["scale"]), pixels(ref.resize((176, 224), Image.Resampling.BILINEAR)))
    np.testing.assert_array_equal(pixels(augment(ref, brightness=1.0)["brightness"]), pixels(ref))
    assert list(augment(ref)) == list(BASIC)


def test_noise_is_seeded_gaussian_and_saturated():
    grey = Image.new("RGB", (200, 150), (128, 128, 128))
    a, b, c = add_noise(grey, 10, seed=1), add_noise(grey, 10, seed=1), add_noise(grey, 10, seed=2)
    np.testing.assert_array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))
    d = pixels(a).astype(float) - 128
    assert abs(d.mean()) < 0.3 and 9.5 < d.std() < 10.5
    rng = np.random.default_rng(1).normal(0, 10, size=(150, 200, 3))
    np.testing.assert_array_equal(pixels(a), np.clip(np.rint(128 + rng), 0, 255).astype(np.uint8))
    white = pixels(add_noise(Image.new("RGB", (50, 50), (250, 250, 250)), 30, seed=0))
    assert white.max() == 255 and white.dtype == np.uint8


def test_deterministic_across_calls():
    a = augment(IMAGES / "dog.jpg", angle=12.3, blur_radius=1.1, noise_sigma=5)
    b = augment(IMAGES / "dog.jpg", angle=12.3, blur_radius=1.1, noise_sigma=5)
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="blur_radius=-1"):
        augment(IMAGES / "dog.jpg", blur_radius=-1)
    with pytest.raises(ValueError, match="empty"):
        augment(IMAGES / "dog.jpg", scale=0.0001)
    with pytest.raises(ImageError, match="not a decodable image"):
        augment(b"not an image")
    with pytest.raises(ValueError, match="uint8"):
        augment(np.zeros((4, 4, 3), np.float32))


def test_save_augmented_stores_lossless_imageset(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.import_path(IMAGES / "dog.jpg")
    out = augment(ws.path_of("dog"), angle=20, blur_radius=1.5)
    e = save_augmented(ws, "dog-aug", out, stem="dog", parent="dog", params={"angle": 20, "blur_radius": 1.5})
    assert (e.kind, e.parent, e.method) == ("imageset", "dog", "augment")
    assert e.files == tuple(sorted(f"dog-{k}.png" for k in BASIC))
    assert e.meta == {"augment": {"angle": 20, "blur_radius": 1.5}}
    for key, im in out.items():
        stored = Image.open(ws.path_of("dog-aug", f"dog-{key}.png"))
        np.testing.assert_array_equal(pixels(stored), pixels(im), err_msg=key)
    with pytest.raises(WorkspaceError, match="already exists"):
        save_augmented(ws, "dog-aug", out, stem="dog")


def test_to_png_thumbnail_fits():
    data = to_png(Image.open(IMAGES / "horses.jpg"), max_side=160)
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG" and max(im.size) == 160
