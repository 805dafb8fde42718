"""Cross-layer equalization (CLE, Nagel et al. 2019, "Data-Free Quantization"), as NNCF / AIMET do it.

A conv P whose activation is positively homogeneous (linear, relu, leaky: f(x / s) = f(x) / s for
s > 0) and whose output reaches only convolutions through maxpool / upsample / dropout / route
(all of which commute with a positive per-channel scale) can have output channel i divided by s_i
if every consumer's input channel i is multiplied by s_i: the float network computes the same
function. Data-free CLE picks s_i = sqrt(r1_i / r2_i) (r1: range of P's channel-i weights, r2:
range of the consumers' input-channel-i weights) so both become sqrt(r1 r2); the pairs are swept
until the scales settle (a conv is a consumer of one pair and the producer of the next).
mode="activations" balances P's per-channel *output* range (measured on the calibration images)
against the consumers' weights instead: what a per-tensor activation scale needs when the weights
are already quantized per output channel.

The equalized float model is what gets calibrated and quantized; the quantized model records the
per-producer scales (meta["equalization"]) so the executor runs its float layers on the same
equalized weights (`equalized(model, spec)`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from engine.errors import EngineError
from engine.layers.convolutional import BN_EPS

HOMOGENEOUS = ("linear", "relu", "leaky")
MODES = ("weights", "activations")


def _readers(model) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {i: [] for i in range(len(model.layers))}
    for layer in model.layers:
        for s in set(layer.inputs):
            if s >= 0:
                out[s].append(layer.index)
    return out


def _consumers(model, readers, index: int, offset: int) -> list[tuple[int, int]] | None:
    """(conv index, input-channel offset) of every conv reading `index`'s channels; None if any path
    reaches a layer that does not commute with a per-channel scale (a head, a shortcut, ...)."""
    out: list[tuple[int, int]] = []
    if not readers[index]:
        return None
    for r in readers[index]:
        layer = model.layers[r]
        if layer.kind == "convolutional" and layer.groups == 1:
            out.append((r, offset))
            continue
        if layer.commutes_channel_scale:
            sub = _consumers(model, readers, r, offset)
        elif layer.kind == "route" and layer.groups == 1 and list(layer.inputs).count(index) == 1:
            pos = list(layer.inputs).index(index)
            sub = _consumers(model, readers, r, offset + sum(s[0] for s in layer.in_shapes[:pos]))
        else:
            return None
        if sub is None:
            return None
        out += sub
    return out


def pairs(model) -> dict[int, list[tuple[int, int]]]:
    """producer conv -> its consumers (conv, channel offset), for every conv CLE can rescale."""
    rd = _readers(model)
    out = {}
    for layer in model.layers:
        if layer.kind != "convolutional" or layer.activation not in HOMOGENEOUS:
            continue
        cons = _consumers(model, rd, layer.index, 0)
        if cons:
            out[layer.index] = cons
    return out


def _fused_w(model, i: int) -> np.ndarray:
    return model.layers[i].fused(model.params[i])[0].astype(np.float64)


def _in_ranges(model, cons, n: int) -> np.ndarray:
    """Per input channel (of the n produced), the largest |w| over the consumers' fused weights."""
    r = np.zeros(n)
    for c, off in cons:
        r = np.maximum(r, np.abs(_fused_w(model, c)[:, off:off + n]).max(axis=(0, 2, 3)))
    return r


def channel_maxima(model, images: Sequence, producers, resize: str = "letterbox") -> dict[int, np.ndarray]:
    """Largest |output| per channel of each producer over the images (a FLOAT pass per image)."""
    from engine.calib.collect import image_list, network_input
    out: dict[int, np.ndarray] = {}
    for item in image_list(images):
        x = network_input(model, item, resize)
        outs = model.forward(x)
        for p in producers:
            m = np.abs(outs[p]).reshape(outs[p].shape[0], -1).max(axis=1).astype(np.float64)
            out[p] = m if p not in out else np.maximum(out[p], m)
    return out


