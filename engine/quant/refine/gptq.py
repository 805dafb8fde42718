"""Weight rounding fitted to each conv's inputs (GPTQ / OBQ, Frantar et al. 2022), `--refine gptq`.

Why: with activations FLOAT and only the weights rounded to per-channel int8, yolov3-tiny already
loses detections on our variants (docs/quantization.md), so rounding every weight to its nearest
level is not free. Rounding is chosen here to minimise the layer's output error on the calibration
images instead, ||(W' - W) X||^2 with X the conv's im2col input rows (FLOAT, the layer alone, as EQ and
bias correction read them). The per-channel scales are kept (only the integers change, within
the profile's [-weight_qmax, weight_qmax]), so int32 biases, the integer paths and every profile are untouched.

The algorithm is GPTQ's: H = X^T X + damp * mean(diag) * I over the input columns; columns are
rounded in order and each rounding error is spread over the columns not yet rounded by the optimal
(OBS) update W[:, F] -= e / Hinv_F[0, 0] * Hinv_F[0, :], with Hinv_F the inverse of H restricted to
the remaining columns F. The upper Cholesky factor of H^-1 holds every Hinv_F row at once (GPTQ's
observation), and the updates are applied in blocks of columns (the same arithmetic, matmul-shaped).
tests/engine/test_refine_gptq.py checks it against the textbook loop that inverts H[F, F] at each step.
This is the closed-form alternative to AdaRound (which learns the same up / down choices by gradient
descent): deterministic, no learning rate or iteration count, seconds on yolov3-tiny.
"""
from __future__ import annotations

import numpy as np

from engine.calib.floats import FloatOutputs, float_outputs
from engine.errors import ArgumentError, EngineError
from engine.quant.layerquant import LayerQuant
from engine.quant.qmodel import QuantizedModel
from engine.quant.qtensor import QMAX
from engine.quant.refine.eq import window_rows
from engine.quant.weights import fused_params, nearest_codes

BLOCK = 128
MAX_IMAGES = 50


