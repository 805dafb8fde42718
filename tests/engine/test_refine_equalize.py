"""Cross-layer equalization on real yolov3-tiny: the equalized FLOAT model computes the same detections'
inputs as the original on a real photo (within float32 rounding), each rescaled tensor is the original
divided per channel by the stored scales, the weight ranges of each pair end up equal (Nagel et al.), and
a quantized model made from the equalized twin runs its float layers on the twin's weights."""
from __future__ import annotations

import numpy as np
import pytest

from engine.errors import EngineError
from engine.quant.executor import Executor
from engine.quant.qmodel import quantize_model
from engine.quant.refine import attach_equalization, equalize
from engine.quant.refine.equalize import equalized, pairs
from helpers import IMAGES

DOG = IMAGES / "dog.jpg"


@pytest.fixture(scope="module")
def cle(tiny):
    return equalize(tiny)


def test_pairs_follow_maxpool_route_and_upsample(tiny):
    pr = pairs(tiny)
    # 8 reaches conv 10 through maxpool 9 and conv 21 through route 20 = [19, 8] (after 19's 128 channels)
    assert pr[8] == [(10, 0), (21, 128)]
    assert pr[13] == [(14, 0), (18, 0)] and pr[18] == [(21, 0)] and pr[0] == [(2, 0)]
    assert 15 not in pr and 22 not in pr                       # read by [yolo]: not rescalable


def test_equalized_float_model_has_the_same_outputs_on_a_real_photo(tiny, cle):
    twin, spec = cle
    x = tiny.preprocess(DOG).x
    a, b = tiny.forward(x), twin.forward(x)
    for head in (15, 22):
        assert np.abs(a[head] - b[head]).max() <= 1e-4 * np.abs(a[head]).max()
    s13 = np.asarray(spec["13"]).reshape(-1, 1, 1)
    assert np.abs(s13 - 1).max() > 0.3                          # a real rescaling, not the identity
    np.testing.assert_allclose(b[13], a[13] / s13, rtol=1e-3, atol=1e-4 * np.abs(a[13]).max())
    d_a, d_b = tiny.detect(DOG), twin.detect(DOG)
    assert [d.class_id for d in d_a] == [d.class_id for d in d_b]
    assert np.allclose([d.score for d in d_a], [d.score for d in d_b], atol=1e-4)


def test_weight_ranges_of_each_pair_are_balanced(tiny, cle):
    twin, _ = cle
    w6 = np.abs(twin.layers[6].fused(twin.params[6])[0]).reshape(128, -1).max(axis=1)
    w8 = np.abs(twin.layers[8].fused(twin.params[8])[0]).max(axis=(0, 2, 3))
    np.testing.assert_allclose(w6, w8, rtol=0.05)              # r1 = r2 = sqrt(r1 r2) after the sweeps
    o6 = np.abs(tiny.layers[6].fused(tiny.params[6])[0]).reshape(128, -1).max(axis=1)
    o8 = np.abs(tiny.layers[8].fused(tiny.params[8])[0]).max(axis=(0, 2, 3))
    assert (o6 / o8).max() / (o6 / o8).min() > 10               # they were far apart before


def test_quantized_model_of_the_twin_runs_float_layers_on_the_twin(tiny, cle, tiny_stats):
    from engine.calib.collect import collect
    twin, spec = cle
    qm = attach_equalization(quantize_model(twin, collect(twin, [DOG], progress=False), "minmax",
                                            per_channel=True), spec)
    x = tiny.preprocess(DOG).x
    ref = tiny.forward(x)
    # conv 14 kept FLOAT reads conv 13's equalized int8 output: right only with the twin's weights
    outs = Executor(tiny, qm, "int", float_layers=[14]).forward(x)
    wrong = Executor(tiny, quantize_model(twin, collect(twin, [DOG], progress=False), "minmax", per_channel=True),
                     "int", float_layers=[14]).forward(x)
    err = np.abs(outs[15] - ref[15]).mean()
    assert err < 0.5 * np.abs(wrong[15] - ref[15]).mean()
    assert np.abs(Executor(tiny, qm, "float").forward(x)[15] - ref[15]).max() < 1e-3 * np.abs(ref[15]).max()


def test_bad_equalization_spec_is_refused(tiny):
    with pytest.raises(EngineError, match="layer 15 cannot be rescaled"):
        equalized(tiny, {"15": [1.0] * 255})
    with pytest.raises(EngineError, match="layer 13 needs 256 positive scales"):
        equalized(tiny, {"13": [1.0, -1.0]})
    with pytest.raises(EngineError, match="mode 'both'"):
        equalize(tiny, "both")


def test_cli_quantize_refine_cle(tmp_path):
    import subprocess
    import sys
    from engine.quant.qmodel import QuantizedModel
    from helpers import ROOT, TINY_CFG, TINY_WEIGHTS
    out = tmp_path / "q.npz"
    res = subprocess.run([sys.executable, "-m", "engine", "quantize", str(TINY_CFG), "--weights", str(TINY_WEIGHTS),
                          "--calib", str(DOG), "--refine", "cle", "--profile", "qwidgets_asym", "--per-channel",
                          "--quiet", "-o", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr
    qm = QuantizedModel.load(out)
    assert qm.profile == "qwidgets_asym" and qm.meta["equalization_mode"] == "weights"
    assert set(qm.meta["equalization"]) == {str(i) for i in (0, 2, 4, 6, 8, 10, 12, 13, 14, 18, 21)}
