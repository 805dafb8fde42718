"""The refinements' FLOAT passes take a photo given as an (H, W, 3) array as calibration does: as an image
to letterbox, not as a network input (compare(refine=...) over images from memory raised "input tensor has
shape (576, 768, 3); this model expects (3, 416, 416)")."""
from __future__ import annotations

import numpy as np
from PIL import Image

from helpers import IMAGES

from engine.calib.floats import float_outputs
from engine.quant.refine.bias import bias_correction
from engine.quant.refine.equalize import channel_maxima

PHOTO = sorted(IMAGES.glob("*.jpg"))[0]


def photo_array() -> np.ndarray:
    with Image.open(PHOTO) as im:
        return np.asarray(im.convert("RGB"))


def test_float_outputs_of_a_photo_array_equal_those_of_its_file(tiny):
    arr = photo_array()
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8
    a, b = float_outputs(tiny, [arr]), float_outputs(tiny, [PHOTO])
    assert len(a) == len(b) == 1 and a.images[0].keys() == b.images[0].keys()
    for k in a.images[0]:
        np.testing.assert_array_equal(a.images[0][k], b.images[0][k], err_msg=f"tensor {k}")
    x = tiny.preprocess(PHOTO).x                    # a network input array stays one
    np.testing.assert_array_equal(float_outputs(tiny, [x]).images[0][-1], x)


def test_bias_correction_and_channel_maxima_take_photo_arrays(tiny, tiny_q):
    arr = photo_array()
    a = bias_correction(tiny, tiny_q, [arr])
    b = bias_correction(tiny, tiny_q, [PHOTO])
    assert a.layers.keys() == b.layers.keys()
    for i in a.layers:
        np.testing.assert_array_equal(a.layers[i].b_q, b.layers[i].b_q, err_msg=f"layer {i}")
    ma, mb = channel_maxima(tiny, [arr], [0, 2]), channel_maxima(tiny, [PHOTO], [0, 2])
    for p in (0, 2):
        np.testing.assert_array_equal(ma[p], mb[p])


def test_method_auto_probes_a_photo_array_as_its_file():
    # auto's probe runs read items themselves: quantize(method="auto", images=[array]) (and compare over images
    # from memory with "auto" among the methods) raised "input tensor has shape (576, 768, 3)"
    import engine
    from engine.calib.collect import collect
    from engine.quant.autoquant import quantize
    from helpers import TINY_CFG, TINY_WEIGHTS
    small = engine.load(TINY_CFG, weights=TINY_WEIGHTS, size=160)       # auto makes ~80 INT runs: keep them cheap
    stats = collect(small, [PHOTO], progress=False)
    a = quantize(small, stats, "auto", images=[photo_array()], probe_images=1)
    b = quantize(small, stats, "auto", images=[PHOTO], probe_images=1)
    assert a.meta["auto"] == b.meta["auto"] and a.scales == b.scales
    x = small.preprocess(PHOTO).x                   # a network input array stays one
    assert quantize(small, stats, "auto", images=[x], probe_images=1).scales == b.scales


def test_the_margins_fitting_images_and_the_margin_take_photo_arrays():
    # the margin fits on augmentations of the calibration photos (valset.fitting_images), which opened each item
    # as a file: compare(refine=[..., "margin"]) over images from memory, the best configuration measured,
    # raised "cannot read an image from a ndarray" where 4b4f75d's tests covered bias, CLE and float_outputs only
    import engine
    from engine.calib.collect import collect
    from engine.quant.qmodel import quantize_model
    from engine.quant.refine.pipeline import refine_after
    from engine.quant.valset import fitting_images
    from helpers import TINY_CFG, TINY_WEIGHTS
    a, b = fitting_images([photo_array()], per_photo=3), fitting_images([PHOTO], per_photo=3)
    assert len(a) == len(b) == 4
    for va, vb in zip(a, b):
        np.testing.assert_array_equal(np.asarray(va.image), np.asarray(vb.image), err_msg=vb.name)
    small = engine.load(TINY_CFG, weights=TINY_WEIGHTS, size=160)
    qm = quantize_model(small, collect(small, [PHOTO], progress=False), "minmax")
    ma = refine_after(small, qm, ("margin",), [photo_array()], None, "letterbox", 2.0)
    mb = refine_after(small, qm, ("margin",), [PHOTO], None, "letterbox", 2.0)
    assert ma.meta["head_margin"] == mb.meta["head_margin"]
    for i in qm.layers:
        np.testing.assert_array_equal(ma.layers[i].b_q, mb.layers[i].b_q, err_msg=f"layer {i}")


def test_an_image_array_opens_as_the_picture_it_holds():
    from engine.darknet.image import image_to_array, open_image
    arr = photo_array()
    np.testing.assert_array_equal(np.asarray(open_image(arr)), arr)                  # uint8: exact
    x = image_to_array(PHOTO)                                                        # float32 (3, H, W)
    np.testing.assert_array_equal(np.asarray(open_image(x)), arr)
    rgba = np.dstack([arr, np.full(arr.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(np.asarray(open_image(rgba)), arr)                 # alpha dropped


def test_monte_carlo_over_network_input_arrays_runs(tiny, tiny_q):
    # its source images went through Image.fromarray, which raised a raw TypeError for a (3, H, W) float32 array
    from engine.scale.montecarlo import run_montecarlo
    x = tiny.preprocess(PHOTO).x
    here = run_montecarlo(tiny, tiny_q, [x], n_variants=2, modes=("int",))
    assert len(here.rows) == 2 and all("int" in r for r in here.rows)