def input_gram(layer, inputs: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """(X^T X in float64 over every output position of every input, number of rows) for a conv with
    groups 1: X = im2col rows (C*k*k columns, channel-major as the weights are laid out)."""
    k, s, p = layer.size, layer.stride, layer.padding
    ho, wo = layer.out_shape[1], layer.out_shape[2]
    d = inputs[0].shape[0] * k * k
    h = np.zeros((d, d))
    rows = 0
    for x in inputs:
        r = np.ascontiguousarray(window_rows(x, k, s, p, ho, wo), np.float64)
        h += r.T @ r
        rows += r.shape[0]
    return h, rows


def inverse_upper_factor(h: np.ndarray) -> np.ndarray:
    """The upper triangular U with H^-1 = U^T U (row i of U over U[i, i] is the OBS update of column i onto
    the columns after it, H restricted to columns i..d-1). With J the reversal, J H J = L L^T gives
    U = J L^-1 J: one Cholesky and one triangular inverse (d^3 / 3 each), not an inverse and a Cholesky."""
    from scipy.linalg import lapack
    rev = h[::-1, ::-1]
    low = np.linalg.cholesky(rev)
    inv, info = lapack.dtrtri(low, lower=1)
    if info != 0:
        raise EngineError(f"gptq: the damped input Gram matrix is singular (lapack dtrtri info {info})")
    return np.ascontiguousarray(inv[::-1, ::-1])


def gptq_round(w: np.ndarray, scale: np.ndarray, h: np.ndarray, damp: float = 0.01, block: int = BLOCK,
               qmax: int = QMAX, act_order: bool = True) -> np.ndarray:
    """int8 codes (n, d) of weights w (n, d) on per-row scales `scale` (n,), rounded column by column with
    the OBS error compensation for Gram matrix h (d, d). Columns no input reaches (zero diagonal) round
    to nearest, as do all columns when damp makes h singular-free (it always does for damp > 0).

    `act_order` (GPTQ's "desc_act"): the columns in order of decreasing input energy diag(h) (ties in
    column order), so the inputs that move the output most are rounded first, while every later column
    can still absorb their error; else in column order. Measured on yolov3-tiny's best configuration
    (docs/quantization.md, round 9): 4 lost detections over 13 validation sets against 7."""
    w = np.array(w, np.float64)
    n, d = w.shape
    s = np.asarray(scale, np.float64).reshape(n, 1)
    h = np.array(h, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices(d)] += damp * float(np.mean(np.diag(h)))
    perm = None
    if act_order:
        perm = np.argsort(-np.diag(h), kind="stable")
        w, h = w[:, perm], h[np.ix_(perm, perm)]
    u = inverse_upper_factor(h)
    q = np.zeros((n, d))
    for i1 in range(0, d, block):
        i2 = min(i1 + block, d)
        w1, u1 = w[:, i1:i2].copy(), u[i1:i2, i1:i2]
        err = np.zeros_like(w1)
        for j in range(i2 - i1):
            col = w1[:, j]
            qc = nearest_codes(col / s[:, 0], qmax)
            q[:, i1 + j] = qc
            e = (col - qc * s[:, 0]) / u1[j, j]
            w1[:, j:] -= np.outer(e, u1[j, j:])
            err[:, j] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    if perm is not None:
        q[:, perm] = q.copy()                  # column j of the permuted problem is column perm[j]
    return q.astype(np.int8)


def _quadratic(a: np.ndarray, h: np.ndarray) -> float:
    """sum over rows r of r H r^T: the squared output error of weight error rows `a` on inputs with Gram H."""
    return float(((a @ h) * a).sum())


def gptq_rounding(model, qmodel: QuantizedModel, floats: FloatOutputs | None = None, images=None,
                  damp: float = 0.01, resize: str = "letterbox", act_order: bool = True) -> QuantizedModel:
    """A copy of `qmodel` whose int8 convolution weights (groups 1, not kept FLOAT) are rounded by GPTQ on
    the calibration images' FLOAT inputs (`floats` from the calibration pass, or a FLOAT pass over
    `images`). Per layer, the relative output error ||(W' - W) X||^2 / ||W X||^2 of nearest rounding and of
    GPTQ's on those images is kept in meta["gptq"] = {layer: [nearest, gptq]}; the column order (`act_order`,
    see gptq_round) in meta["gptq_order"] ("act" or "natural")."""
    if not (isinstance(damp, (int, float)) and np.isfinite(damp) and damp > 0):
        raise ArgumentError(f"gptq damp={damp!r}: expected a positive fraction of the mean input energy")
    from engine.quant.executor import equalized_for
    model = equalized_for(model, qmodel)
    if floats is None:
        if images is None:
            raise ArgumentError("gptq needs the calibration images' FLOAT inputs: pass floats=... or images=...")
        floats = float_outputs(model, images, resize, MAX_IMAGES)
    if len(floats) == 0:
        raise EngineError("gptq: no FLOAT inputs were kept (no calibration images, or over the memory cap)")
    targets = [i for i in sorted(qmodel.layers) if i not in qmodel.float_layers
               and model.layers[i].kind == "convolutional" and model.layers[i].groups == 1]
    from engine.quant.profiles import get_profile
    qmax = get_profile(qmodel.profile).weight_qmax       # 63 for a reduce_range target: codes stay in its range
    new: dict[int, LayerQuant] = {}
    report: dict[str, list[float]] = {}

    def one(_part: int, k: int) -> None:       # layers are independent (FLOAT inputs): one per work item
        i = targets[k]
        layer, lq = model.layers[i], qmodel.layers[i]
        w, _ = fused_params(model, i)
        n = w.shape[0]
        wf = w.reshape(n, -1).astype(np.float64)
        h, _ = input_gram(layer, floats.inputs(layer.inputs[0])[:MAX_IMAGES])
        scale = np.broadcast_to(np.asarray(lq.w_scale, np.float64), (n,))
        q = gptq_round(wf, scale, h, damp, qmax=qmax, act_order=act_order)
        near = lq.w_q.reshape(n, -1).astype(np.float64) * scale[:, None] - wf
        mine = q.astype(np.float64) * scale[:, None] - wf
        energy = max(_quadratic(wf, h), 1e-30)
        e_near, e_mine = _quadratic(near, h) / energy, _quadratic(mine, h) / energy
        report[str(i)] = [e_near, e_mine]
        if e_mine < e_near:                    # never worse than nearest on the images it was fitted to
            new[i] = LayerQuant(q.reshape(lq.w_q.shape), lq.w_scale, lq.b_q, lq.in_scale, lq.scheme)

    from engine.kernels.threads import own_threads, parallel_items
    with own_threads():
        parallel_items(len(targets), one)
    twin = qmodel.copy()
    twin.layers.update(new)
    twin.meta["gptq"] = {k: report[k] for k in sorted(report, key=int)}
    twin.meta["gptq_order"] = "act" if act_order else "natural"
    return twin
