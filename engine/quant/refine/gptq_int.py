"""GPTQ against the INT network's own inputs (`--refine gptq_int`): weight rounding that also absorbs the
activation rounding upstream, the asymmetric calibration of GPTAQ (Li et al. 2025).

Why: after `--refine gptq` the weights' share of the INT - FLOAT score error is mostly gone and what is
left is activation rounding (docs/quantization.md): each conv reads X_q, its input as the int8 network
hands it over, not X_f, the FLOAT input GPTQ fitted it to. Here each conv's int8 weights W' minimise
||X_f W^T - X_q W'^T||^2 (the FLOAT output from the INT input) instead of ||(X_f (W - W')^T||^2. With the
damping of GPTQ (d = damp * mean diag of H_q) the float optimum is the ridge regression
W* = (W G^T + d W) (H_q + d I)^-1, H_q = X_q^T X_q, G = X_q^T X_f, and the objective is, up to a constant,
||X_q (W* - W')^T||^2 + d ||W* - W'||^2: GPTQ's rounding of W* for H_q (engine/quant/refine/gptq.py).
X_q comes from one INT run over the calibration images of the model given (its rounding upstream is what
the layer will read; pass a `--refine gptq` model to start from GPTQ's upstream weights); every layer is
then fitted at once (no sequential re-run). Scales, biases and integer paths are unchanged; a layer keeps
its former codes unless the new ones lower the asymmetric error on the calibration images.
"""
from __future__ import annotations

import numpy as np

from engine.calib.floats import FloatOutputs
from engine.errors import ArgumentError, EngineError
from engine.quant.layerquant import LayerQuant
from engine.quant.qmodel import QuantizedModel
from engine.quant.refine.eq import window_rows
from engine.quant.refine.gptq import MAX_IMAGES, gptq_round
from engine.quant.weights import fused_params


def cross_grams(layer, floats: list[np.ndarray], quants: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
    """(H_q = X_q^T X_q, G = X_q^T X_f, ||X_f||-weighted constant unused: trace of X_f^T X_f) over im2col rows."""
    k, s, p = layer.size, layer.stride, layer.padding
    ho, wo = layer.out_shape[1], layer.out_shape[2]
    d = floats[0].shape[0] * k * k
    hq, g, hf = np.zeros((d, d)), np.zeros((d, d)), np.zeros((d, d))
    for xf, xq in zip(floats, quants):
        rf = np.ascontiguousarray(window_rows(xf, k, s, p, ho, wo), np.float64)
        rq = np.ascontiguousarray(window_rows(xq, k, s, p, ho, wo), np.float64)
        hq += rq.T @ rq
        g += rq.T @ rf
        hf += rf.T @ rf
    return hq, g, hf


def asymmetric_error(w: np.ndarray, wq: np.ndarray, hf: np.ndarray, hq: np.ndarray, g: np.ndarray) -> float:
    """||X_f W^T - X_q W'^T||^2 from the Gram matrices (rows of w, wq: output channels)."""
    return float(((w @ hf) * w).sum() - 2.0 * ((wq @ g) * w).sum() + ((wq @ hq) * wq).sum())


def ridge_target(w: np.ndarray, hq: np.ndarray, g: np.ndarray, damp: float) -> np.ndarray:
    """W* = (W G^T + d W)(H_q + d I)^-1, d = damp * mean(diag H_q): the float weights that best map X_q to
    X_f W^T, pulled towards W where the INT inputs do not determine them."""
    from scipy.linalg import cho_factor, cho_solve
    d = damp * float(np.mean(np.diag(hq)))
    h = hq + d * np.eye(hq.shape[0])
    rhs = g @ w.T + d * w.T                      # (H_q + dI) W*^T = G W^T + d W^T
    return cho_solve(cho_factor(h), rhs).T


def int_input(model, qmodel: QuantizedModel, floats: FloatOutputs, producer: int) -> list[np.ndarray]:
    """A conv's input as the INT network of `qmodel` hands it over (dequantized), on the kept images."""
    if producer < 0:
        return [kept[-1] for kept in floats.images[:MAX_IMAGES]]       # the image grid is exact (k / 255)
    from engine.quant.executor import Executor
    ex = Executor(model, qmodel, "int")
    return [np.asarray(ex.run(kept[-1], stop=producer)[0][producer].float(), np.float32)
            for kept in floats.images[:MAX_IMAGES]]


def gptq_int_rounding(model, qmodel: QuantizedModel, floats: FloatOutputs, damp: float = 0.01,
                      min_rows: float = 0.0) -> QuantizedModel:
    """A copy of `qmodel` whose int8 conv weights (groups 1, not FLOAT) are GPTQ-rounded from their float
    values towards the ridge target above, X_q read from one INT run of `qmodel` on the kept images.
    meta["gptq_int"] = {layer: [former, new]} relative asymmetric errors on those images."""
    if not (isinstance(damp, (int, float)) and np.isfinite(damp) and damp > 0):
        raise ArgumentError(f"gptq_int damp={damp!r}: expected a positive fraction of the mean input energy")
    if floats is None or len(floats) == 0:
        raise EngineError("gptq_int: needs the calibration pass's FLOAT outputs (none were kept)")
    from engine.quant.executor import equalized_for
    from engine.quant.profiles import get_profile
    fmodel = equalized_for(model, qmodel)
    targets = [i for i in sorted(qmodel.layers) if i not in qmodel.float_layers
               and fmodel.layers[i].kind == "convolutional" and fmodel.layers[i].groups == 1]
    qmax = get_profile(qmodel.profile).weight_qmax
    report: dict[str, list[float]] = {}

    twin = qmodel.copy()
    for i in targets:              # in order: each layer reads the INT output of the layers fitted before it
        layer, lq = fmodel.layers[i], qmodel.layers[i]
        w, _ = fused_params(fmodel, i)
        n = w.shape[0]
        wf = w.reshape(n, -1).astype(np.float64)
        xs = floats.inputs(layer.inputs[0])[:MAX_IMAGES]
        rows = len(xs) * layer.out_shape[1] * layer.out_shape[2]
        if rows < min_rows * wf.shape[1]:
            continue
        hq, g, hf = cross_grams(layer, xs, int_input(model, twin, floats, layer.inputs[0]))
        scale = np.broadcast_to(np.asarray(lq.w_scale, np.float64), (n,))
        q = gptq_round(ridge_target(wf, hq, g, damp), scale, hq, damp, qmax=qmax)
        energy = max(float(((wf @ hf) * wf).sum()), 1e-30)
        e_old = asymmetric_error(wf, lq.w_q.reshape(n, -1) * scale[:, None], hf, hq, g) / energy
        e_new = asymmetric_error(wf, q.astype(np.float64) * scale[:, None], hf, hq, g) / energy
        report[str(i)] = [e_old, e_new]
        if e_new < e_old:
            twin.layers[i] = LayerQuant(q.reshape(lq.w_q.shape), lq.w_scale, lq.b_q, lq.in_scale, lq.scheme)
    twin.meta["gptq_int"] = {k: report[k] for k in sorted(report, key=int)}
    return twin
