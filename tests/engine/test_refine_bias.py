"""Bias correction on real yolov3-tiny: for a 1x1 linear conv (layer 15, a detection head's input) the
per-channel mean of the int8 layer's output on the calibration image equals FLOAT's afterwards, up to
the int32 bias rounding; checked with the HYBRID conv itself, not with the correction's own formula."""
from __future__ import annotations

import numpy as np

from engine.quant.executor import Executor, Value
from engine.quant.qmodel import quantize_model
from engine.quant.refine import bias_correction
from helpers import IMAGES

DOG = IMAGES / "dog.jpg"


def _mean_shift(tiny, qm, outs, i):
    ex = Executor(tiny, qm, "hybrid")
    y, _ = ex.run_layer(i, [Value(f=outs[tiny.layers[i].inputs[0]])])
    return (y.float() - outs[i]).reshape(outs[i].shape[0], -1).astype(np.float64).mean(axis=1)


def test_bias_correction_removes_the_mean_shift_of_a_1x1_conv(tiny, tiny_stats):
    qm = quantize_model(tiny, tiny_stats, "kl", rules=(), clip_max=1)          # clipped inputs: a visible mean shift
    fixed = bias_correction(tiny, qm, [DOG])
    outs = tiny.forward(tiny.preprocess(DOG).x)
    before, after = _mean_shift(tiny, qm, outs, 15), _mean_shift(tiny, fixed, outs, 15)
    acc = fixed.layers[15].acc_scale
    assert np.abs(before).max() > 5 * acc.max()
    assert np.all(np.abs(after) <= 0.5 * acc + 1e-4 * np.abs(outs[15]).max())
    assert set(fixed.meta["bias_correction"]) == {str(i) for i in qm.layers}
    assert np.array_equal(fixed.layers[15].w_q, qm.layers[15].w_q)   # weights untouched
    assert not np.array_equal(fixed.layers[15].b_q, qm.layers[15].b_q)


def test_cli_quantize_refine_bias(tmp_path):
    import subprocess
    import sys
    from engine.quant.qmodel import QuantizedModel
    from helpers import ROOT, TINY_CFG, TINY_WEIGHTS
    out = tmp_path / "q.npz"
    res = subprocess.run([sys.executable, "-m", "engine", "quantize", str(TINY_CFG), "--weights", str(TINY_WEIGHTS),
                          "--calib", str(DOG), "--refine", "bias", "--quiet", "-o", str(out)], capture_output=True,
                         text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr
    qm = QuantizedModel.load(out)
    assert qm.method == "minmax" and "15" in qm.meta["bias_correction"]
