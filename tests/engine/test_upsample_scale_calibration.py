"""An [upsample] with `scale=` multiplies its values, so it does not keep its input's scale.

The shared-scale rule (engine/calib/views.py) calibrated a tensor read only by an upsample on the
upsample's histogram: with scale=0.5 the producing conv got half its range (yolo-like random model,
minmax on two photos: 147 of its outputs saturated, INT error 1.34 against 0.35 without the factor),
and with scale=2 twice its range (half its resolution). The upsample's stored scale was the conv's,
while INT runs it at the conv's scale times the factor, so HYBRID quantized the next conv's input
on a grid INT never uses."""
from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.calib.collect import collect
from engine.calib.views import scale_groups
from engine.quant.executor import Executor
from engine.quant.qmodel import quantize_model
from helpers import IMAGES

CFG = """[net]
width=32
height=32
channels=3

[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky

[upsample]
stride=2
scale={scale}

[convolutional]
filters=4
size=3
stride=1
pad=1
activation=leaky
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    images = sorted(IMAGES.glob("*.jpg"))[:2]
    for scale in ("1", "0.5", "2"):
        path = tmp_path_factory.mktemp("ups") / "ups.cfg"
        path.write_text(CFG.format(scale=scale))
        model = engine.load(path, random_weights=1)        # the same weights for every scale
        out[scale] = model, collect(model, images, progress=False)
    return out


def test_an_upsample_with_a_factor_is_its_own_calibration_group(models):
    assert scale_groups(models["1"][0])["0"] == "1"          # a plain upsample shares its producer's scale
    groups = scale_groups(models["0.5"][0])
    assert groups["0"] == "0" and groups["1"] == "1"


@pytest.mark.parametrize("profile", ["qwidgets", "qwidgets_asym", "onnxruntime"])
@pytest.mark.parametrize("scale", ["0.5", "2"])
def test_the_conv_before_a_scaled_upsample_keeps_its_own_range(models, profile, scale):
    plain_model, plain_stats = models["1"]
    model, stats = models[scale]
    plain = quantize_model(plain_model, plain_stats, "minmax", per_channel=True, profile=profile)
    qm = quantize_model(model, stats, "minmax", per_channel=True, profile=profile)
    assert qm.scales["0"] == plain.scales["0"]
    assert qm.zero_points.get("0", 0) == plain.zero_points.get("0", 0)
    x = np.random.default_rng(0).random(model.input_shape, dtype=np.float32)
    values, recs = Executor(model, qm, "int").run(x)
    plain_values, plain_recs = Executor(plain_model, plain, "int").run(x)
    assert np.array_equal(values[0].q.q, plain_values[0].q.q)
    assert recs[0].stats["saturated"] == plain_recs[0].stats["saturated"]
    # the stored grid of the upsample is the one INT runs it on (HYBRID quantizes the next conv's input there)
    assert values[1].q.scale == qm.scales["1"] == pytest.approx(qm.scales["0"] * float(scale), rel=1e-6)
    assert qm.layers[2].in_scale == qm.scales["1"]


@pytest.mark.parametrize("scale", ["0", "-1"])
def test_an_upsample_factor_that_is_no_scale_is_refused_naming_the_layer(tmp_path, scale):
    """scale=0 gave every later tensor a zero grid (biases divided by zero) and scale=-1 a negative one:
    quantizing went through and INT then failed on a requantization multiplier naming no layer."""
    from engine.errors import EngineError
    path = tmp_path / "ups.cfg"
    path.write_text(CFG.format(scale=scale))
    model = engine.load(path, random_weights=1)
    np.testing.assert_array_equal(model.forward(np.ones(model.input_shape, np.float32))[1][0, 0, 0],
                                  np.float32(scale) * model.forward(np.ones(model.input_shape, np.float32))[0][0, 0, 0])
    stats = collect(model, sorted(IMAGES.glob("*.jpg"))[:1], progress=False)
    for profile in ("qwidgets", "onnxruntime"):
        with pytest.raises(EngineError, match=rf"ups.cfg:\d+ \[upsample\] \(layer 1\) scale={scale}: .* must be > 0"):
            quantize_model(model, stats, "minmax", profile=profile)
