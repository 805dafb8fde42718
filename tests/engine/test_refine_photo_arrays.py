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
