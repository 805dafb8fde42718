"""ONNX node groups for each Darknet layer type and activation (FLOAT semantics of engine/layers).

Every emitter has the signature `emit(b, layer, params, xs, out)`: `b` is the GraphBuilder (its
scope is already `layer{i}`), `xs` the input tensor names in `layer.inputs` order, and the last
node must write the tensor `out` (= `layer{i}`). Tensors are NCHW with batch N; every Reshape
copies N (shape entry 0) or infers it (-1), so the graph also runs with N > 1.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from engine.errors import UnsupportedError
from engine.export.onnx_graph import GraphBuilder
from engine.layers import Layer
from engine.layers.base import Params
from engine.registry import Registry

Emitter = Callable[[GraphBuilder, Any, Params, list, str], None]
EMITTERS: Registry[Emitter] = Registry("ONNX layer emitter")
ACTS: Registry[Callable[[GraphBuilder, str, str | None], str]] = Registry("ONNX activation")


# ------------------------------------------------------------------------------------ activations
def _act(name: str, op_type: str, **attrs: Any) -> None:
    ACTS.register(name)(lambda b, x, out: b.op(op_type, [x], name, output=out, **attrs))


_act("linear", "Identity")
_act("leaky", "LeakyRelu", alpha=0.1)     # Darknet's slope is 0.1, not ONNX's default 0.01
_act("relie", "LeakyRelu", alpha=0.01)
_act("relu", "Relu")
_act("logistic", "Sigmoid")
_act("tanh", "Tanh")
_act("elu", "Elu", alpha=1.0)
_act("selu", "Selu", alpha=1.6732, gamma=1.0507)   # Darknet's rounded constants, not ONNX's defaults


@ACTS.register("relu6")
def _relu6(b: GraphBuilder, x: str, out: str | None) -> str:
    return b.op("Clip", [x, b.scalar(0.0), b.scalar(6.0)], "relu6", output=out)


@ACTS.register("hardtan")
def _hardtan(b: GraphBuilder, x: str, out: str | None) -> str:
    return b.op("Clip", [x, b.scalar(-1.0), b.scalar(1.0)], "hardtan", output=out)


@ACTS.register("mish")
def _mish(b: GraphBuilder, x: str, out: str | None) -> str:
    # ONNX Softplus is ln(1+e^x) without AB's +-20 thresholds: the two differ by < e^-20 (~2e-9)
    if b.opset >= 18:
        return b.op("Mish", [x], "mish", output=out)
    t = b.op("Tanh", [b.op("Softplus", [x], "mish_softplus")], "mish_tanh")
    return b.op("Mul", [x, t], "mish", output=out)


@ACTS.register("swish")
def _swish(b: GraphBuilder, x: str, out: str | None) -> str:
    return b.op("Mul", [x, b.op("Sigmoid", [x], "swish_sigmoid")], "swish", output=out)


@ACTS.register("ramp")
def _ramp(b: GraphBuilder, x: str, out: str | None) -> str:
    tenth = b.op("Mul", [x, b.scalar(0.1)], "ramp_tenth")
    return b.op("Add", [b.op("Relu", [x], "ramp_relu"), tenth], "ramp", output=out)


@ACTS.register("loggy")
def _loggy(b: GraphBuilder, x: str, out: str | None) -> str:
    twice = b.op("Mul", [b.op("Sigmoid", [x], "loggy_sigmoid"), b.scalar(2.0)], "loggy_twice")
    return b.op("Sub", [twice, b.scalar(1.0)], "loggy", output=out)


def activation(b: GraphBuilder, layer: Layer, x: str, name: str, out: str | None = None) -> str:
    """Apply Darknet activation `name` to tensor `x` (writing `out` if given)."""
    if name not in ACTS:
        raise UnsupportedError(f"{layer.where()}: activation={name} has no ONNX export "
                               f"(exportable: {', '.join(ACTS.names())})")
    return ACTS.get(name)(b, x, out)


def then_activate(b: GraphBuilder, layer: Layer, op_type: str, inputs: list[str], what: str, act: str,
                  out: str, **attrs: Any) -> None:
    """`op_type` followed by an activation; a linear activation writes `out` directly (no Identity)."""
    if act == "linear":
        b.op(op_type, inputs, what, output=out, **attrs)
    else:
        activation(b, layer, b.op(op_type, inputs, what, **attrs), act, out)


# ------------------------------------------------------------------------------------ layers
@EMITTERS.register("convolutional")
def conv(b: GraphBuilder, layer, params: Params, xs: list[str], out: str) -> None:
    w, bias = layer.fused(params)       # BN folded exactly as the engine folds it (D = sqrt(var) + 1e-6)
    k, s, p = layer.size, layer.stride, layer.padding
    then_activate(b, layer, "Conv", [xs[0], b.weight(f"{b.scope}_weights", w), b.weight(f"{b.scope}_biases", bias)],
                  "conv", layer.activation, out, kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p],
                  group=layer.groups, dilations=[1, 1])


@EMITTERS.register("connected")
def connected(b: GraphBuilder, layer, params: Params, xs: list[str], out: str) -> None:
    w, bias = layer.fused(params)       # (out, in) with in = CHW flat index, as ONNX Flatten orders it
    flat = b.op("Flatten", [xs[0]], "flatten", axis=1)
    y = b.op("Gemm", [flat, b.weight(f"{b.scope}_weights", w), b.weight(f"{b.scope}_biases", bias)], "gemm",
             transB=1)
    y = activation(b, layer, y, layer.activation)
    b.reshape(y, [0, layer.output, 1, 1], output=out)


@EMITTERS.register("maxpool")
def maxpool(b: GraphBuilder, layer, params: Params, xs: list[str], out: str) -> None:
    # Darknet pads P//2 on top/left and the rest bottom/right; padded cells never win (-inf).
    # ONNX MaxPool ignores its pads the same way, but onnxruntime requires each pad < kernel;
    # otherwise pad explicitly with -inf first.
    k, s, p = layer.size, layer.stride, layer.padding
    top, bottom = p // 2, p - p // 2
    x = xs[0]
    if bottom >= k:
        x = b.pad(x, [0, 0, top, top, 0, 0, bottom, bottom], value=-np.inf, what="pad")
        top = bottom = 0
    b.op("MaxPool", [x], "maxpool", output=out, kernel_shape=[k, k], strides=[s, s],
         pads=[top, top, bottom, bottom])


@EMITTERS.register("avgpool")
def avgpool(b: GraphBuilder, layer, params: Params, xs: list[str], out: str) -> None:
    b.op("GlobalAveragePool", xs, "avgpool", output=out)


@EMITTERS.register("route")
def route(b: GraphBuilder, layer, params: Params, xs: list[str], out: str) -> None:
    parts = []
    for x, (c, _, _) in zip(xs, layer.in_shapes):
        if layer.groups == 1:
            parts.append(x)
        else:  # channels [group_id*C/g, (group_id+1)*C/g) of each input
            n = c // layer.groups
            parts.append(b.slice(x, [layer.group_id * n], [(layer.group_id + 1) * n], [1], what="group"))
    if len(parts) == 1:
        b.op("Identity", parts, "route", output=out)
    else:
        b.op("Concat", parts, "concat", output=out, axis=1)


@EMITTERS.register("shortcut")
def shortcut(b: GraphBuilder, layer, params: Params, xs: list[str], out: str) -> None:
    prev, add = xs
    if layer.alpha != 1.0:
        prev = b.op("Mul", [prev, b.scalar(layer.alpha)], "alpha")
    term = add if layer.in_shapes[0] == layer.in_shapes[1] else _shortcut_term(b, *layer.in_shapes, add)
    if layer.beta != 1.0:
        term = b.op("Mul", [term, b.scalar(layer.beta)], "beta")
    then_activate(b, layer, "Add", [prev, term], "add", layer.activation, out)


def _shortcut_term(b: GraphBuilder, prev_shape, add_shape, add: str) -> str:
    """pj `shortcut_cpu` for unequal shapes as a dense tensor of the previous layer's shape.

    out[:c, ::sample, ::sample][:h, :w] += add[:c, ::st, ::st][:h, :w] becomes: strided Slice of
    `add`, zero-interleave by `sample` (Reshape, Pad, Reshape), then crop/zero-pad to prev's shape.
    Adding the zeros leaves the other cells exactly unchanged.
    """
    (cp, hp, wp), (cf, hf, wf) = prev_shape, add_shape
    c = min(cp, cf)
    st, sample = max(1, wf // wp), max(1, wp // wf)
    h = min(-(-hf // st), -(-hp // sample))
    w = min(-(-wf // st), -(-wp // sample))
    t = b.slice(add, [0, 0, 0], [c, h * st, w * st], [1, 2, 3], [1, st, st], what="sample")
    if sample > 1:
        t = b.reshape(t, [0, c, h, 1, w, 1], what="spread")
        t = b.pad(t, [0, 0, 0, 0, 0, 0, 0, 0, 0, sample - 1, 0, sample - 1], what="interleave")
        t = b.reshape(t, [0, c, h * sample, w * sample], what="grid")
        h, w = h * sample, w * sample
    if h > hp or w > wp:
        t = b.slice(t, [0, 0], [hp, wp], [2, 3], what="crop")
        h, w = min(h, hp), min(w, wp)
    if (c, h, w) != (cp, hp, wp):
        t = b.pad(t, [0, 0, 0, 0, 0, cp - c, hp - h, wp - w], what="fill")
    return t


@EMITTERS.register("upsample")
def upsample(b: GraphBuilder, layer, params: Params, xs: list[str], out: str) -> None:
    # asymmetric + floor: in = floor(out / s), exactly Darknet's y//s for integer s
    s = float(layer.stride)
    scales = b.const([1.0, 1.0, s, s], np.float32)
    attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    if layer.scale == 1.0:
        b.op("Resize", [xs[0], "", scales], "resize", output=out, **attrs)
    else:
        y = b.op("Resize", [xs[0], "", scales], "resize", **attrs)
        b.op("Mul", [y, b.scalar(layer.scale)], "scale", output=out)


def _reorg(b: GraphBuilder, layer, xs: list[str], out: str, split: list[int]) -> None:
    c, h, w = layer.in_shapes[0]
    s = layer.stride
    y = b.reshape(xs[0], [0] + split, what="split")
    y = b.op("Transpose", [y], "transpose", perm=[0, 3, 5, 1, 2, 4])
    b.reshape(y, [0, c * s * s, h // s, w // s], output=out)


@EMITTERS.register("reorg")
def reorg(b: GraphBuilder, layer, params: Params, xs: list[str], out: str) -> None:
    # pj reorg_cpu (engine/layers/reorg.py:reorg_pj): x.reshape(C/s², H, s, W, s).transpose(2, 4, 0, 1, 3)
    c, h, w = layer.in_shapes[0]
    s = layer.stride
    _reorg(b, layer, xs, out, [c // (s * s), h, s, w, s])


@EMITTERS.register("reorg3d")
def reorg3d(b: GraphBuilder, layer, params: Params, xs: list[str], out: str) -> None:
    # true space-to-depth: x.reshape(C, H/s, s, W/s, s).transpose(2, 4, 0, 1, 3)
    c, h, w = layer.in_shapes[0]
    s = layer.stride
    _reorg(b, layer, xs, out, [c, h // s, s, w // s, s])


@EMITTERS.register("softmax")
def softmax(b: GraphBuilder, layer, params: Params, xs: list[str], out: str) -> None:
    c, h, w = layer.in_shapes[0]
    y = b.reshape(xs[0], [-1, c * h * w // layer.groups], what="groups")
    if layer.temperature != 1.0:
        y = b.op("Div", [y, b.scalar(layer.temperature)], "temperature")
    y = b.op("Softmax", [y], "softmax", axis=1)
    b.reshape(y, [-1, c, h, w], output=out)


@EMITTERS.register("dropout", "cost")
def identity(b: GraphBuilder, layer, params: Params, xs: list[str], out: str) -> None:
    b.op("Identity", xs, layer.kind, output=out)   # dropout: no 1/(1-p) scaling at inference


@EMITTERS.register("crop")
def crop(b: GraphBuilder, layer, params: Params, xs: list[str], out: str) -> None:
    # centred crop; values mapped x -> 2x - 1 unless noadjust=1
    _, h, w = layer.in_shapes[0]
    dy, dx = (h - layer.crop_height) // 2, (w - layer.crop_width) // 2
    window = ([dy, dx], [dy + layer.crop_height, dx + layer.crop_width], [2, 3])
    if layer.noadjust:
        b.slice(xs[0], *window, what="crop", output=out)
        return
    y = b.slice(xs[0], *window, what="crop")
    b.op("Sub", [b.op("Mul", [y, b.scalar(2.0)], "twice"), b.scalar(1.0)], "adjust", output=out)