def equalization_scales(model, mode: str = "weights", images: Sequence | None = None, sweeps: int = 20,
                        resize: str = "letterbox") -> dict[int, np.ndarray]:
    """producer -> s (its output channel i is divided by s_i, the consumers' input channel i multiplied)."""
    if mode not in MODES:
        raise EngineError(f"equalization mode {mode!r}: expected one of {', '.join(MODES)}")
    pr = pairs(model)
    if mode == "activations" and images is None:
        raise EngineError("equalization mode 'activations' measures per-channel output ranges: pass images=...")
    acts = channel_maxima(model, images, pr, resize) if mode == "activations" else {}
    total = {p: np.ones(model.layers[p].filters) for p in pr}
    ranges = _Ranges(model, {p for p in pr} | {c for cons in pr.values() for c, _ in cons})
    for _ in range(sweeps):
        moved = 0.0
        for p, cons in pr.items():
            n = model.layers[p].filters
            if mode == "weights":
                r1 = ranges.out_ranges(p)
            else:
                r1 = acts[p] / total[p]
            r2 = np.zeros(n)
            for c, off in cons:
                r2 = np.maximum(r2, ranges.in_ranges(c)[off:off + n])
            ok = (r1 > 0) & (r2 > 0)
            s = np.ones(n)
            s[ok] = np.sqrt(r1[ok] / r2[ok])
            total[p] = total[p] * s
            ranges.apply(p, s, cons)
            moved = max(moved, float(np.abs(np.log(s)).max()))
        if moved < 1e-4:
            break
    return total


class _Ranges:
    """The per-channel weight ranges the sweep reads, kept exactly as `equalized` would change them,
    without folding whole weight tensors or copying the model at every step. float32 rounding is
    monotonic and symmetric, so the largest |w| of a channel after w * s (or w / s, or the BN fold
    w * g) is that operation applied to the channel's largest |w|: the ranges equal those of the
    folded weights of the equalized model, bit for bit."""

    def __init__(self, model, layers=()) -> None:
        from engine.kernels.threads import own_threads, parallel_items
        self.model = model
        self.scales = {i: p["scales"] for i, p in enumerate(model.params) if "scales" in p}
        self.ch_max: dict[int, np.ndarray] = {}         # per (output, input) channel, max |raw w|, float32
        todo = sorted(layers, key=lambda i: -model.params[i]["weights"].size)
        with own_threads():                             # one layer per work item (largest first)
            parallel_items(len(todo), lambda _part, k: self._channel_max(todo[k]))

    def _channel_max(self, i: int) -> np.ndarray:
        if i not in self.ch_max:
            w = self.model.params[i]["weights"]
            v = w.reshape(w.shape[0] * w.shape[1], -1)
            m = np.abs(v[:, 0])                         # a running maximum over the k*k taps: no |w| copy
            for j in range(1, v.shape[1]):
                np.maximum(m, np.abs(v[:, j]), out=m)
            self.ch_max[i] = m.reshape(w.shape[0], w.shape[1])
        return self.ch_max[i]

    def _gain(self, i: int) -> np.ndarray | None:
        """|BN gain| per output channel as fold_batchnorm computes it (float64), None without BN."""
        if not self.model.layers[i].batch_normalize:
            return None
        d = np.sqrt(self.model.params[i]["rolling_variance"].astype(np.float64)) + BN_EPS   # as fold_batchnorm
        return np.abs(self.scales[i].astype(np.float64) / d)

    def out_ranges(self, i: int) -> np.ndarray:
        """max |fused weight| per output channel, as float64."""
        m, gain = self._channel_max(i).max(axis=1), self._gain(i)
        return m.astype(np.float64) if gain is None else (m * gain).astype(np.float32).astype(np.float64)

    def in_ranges(self, i: int) -> np.ndarray:
        """max |fused weight| per input channel, as float64. The float32 rounding of the folded weights
        is monotonic, so it is applied to the column maxima of the float64 products, not to the matrix:
        the same values in two passes over it instead of five."""
        m, gain = self._channel_max(i), self._gain(i)
        if gain is None:
            return m.max(axis=0).astype(np.float64)
        return np.multiply(m, gain[:, None]).max(axis=0).astype(np.float32).astype(np.float64)

    def apply(self, p: int, s: np.ndarray, cons) -> None:
        """The param updates of equalized(model, {p: s}), on the ranges."""
        if self.model.layers[p].batch_normalize:      # gamma / s (beta / s changes no weight range)
            self.scales[p] = (self.scales[p] / s).astype(np.float32)
        else:                                         # weights / s per output channel
            self.ch_max[p] = (self._channel_max(p) / s.reshape(-1, 1)).astype(np.float32)
        s32 = s.astype(np.float32)
        for c, off in cons:                           # consumers' input channels * s, in float32
            m = self._channel_max(c)
            m[:, off:off + len(s)] *= s32.reshape(1, -1)


