"""Darknet `.weights` writer for edited float models: OpenCV's importer and our loader read it back.

OpenCV (`cv2.dnn.readNetFromDarknet`, opencv-python-headless < 5) must give the FLOAT outputs of the
edited model (max|diff| <= 1e-4 * max(1, max|ref|) per layer); our engine must reload every
parameter bit for bit, and re-writing must reproduce the file byte for byte.
"""
from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.model import from_cfg_text
from engine.darknet.weights import WeightsHeader
from helpers import TINY_CFG, TINY_WEIGHTS, max_rel_diff, opencv_layer_outputs

TOL = 1e-4


def assert_same_params(a, b) -> None:
    assert len(a.params) == len(b.params)
    for i, (p, q) in enumerate(zip(a.params, b.params)):
        assert p.keys() == q.keys(), f"layer {i}"
        for name in p:
            assert q[name].dtype == np.float32, f"layer {i} {name}"
            assert p[name].tobytes() == q[name].tobytes(), f"layer {i} {name} differs"


def edit(model) -> None:
    """Change weights, biases and BN statistics of a few convs (incl. the head convs without BN)."""
    rng = np.random.default_rng(7)
    p = model.params
    model.set_param(0, "weights", p[0]["weights"] * np.float32(1.25) + rng.normal(0, 0.02, p[0]["weights"].shape))
    model.set_param(4, "scales", p[4]["scales"][::-1].copy())
    model.set_param(8, "rolling_mean", p[8]["rolling_mean"] + np.float32(0.5))
    model.set_param(8, "rolling_variance", p[8]["rolling_variance"] * np.float32(2))
    w = p[15]["weights"].copy()
    w[:85] *= -1                                   # first anchor of the 13x13 head
    model.set_param(15, "weights", w)
    model.set_param(22, "biases", p[22]["biases"] + rng.normal(0, 0.5, p[22]["biases"].shape))


def test_unedited_model_writes_the_original_file_byte_for_byte(tiny, tmp_path):
    out = tmp_path / "same.weights"
    tiny.save_weights(out)
    assert out.read_bytes() == TINY_WEIGHTS.read_bytes()


@pytest.fixture(scope="module")
def edited(tiny, tmp_path_factory):
    model = tiny.copy()
    edit(model)
    path = tmp_path_factory.mktemp("edited") / "edited.weights"
    model.save_weights(path)
    return model, path


def test_edited_weights_load_in_opencv_with_our_float_outputs(edited, tiny):
    pytest.importorskip("cv2")
    model, path = edited
    x = np.random.default_rng(11).random(model.input_shape, dtype=np.float32)
    ours = model.forward(x)
    ref = opencv_layer_outputs(TINY_CFG, path, x)
    assert len(ref) >= 22 and {15, 22} <= set(ref)
    for i, y in ref.items():
        d = max_rel_diff(ours[i], y)
        assert d <= TOL, f"layer {i}: OpenCV vs ours max rel diff {d:.2e}"
    print("edited yolov3-tiny, OpenCV vs ours: " + ", ".join(f"layer{i} {max_rel_diff(ours[i], ref[i]):.2e}"
                                                             for i in (15, 22)))
    # the edits are visible in both heads, far above the tolerance
    original = tiny.forward(x, stop=22)
    for i in (15, 22):
        assert max_rel_diff(ours[i], original[i]) > 100 * TOL, f"layer {i}: edit has no effect"


def test_edited_weights_reload_bit_exactly(edited, tmp_path):
    model, path = edited
    again = engine.load(TINY_CFG, weights=path)
    assert again.header == model.header
    assert_same_params(model, again)
    again.save_weights(tmp_path / "again.weights")
    assert (tmp_path / "again.weights").read_bytes() == path.read_bytes()


def test_engine_model_file_to_weights_is_the_same_file(edited, tmp_path):
    model, path = edited
    model.save(tmp_path / "edited.npz")
    engine.load(tmp_path / "edited.npz").save_weights(tmp_path / "from_npz.weights")
    assert (tmp_path / "from_npz.weights").read_bytes() == path.read_bytes()


CONNECTED = """[net]
channels=3
height=6
width=5
[convolutional]
batch_normalize=1
filters=4
size=3
pad=1
activation=leaky
[connected]
output=7
batch_normalize=1
activation=linear
[connected]
output=3
activation=logistic
"""


@pytest.mark.parametrize("header", [WeightsHeader(0, 2, 0, 123456789012), WeightsHeader(0, 1, 0, 77),
                                    WeightsHeader(1001, 0, 0, 5)],
                         ids=["20-byte header", "16-byte header", "transposed connected"])
def test_connected_and_batchnorm_layers_round_trip_exactly(header, tmp_path):
    """Connected BN vectors follow the weights; headers with major>1000 store [in][out] matrices."""
    model = from_cfg_text(CONNECTED, name="connected.cfg")
    model.header = header
    cfg = tmp_path / "connected.cfg"
    cfg.write_text(CONNECTED)
    model.save_weights(tmp_path / "c.weights")
    data = (tmp_path / "c.weights").read_bytes()
    assert len(data) == header.size + 4 * model.graph.total_params
    again = engine.load(cfg, weights=tmp_path / "c.weights")
    assert again.header == header
    assert_same_params(model, again)
    x = np.random.default_rng(0).random(model.input_shape, dtype=np.float32)
    np.testing.assert_array_equal(again.forward(x)[-1], model.forward(x)[-1])
