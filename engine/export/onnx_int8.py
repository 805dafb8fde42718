"""`export --format onnx-int8`: an integer ONNX graph (QOperator form) that ONNX Runtime's CPU provider
runs with its integer kernels, bit-exact with our INT executor under the `onnxruntime` profile.

    from engine.export.onnx_int8 import export_int8
    export_int8(model, qmodel, "tiny-int8.onnx", all_outputs=True)   # float32 outputs layer0 ... layer22

Per Darknet layer (the profile's rules, engine/quant/profiles/onnxruntime.py):
* input: QuantizeLinear to uint8 with the input's (scale, zero point);
* conv: QLinearConv (uint8 activations; weights uint8 with zero point 128 for `onnxruntime`, int8 with
  zero point 0 for `avx2_u8s8`; int32 bias), then `com.microsoft.QLinearLeakyRelu` (alpha 0.1) from the
  pre-activation grid to the output grid for leaky; relu is the clamp of a zero-point-0 grid;
* route: Slice for groups, Concat when every input is on the output grid, else `com.microsoft.QLinearConcat`;
* shortcut (equal shapes, linear): `com.microsoft.QLinearAdd`;
* maxpool: uint8 MaxPool; upsample: uint8 Resize (nearest, asymmetric, floor); reorg: Reshape/Transpose;
* every exposed `layer<i>` is a float32 DequantizeLinear of the layer's uint8 tensor (`layer<i>_q`);
  a conv read only by detection heads is a ConvInteger whose int32 sums (+ bias) are cast to float32 and
  multiplied by the float32 x_scale * w_scale[c]; the heads stay float (raw head inputs, or activated with
  `heads="activated"`).
Layers outside these (other shortcuts and activations, connected, avgpool) raise UnsupportedError: the file
would not be integer end to end, or not bit-exact.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import EngineError, UnsupportedError

FORMAT = "onnx-int8"
MS = "com.microsoft"
INT_KINDS = ("convolutional", "maxpool", "upsample", "route", "reorg", "reorg3d", "dropout", "shortcut")


def _grid_consts(b, scale: float, zp: int) -> tuple[str, str]:
    return b.const(np.float32(scale), np.float32), b.const(np.uint8(zp), np.uint8)


def _conv(b, layer, lq, x: str, grid: tuple[float, int], qmodel, signed: bool) -> tuple[str, tuple[float, int]]:
    from engine.quant.int_layers import bias_for
    from engine.quant.profiles.onnxruntime import tensor_grid
    i = str(layer.index)
    n = lq.w_q.shape[0]
    act = layer.activation
    out = tensor_grid(qmodel, i)
    if act == "leaky":
        mid = (qmodel.pre_scales[i], int(qmodel.pre_zero_points[i]))
    elif act == "linear" or (act == "relu" and out[1] == 0):
        mid = out
    else:
        raise UnsupportedError(f"{layer.where()}: activation '{act}' has no integer ONNX kernel in this export")
    onnx = b.onnx
    w_name, ws_name, wz_name, b_name = (b.name(w) for w in ("weights", "weights_scale", "weights_zero", "bias"))
    if signed:
        w, wz = lq.w_q, np.zeros(n, np.int8)
    else:
        w, wz = (lq.w_q.astype(np.int16) + 128).astype(np.uint8), np.full(n, 128, np.uint8)
    ws = np.broadcast_to(np.asarray(lq.w_scale, np.float64), (n,)).astype(np.float32)
    for arr, name in ((w, w_name), (ws, ws_name), (wz, wz_name), (bias_for(lq, grid[0]).astype(np.int32), b_name)):
        b.initializers.append(onnx.numpy_helper.from_array(np.ascontiguousarray(arr), name))
    k, s, p = layer.size, layer.stride, layer.padding
    y = b.op("QLinearConv", [x, *_grid_consts(b, *grid), w_name, ws_name, wz_name, *_grid_consts(b, *mid), b_name],
             "qconv", kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p], group=layer.groups, dilations=[1, 1])
    if act == "leaky":
        y = b.op("QLinearLeakyRelu", [y, *_grid_consts(b, *mid), *_grid_consts(b, *out)], "qleaky", domain=MS,
                 alpha=0.1)
    return y, out


def _head_conv(b, layer, lq, x: str, grid: tuple[float, int], signed: bool, out: str) -> None:
    """ConvInteger (int32 sums) + int32 bias, Cast to float32, Mul by float32 x_scale * w_scale[c] -> `out`."""
    from engine.quant.int_layers import bias_for
    if layer.activation != "linear":
        raise UnsupportedError(f"{layer.where()}: a head conv with activation '{layer.activation}' is not exported")
    onnx = b.onnx
    n = lq.w_q.shape[0]
    w, wz = (lq.w_q, np.int8(0)) if signed else ((lq.w_q.astype(np.int16) + 128).astype(np.uint8), np.uint8(128))
    ws = np.broadcast_to(np.asarray(lq.w_scale, np.float64), (n,)).astype(np.float32)
    scale = np.multiply(np.float32(grid[0]), ws, dtype=np.float32).reshape(1, n, 1, 1)
    names = [b.name(w_) for w_ in ("weights", "bias", "scale")]
    for arr, name in ((w, names[0]), (bias_for(lq, grid[0]).astype(np.int32).reshape(1, n, 1, 1), names[1]),
                      (scale, names[2])):
        b.initializers.append(onnx.numpy_helper.from_array(np.ascontiguousarray(arr), name))
    k, s, p = layer.size, layer.stride, layer.padding
    acc = b.op("ConvInteger", [x, names[0], b.const(np.uint8(grid[1]), np.uint8), b.const(wz, wz.dtype)], "convint",
               kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p], group=layer.groups, dilations=[1, 1])
    acc = b.op("Add", [acc, names[1]], "bias")
    f = b.op("Cast", [acc], "float", to=onnx.TensorProto.FLOAT)
    b.op("Mul", [f, names[2]], "dequantize", output=out)


def _maxpool(b, layer, x: str) -> str:
    k, s, p = layer.size, layer.stride, layer.padding
    top, bottom = p // 2, p - p // 2
    if bottom >= k:    # onnxruntime wants each pad < kernel: pad with the smallest code first (never wins)
        x = b.op("Pad", [x, b.const([0, 0, top, top, 0, 0, bottom, bottom]), b.const(np.uint8(0), np.uint8)],
                 "pad", mode="constant")
        top = bottom = 0
    return b.op("MaxPool", [x], "maxpool", kernel_shape=[k, k], strides=[s, s], pads=[top, top, bottom, bottom])


def _route(b, layer, xs: list[str], grids: list[tuple[float, int]], qmodel) -> tuple[str, tuple[float, int]]:
    from engine.quant.profiles.onnxruntime import tensor_grid
    parts = []
    for x, (c, _, _) in zip(xs, layer.in_shapes):
        if layer.groups == 1:
            parts.append(x)
        else:
            n = c // layer.groups
            parts.append(b.slice(x, [layer.group_id * n], [(layer.group_id + 1) * n], [1], what="group"))
    if len(parts) == 1:
        return b.op("Identity", parts, "route"), grids[0]
    out = tensor_grid(qmodel, str(layer.index))
    if all(g == out for g in grids):
        return b.op("Concat", parts, "concat", axis=1), out
    ins = [*_grid_consts(b, *out)]
    for x, g in zip(parts, grids):
        ins += [x, *_grid_consts(b, *g)]
    return b.op("QLinearConcat", ins, "qconcat", domain=MS, axis=1), out


def build_int8(model, qmodel, *, heads: str = "raw", opset: int = 17, all_outputs: bool = False,
               dynamic_batch: bool = False, signed_weights: bool | None = None) -> Any:
    """The integer ModelProto of `model` under `qmodel` (profile onnxruntime or avx2_u8s8); `dynamic_batch`:
    a symbolic batch axis `N` instead of 1. `signed_weights=True` exports an `onnxruntime` model's weights
    as int8 (zero point 0) instead of uint8 (zero point 128): the same integer sums wherever the runtime's
    u8 x s8 kernel is exact (VNNI, `host_u8s8_kernel() == "vnni"`), and there it runs the VNNI kernel, about
    1.7x the u8 x u8 one's images/s; elsewhere it would saturate pairs, so the default stays the profile's."""
    from engine.export import onnx_float
    from engine.export import onnx_heads  # noqa: F401  (registers the head emitters)
    from engine.export.onnx_graph import GraphBuilder
    from engine.export.onnx_ops import EMITTERS
    from engine.quant.executor import Executor
    from engine.quant.profiles import PROFILES, get_profile
    profile = get_profile(qmodel.profile)
    if profile.exportable != FORMAT:
        runs = [name for name in PROFILES.names() if get_profile(name).exportable == FORMAT]
        named = ", ".join(map(repr, runs[:-1])) + f" or {runs[-1]!r}" if len(runs) > 1 else repr(runs[0])
        raise EngineError(f"--format {FORMAT} runs the arithmetic of profile {named}; this "
                          f"quantized model uses profile '{qmodel.profile}': quantize with --profile onnxruntime")
    if opset < 13:
        raise ValueError(f"opset={opset}: per-channel quantization parameters need opset >= 13")
    if signed_weights is None:
        signed_weights = profile.signed_weights
    elif profile.signed_weights and not signed_weights:
        raise ValueError(f"signed_weights=False: profile '{qmodel.profile}' computes int8 weights' int16-saturating "
                         f"pairs, which uint8 weights would not reproduce")
    onnx = onnx_float.import_onnx()
    qmodel.check_matches(model)
    ex = Executor(model, qmodel, "int")
    emitted = onnx_float.exported_layers(model, heads)
    outputs = onnx_float.output_layers(model, heads, all_outputs)
    readers: dict[int, list[int]] = {}
    for layer in model.layers:
        for src in layer.inputs:
            readers.setdefault(src, []).append(layer.index)
    b = GraphBuilder(onnx, opset)
    b.scope = "input"
    in_grid = (qmodel.scales["input"], int(qmodel.zero_points.get("input", 0)))
    q_names: dict[int, str] = {-1: b.op("QuantizeLinear", ["input", *_grid_consts(b, *in_grid)], "q")}
    grid: dict[int, tuple[float, int]] = {-1: in_grid}
    for i in emitted:
        layer = model.layers[i]
        b.scope = f"layer{i}"
        if ex.precision(i) == "float":
            # a float layer other than a head (avgpool, softmax, ...) would make the file neither integer end to
            # end nor bit-exact with the executor (float rounding differs), as the module docstring says
            if i in ex.float_layers and layer.kind in INT_KINDS:
                raise UnsupportedError(f"{layer.where()}: kept in float by the quantized model's float layers "
                                       f"{sorted(ex.float_layers)} (mixed precision); the integer export has no "
                                       f"float layer between integer ones: quantize without float_layers")
            if layer.kind not in EMITTERS or layer.kind in INT_KINDS or not layer.is_head:
                raise UnsupportedError(f"{layer.where()}: runs in float under profile '{qmodel.profile}'; the "
                                       f"integer export supports {', '.join(INT_KINDS)} and float detection heads")
            EMITTERS.get(layer.kind)(b, layer, model.params[i], [f"layer{j}" for j in layer.inputs], f"layer{i}")
            continue
        if layer.kind not in INT_KINDS:
            raise UnsupportedError(f"{layer.where()}: [{layer.kind}] has no integer ONNX export "
                                   f"(supported: {', '.join(INT_KINDS)})")
        xs, gs = [q_names[j] for j in layer.inputs], [grid[j] for j in layer.inputs]
        if ex.int32_out(i):
            _head_conv(b, layer, qmodel.layers[i], xs[0], gs[0], signed_weights, f"layer{i}")
            continue
        if layer.kind == "convolutional":
            y, g = _conv(b, layer, qmodel.layers[i], xs[0], gs[0], qmodel, signed_weights)
        elif layer.kind == "maxpool":
            y, g = _maxpool(b, layer, xs[0]), gs[0]
        elif layer.kind == "upsample":
            y = b.op("Resize", [xs[0], "", b.const([1.0, 1.0, layer.stride, layer.stride], np.float32)], "resize",
                     mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
            g = (float(np.float32(gs[0][0] * layer.scale)), gs[0][1])
        elif layer.kind == "route":
            y, g = _route(b, layer, xs, gs, qmodel)
        elif layer.kind == "shortcut":
            from engine.quant.profiles.onnxruntime import qlinear_add_fits, tensor_grid
            if not qlinear_add_fits(layer):
                shapes = " and ".join(str(tuple(sh)) for sh in layer.in_shapes)
                raise UnsupportedError(f"{layer.where()}: only a linear shortcut of two equal shapes with weights 1 "
                                       f"is a QLinearAdd; this one has activation '{layer.activation}', inputs "
                                       f"{shapes}, weights {layer.alpha:g} and {layer.beta:g}")
            g = tensor_grid(qmodel, str(i))
            y = b.op("QLinearAdd", [xs[0], *_grid_consts(b, *gs[0]), xs[1], *_grid_consts(b, *gs[1]),
                                    *_grid_consts(b, *g)], "qadd", domain=MS)
        elif layer.kind in ("reorg", "reorg3d"):
            y = b.name("reorg")
            EMITTERS.get(layer.kind)(b, layer, model.params[i], xs, y)
            g = gs[0]
        else:
            y, g = b.op("Identity", xs, "dropout"), gs[0]
        q_names[i], grid[i] = y, g
        float_readers = [r for r in readers.get(i, []) if r in emitted and ex.precision(r) == "float"]
        if i in outputs or float_readers:
            b.op("DequantizeLinear", [y, *_grid_consts(b, *g)], "dq", output=f"layer{i}")
    value = onnx.helper.make_tensor_value_info
    batch: int | str = "N" if dynamic_batch else 1
    graph = onnx.helper.make_graph(
        b.nodes, f"{model.graph.name}-int8-{qmodel.profile}",
        [value("input", onnx.TensorProto.FLOAT, [batch, *model.input_shape])],
        [value(f"layer{i}", onnx.TensorProto.FLOAT, [batch, *model.layers[i].out_shape]) for i in outputs],
        b.initializers, doc_string=f"Darknet {model.graph.name}, integer ({qmodel.describe()}) exported by qwidgets")
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset),
                                                         onnx.helper.make_opsetid(MS, 1)],
                                   producer_name="qwidgets-engine", producer_version="0.1.0")
    proto.ir_version = min(proto.ir_version, onnx_float.min_ir_version(onnx, opset))
    onnx.helper.set_model_props(proto, {
        "darknet_heads": json.dumps(onnx_float.head_info(model, heads)),
        "quantization": json.dumps({"profile": qmodel.profile, "method": qmodel.method,
                                    "per_channel": qmodel.per_channel}),
        # each int8 tensor's (scale, zero point): a reader recovers the uint8 codes of a `layer<i>` output
        "grids": json.dumps({str(i): [float(g[0]), int(g[1])] for i, g in grid.items() if i >= 0})})
    return proto


def export_int8(model, qmodel, path: str | Path, *, heads: str = "raw", opset: int = 17,
                all_outputs: bool = False, signed_weights: bool | None = None) -> Path:
    """Write `build_int8` to `path` atomically (onnx.checker first). Returns the path."""
    from engine.atomic import atomic_write
    from engine.export.onnx_float import import_onnx
    onnx = import_onnx()
    proto = build_int8(model, qmodel, heads=heads, opset=opset, all_outputs=all_outputs, signed_weights=signed_weights)
    onnx.checker.check_model(proto)
    return atomic_write(path, proto.SerializeToString())


def run_ort(path_or_proto, x: np.ndarray, optimize: bool = True) -> dict[str, np.ndarray]:
    """Every output of the exported graph on one (C, H, W) input: {"layer<i>": (C, H, W) float32}.
    Raises EngineError if onnxruntime is not installed."""
    from engine.export.onnx_graph import ort_session
    sess, names = ort_session(path_or_proto, "running an ONNX export", optimize=optimize)
    return {n: y[0] for n, y in zip(names, sess.run(names, {"input": x[None].astype(np.float32)}))}