def equalized(model, spec: dict) -> "object":
    """A copy of `model` with the scales of `spec` (producer -> s, as stored in meta["equalization"]) applied;
    the float function is unchanged (up to float32 rounding)."""
    twin = model.shallow_copy()
    pr = pairs(model)
    for key, s in spec.items():
        p = int(key)
        if p not in pr:
            raise EngineError(f"equalization: layer {p} cannot be rescaled in {model.graph.name} (not a conv whose "
                              "output reaches only convolutions through maxpool/upsample/route)")
        s = np.asarray(s, np.float64)
        layer, params = model.layers[p], twin.params[p]
        if len(s) != layer.filters or not (np.isfinite(s).all() and (s > 0).all()):
            raise EngineError(f"equalization: layer {p} needs {layer.filters} positive scales, got {len(s)}")
        if layer.batch_normalize:               # W' = W * gamma / D, b' = beta - ...: gamma and beta carry 1/s
            twin.replace_param(p, "scales", (params["scales"] / s).astype(np.float32))
            twin.replace_param(p, "biases", (params["biases"] / s).astype(np.float32))
        else:
            twin.replace_param(p, "weights", (params["weights"] / s.reshape(-1, 1, 1, 1)).astype(np.float32))
            twin.replace_param(p, "biases", (params["biases"] / s).astype(np.float32))
        for c, off in pr[p]:
            w = twin.params[c]["weights"].copy()
            w[:, off:off + len(s)] *= s.reshape(1, -1, 1, 1).astype(np.float32)
            twin.replace_param(c, "weights", w)
    return twin


def equalize(model, mode: str = "weights", images: Sequence | None = None, resize: str = "letterbox"):
    """(equalized model, spec): calibrate and quantize the equalized model, then store the spec in the
    quantized model's meta["equalization"] (`attach`). The calibration pass runs `model` itself, its
    outputs rescaled per channel (`derived_forward(model, spec)`): the twin's kernel weights are never
    prepared for it, and those of `model` are prepared once whatever the number of calibrations."""
    from engine.kernels.threads import own_threads, parallel_items
    scales = equalization_scales(model, mode, images, resize=resize)
    spec = {str(p): [float(v) for v in s] for p, s in scales.items()}
    twin = equalized(model, spec)
    with own_threads():                 # the calibration pass needs the kernel weights: one layer per work item
        parallel_items(len(model.layers), lambda _part, i: model.prepared(i))
    return twin, spec


def channel_factors(model, spec: dict) -> dict[int, np.ndarray]:
    """layer -> float32 per-channel factor f: the equalized twin's output of that layer is the original
    output times f (within float32 rounding) and every other layer's output is the original's. A rescaled
    producer's f is 1 / s; maxpool / upsample / dropout pass their input's f on (each commutes with a
    positive per-channel scale), a route concatenates its inputs' (1 for the others); its consumers undo it."""
    pr = pairs(model)
    out: dict[int, np.ndarray] = {}
    for layer in model.layers:
        i = layer.index
        if str(i) in spec and i in pr:
            out[i] = (1.0 / np.asarray(spec[str(i)], np.float64)).astype(np.float32)
        elif layer.commutes_channel_scale and layer.inputs[0] in out:
            out[i] = out[layer.inputs[0]]
        elif layer.kind == "route" and any(s in out for s in layer.inputs):
            out[i] = np.concatenate([out[s] if s in out else np.ones(shape[0], np.float32)
                                     for s, shape in zip(layer.inputs, layer.in_shapes)])
    return out


def rescaled_outputs(outs: Sequence[np.ndarray], factors: dict[int, np.ndarray]) -> list[np.ndarray]:
    """`outs` (a FLOAT forward of the original model, one image (C, H, W) or a batch) with the layers of
    `factors` multiplied per channel: the equalized twin's outputs, read-only, the others shared."""
    from engine.kernels.threads import own_threads, parallel_items
    out = list(outs)
    keys = sorted(factors, key=lambda i: -outs[i].size)           # largest first: balanced threads

    def one(_part: int, k: int) -> None:
        i = keys[k]
        y = np.multiply(outs[i], factors[i].reshape(-1, 1, 1), dtype=np.float32)
        y.flags.writeable = False
        out[i] = y

    with own_threads():
        parallel_items(len(keys), one)
    return out


def derived_forward(model, spec: dict):
    """x -> the FLOAT outputs of `equalized(model, spec)`, computed as `model`'s forward rescaled per channel
    (`channel_factors`): what the calibration pass of an equalized model runs instead of the twin's own
    forward (equal within float32 rounding; tests/engine/test_calib_equalized.py compares them)."""
    factors = channel_factors(model, spec)
    return lambda x: rescaled_outputs(model.forward(x), factors)


def attach(qmodel, spec: dict, mode: str = "weights", source=None, equalized_model=None):
    """A copy of `qmodel` recording `spec`. Given the original `source` model and the `equalized_model`
    that was calibrated, the executor and the refinements reuse that model (its folded and prepared
    weights) instead of equalizing `source` again."""
    twin = qmodel.copy()
    twin.meta["equalization"] = spec
    twin.meta["equalization_mode"] = mode
    if source is not None and equalized_model is not None:
        twin.__dict__["_equalized"] = (source, spec, equalized_model)     # engine.quant.executor.equalized_for
    return twin
