"""FLOAT outputs against OpenCV's Darknet importer: stored reference blobs and a live run."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

import engine
from helpers import CFG_DIR, REFERENCE, TINY_CFG, TINY_WEIGHTS, max_rel_diff, opencv_layer_outputs

TOL = 1e-4  # max|diff| <= 1e-4 * max(1, max|ref|)


def test_every_yolov3_tiny_layer_matches_stored_opencv_reference(tiny):
    ref = np.load(REFERENCE / "opencv-yolov3-tiny-dog-layers.npz")
    outs = tiny.forward(ref["input"])
    compared = 0
    for i, y in enumerate(outs):
        key = f"layer{i}"
        if key in ref.files:
            assert y.shape == ref[key].shape, f"layer {i}"
            assert max_rel_diff(y, ref[key]) <= TOL, f"layer {i}: {max_rel_diff(y, ref[key]):.2e}"
            compared += 1
    assert compared == 22  # all but the two [yolo] layers, which OpenCV reports in its own format


def test_yolo_layers_match_opencv_region_rows(tiny):
    """OpenCV's yolo rows: cx, cy, w, h (of the 416 input), objectness, obj*sigmoid(class) (0 if <= 0.2)."""
    ref = np.load(REFERENCE / "opencv-yolov3-tiny-dog-layers.npz")
    outs = tiny.forward(ref["input"])
    for idx in (16, 23):
        layer = tiny.layers[idx]
        y = outs[idx].reshape(3, 85, *outs[idx].shape[1:])          # (A, 85, H, W)
        rows = ref[f"layer{idx}_opencv_region"].reshape(y.shape[2], y.shape[3], 3, 85)
        obj = y[:, 4].transpose(1, 2, 0)
        np.testing.assert_allclose(obj, rows[..., 4], atol=2e-5, err_msg=f"layer {idx} objectness")
        gx = (np.arange(y.shape[3])[None, :, None] + y[:, 0].transpose(1, 2, 0)) / y.shape[3]
        np.testing.assert_allclose(gx, rows[..., 0], atol=2e-5, err_msg=f"layer {idx} cx")
        aw = np.array([layer.anchors[2 * m] for m in layer.mask])
        np.testing.assert_allclose(np.exp(outs[idx - 1].reshape(3, 85, *y.shape[2:])[:, 2]).transpose(1, 2, 0)
                                   * aw / 416, rows[..., 2], rtol=1e-4, err_msg=f"layer {idx} w")
        scores = obj[..., None] * y[:, 5:].transpose(2, 3, 0, 1)
        scores = np.where(scores > 0.2, scores, 0)
        np.testing.assert_allclose(scores, rows[..., 5:], atol=2e-5, err_msg=f"layer {idx} class scores")


@pytest.mark.parametrize("image", ["dog", "horses", "person", "scream"])
def test_head_outputs_match_opencv_on_each_photo(tiny, image):
    ref = np.load(REFERENCE / f"opencv-yolov3-tiny-{image}.npz")
    outs = tiny.forward(ref["input"])
    for idx in (15, 22):
        assert max_rel_diff(outs[idx], ref[f"layer{idx}"]) <= TOL, f"{image} layer {idx}"


def test_yolov3_tiny_matches_live_opencv_on_every_layer(tiny):
    x = np.random.default_rng(5).random(tiny.input_shape, dtype=np.float32)
    ref = opencv_layer_outputs(TINY_CFG, TINY_WEIGHTS, x)
    outs = tiny.forward(x)
    assert set(ref) == set(range(24)) - {16, 23}
    for i, r in ref.items():
        assert max_rel_diff(outs[i], r) <= TOL, f"layer {i}"


@pytest.mark.parametrize("size", ["320", "256x192"])
def test_yolov3_tiny_at_another_input_size_matches_live_opencv(size):
    """engine.load(..., size=) against OpenCV fed a blob of that size (its importer follows the blob)."""
    import engine
    model = engine.load(TINY_CFG, weights=TINY_WEIGHTS, size=size)
    w, h = (int(v) for v in (size.split("x") if "x" in size else (size, size)))
    assert model.input_shape == (3, h, w)
    x = np.random.default_rng(6).random(model.input_shape, dtype=np.float32)
    ref = opencv_layer_outputs(TINY_CFG, TINY_WEIGHTS, x)
    outs = model.forward(x)
    assert set(ref) == set(range(24)) - {16, 23}
    for i, r in ref.items():
        assert outs[i].shape == r.shape and max_rel_diff(outs[i], r) <= TOL, f"layer {i}"


def _route_view(model, outs, ref, i):
    """OpenCV can return a recycled buffer for an output that only a later [route] reads; then check
    layer i through the part of that route's (matching) output that holds it."""
    for layer in model.layers[i + 1:]:
        if layer.kind == "route" and i in layer.inputs and layer.index in ref:
            if max_rel_diff(outs[layer.index], ref[layer.index]) <= TOL:
                start = 0
                for src, shape in zip(layer.inputs, layer.in_shapes):
                    c = shape[0] // layer.groups
                    if src == i:
                        lo = layer.group_id * c
                        return ref[layer.index][start:start + c], outs[i][lo:lo + c]
                    start += c
    return None


LIVE_CFGS = ["yolov2-tiny.cfg", "yolov2-tiny-voc.cfg", "yolov2.cfg", "yolov2-voc.cfg", "yolov3.cfg",
             "yolov3-spp.cfg", "yolov3-voc.cfg", "yolov3-tiny-prn.cfg", "yolov4-tiny.cfg", "yolov4-tiny-3l.cfg",
             "yolov4.cfg", "darknet.cfg", "darknet19.cfg", "darknet53.cfg", "extraction.cfg", "tiny.cfg",
             "alexnet.cfg"]


@pytest.mark.parametrize("name", LIVE_CFGS)
def test_random_weight_models_match_live_opencv_on_every_layer(name):
    cfg = CFG_DIR / name
    model = engine.load(cfg, random_weights=1)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "random.weights"
        model.save_weights(weights)
        x = np.random.default_rng(0).random(model.input_shape, dtype=np.float32)
        ref = opencv_layer_outputs(cfg, weights, x)
    outs = model.forward(x)
    assert len(ref) >= len(model.layers) - 3 * sum(l.kind in ("yolo", "region") for l in model.layers) - 1
    for i, r in ref.items():
        y = outs[i]
        assert y.size == r.size, f"{name} layer {i}: {y.shape} vs OpenCV {r.shape}"
        if max_rel_diff(y, r) > TOL:
            via = _route_view(model, outs, ref, i)
            assert via is not None, f"{name} layer {i}: {max_rel_diff(y, r):.2e} and no route to cross-check"
            assert max_rel_diff(via[1], via[0]) <= TOL, f"{name} layer {i} (via route)"


def test_the_tolerance_measure_fails_on_inf_and_nan():
    """A NaN measure would make `> TOL` False and let the live test above pass a garbage layer."""
    y = np.ones(4, np.float32)
    assert max_rel_diff(y, y) == 0.0
    for bad in (np.inf, -np.inf, np.nan):
        r = y.copy()
        r[2] = bad
        assert max_rel_diff(y, r) > TOL and max_rel_diff(r, y) > TOL
