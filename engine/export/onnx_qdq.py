"""int8 QDQ ONNX export with our own scales, and its check in onnxruntime against HYBRID / INT.

    from engine.export.onnx_qdq import export_qdq, check_qdq
    export_qdq(model, qmodel, "tiny-int.onnx", mode="int")      # outputs layer15, layer22 (raw heads)
    check_qdq(model, qmodel, "tiny-int.onnx", images)           # {"layer15": {"max_abs": ...}, ...}

Graph = the float export (engine/export/onnx_float.py, same tensor names `layer{i}`) with
QuantizeLinear/DequantizeLinear pairs placed where our executor quantizes:
* every int8 conv / connected: input `Q(x, s_in) -> DQ`, weights `DQ(w_q int8, w_scale)` per output
  channel (axis 0) or per tensor, bias `DQ(b_q int32, s_in * w_scale)`: the int8 / int32 values
  are exactly `LayerQuant`'s;
* mode "hybrid": nothing else (outputs dequantized, activations in float, like HYBRID);
* mode "int": the output of every layer that requantizes in INT (conv, connected, shortcut,
  avgpool, crop, and route at the largest input scale) gets `Q(scale) -> DQ` with the scale that
  layer's int8 output has in `Executor(mode="int")`; maxpool / upsample / reorg / dropout keep
  the grid of their input, so they need none. Detection heads stay float, as in INT, and the
  convs that feed them output their dequantized int32 accumulators (no output Q/DQ).

Why the check uses a tolerance, not bit equality: (1) onnxruntime evaluates a DQ -> Conv in float32
(or fuses it into an integer QLinearConv whose requantization uses a float multiplier), while
our INT path accumulates in int32 and requantizes with a 15-bit fixed-point multiplier, with the
activation folded into that single rounding; a value that lands near a rounding tie can move by
one step, and that step then propagates; (2) ONNX int8 saturates at -128 where we saturate at
+-127 (only values beyond the calibrated range are affected); (3) float32 summation order.
Both sides round half to even. Expect max differences of a few output steps (INT) or ~1e-4 of
the head's range (HYBRID); `check_qdq` reports them per head, in absolute terms and in steps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engine.errors import UnsupportedError
from engine.quant.modes import QUANT_MODES, Mode

QDQ_MODES = QUANT_MODES
QDQ_PROFILES = ("qwidgets",)      # the profiles whose grids a QDQ graph holds (check_profile)


def check_profile(qmodel) -> None:
    """The QDQ graph holds symmetric int8 grids (zero point 0) placed where the `qwidgets` profile
    requantizes: another profile's model (uint8 with zero points, a pre-activation grid, lookup-table
    concat, truncation) would come out on other grids, 80-120 output steps off its INT heads on
    yolov3-tiny, without a word. Raises EngineError naming the profile and the export that fits it."""
    from engine.errors import EngineError
    from engine.quant.profiles import get_profile
    if qmodel.profile in QDQ_PROFILES:
        return
    fits = get_profile(qmodel.profile).exportable
    hint = (f"export it with --format {fits} (engine.export.onnx_int8.export_int8), bit-exact with its INT run"
            if fits else f"no ONNX export runs the arithmetic of profile '{qmodel.profile}'; quantize with "
                         f"--profile qwidgets for a QDQ graph, or --profile onnxruntime for --format onnx-int8")
    raise EngineError(f"the QDQ export holds the 'qwidgets' profile's symmetric int8 grids; this quantized model "
                      f"uses profile '{qmodel.profile}' ({get_profile(qmodel.profile).title}): {hint}")


def int_output_scales(model, qmodel, ex) -> dict[int, float | None]:
    """Scale of each layer's int8 output under the executor's INT policy (None: float output).

    Mirrors engine/quant/int_layers.py: requantizing layers use their calibrated scale, shape-only
    layers keep their input's, route takes the largest input scale; a conv read only by detection
    heads outputs its dequantized int32 accumulators (no output Q/DQ).
    """
    out: dict[int, float | None] = {}

    def in_scale(src: int) -> float:
        s = out.get(src) if src >= 0 else None
        return s if s is not None else qmodel.scales["input" if src < 0 else str(src)]

    for layer in model.layers:
        i = layer.index
        if ex.precision(i) != "int8" or ex.int32_out(i):
            out[i] = None
        elif layer.shape_only:
            out[i] = in_scale(layer.inputs[0]) * (layer.scale if layer.kind == "upsample" else 1.0)
        elif layer.kind == "route":
            out[i] = max(in_scale(s) for s in layer.inputs)
        else:
            out[i] = qmodel.scales.get(str(i), 1.0)
    return out


def _qdq(b, x: str, scale: float, what: str, output: str | None = None) -> str:
    s = b.const(np.float32(scale), np.float32)
    zp = b.const(np.int8(0), np.int8)
    q = b.op("QuantizeLinear", [x, s, zp], f"{what}_q")
    return b.op("DequantizeLinear", [q, s, zp], f"{what}_dq", output=output)


def _dq_param(b, name: str, values: np.ndarray, scale: np.ndarray, zero_dtype) -> str:
    """A DequantizeLinear of an integer initializer; per-axis-0 scales when there are several."""
    onnx = b.onnx
    v = b.name(name)
    b.initializers.append(onnx.numpy_helper.from_array(np.ascontiguousarray(values), v))
    scale = np.asarray(scale, np.float32).ravel()
    per_channel = scale.size > 1
    s = b.name(f"{name}_scale")
    zp = b.name(f"{name}_zero")
    b.initializers.append(onnx.numpy_helper.from_array(scale if per_channel else scale.reshape(()), s))
    zeros = np.zeros(scale.size if per_channel else (), zero_dtype)
    b.initializers.append(onnx.numpy_helper.from_array(zeros, zp))
    return b.op("DequantizeLinear", [v, s, zp], f"{name}_dq", **({"axis": 0} if per_channel else {}))


def _int_params(layer, lq, s_in: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(w_q, w_scale (n,), b_q for input scale s_in: the INT path's own `bias_for`)."""
    from engine.quant.int_layers import bias_for
    return lq.w_q, np.asarray(lq.w_scale, np.float64), bias_for(lq, s_in)


def _emit_int8_linear(b, layer, lq, x: str, s_in: float, out: str) -> None:
    from engine.export.onnx_ops import then_activate
    w_q, w_scale, b_q = _int_params(layer, lq, s_in)
    n = w_q.shape[0]
    acc_scale = s_in * np.broadcast_to(w_scale, (n,))
    w = _dq_param(b, "weights", w_q, w_scale, np.int8)          # initializer layer{i}_weights
    bias = _dq_param(b, "biases", b_q.astype(np.int32), acc_scale, np.int32)
    if layer.kind == "convolutional":
        xq = _qdq(b, x, s_in, "input")
        k, s, p = layer.size, layer.stride, layer.padding
        then_activate(b, layer, "Conv", [xq, w, bias], "conv", layer.activation, out, kernel_shape=[k, k],
                      strides=[s, s], pads=[p, p, p, p], group=layer.groups, dilations=[1, 1])
    else:   # connected: (out, in) weights, CHW-flattened input
        from engine.export.onnx_ops import activation
        xq = _qdq(b, b.op("Flatten", [x], "flatten", axis=1), s_in, "input")
        y = activation(b, layer, b.op("Gemm", [xq, w, bias], "gemm", transB=1), layer.activation)
        b.reshape(y, [0, layer.output, 1, 1], output=out)


def build_qdq(model, qmodel, *, mode: str = "int", heads: str = "raw", opset: int = 17,
              all_outputs: bool = False) -> Any:
    """The QDQ ModelProto of `model` quantized by `qmodel` in `mode` (see the module docstring).

    Raises: ValueError (mode, opset < 13), EngineError (cfg mismatch, onnx missing, a profile other than
    `qwidgets`: `check_profile`), UnsupportedError.
    """
    if mode not in QDQ_MODES:
        raise ValueError(f"mode={mode!r}: expected one of {', '.join(QDQ_MODES)}")
    if opset < 13:
        raise ValueError(f"opset={opset}: per-channel QuantizeLinear/DequantizeLinear need opset >= 13")
    from engine.export import onnx_float
    from engine.export import onnx_heads  # noqa: F401  (registers the head emitters)
    from engine.export.onnx_graph import GraphBuilder
    from engine.export.onnx_ops import EMITTERS
    from engine.quant.executor import Executor
    check_profile(qmodel)
    onnx = onnx_float.import_onnx()
    qmodel.check_matches(model)
    ex = Executor(model, qmodel, mode)
    int_scale = int_output_scales(model, qmodel, Executor(model, qmodel, Mode.INT8)) if mode == Mode.INT8 else {}
    b = GraphBuilder(onnx, opset)
    for i in onnx_float.exported_layers(model, heads):
        layer = model.layers[i]
        b.scope = f"layer{i}"
        xs = ["input" if j < 0 else f"layer{j}" for j in layer.inputs]
        out = f"layer{i}"
        int8 = ex.precision(i) == "int8"
        requant = mode == Mode.INT8 and int8 and not layer.shape_only and int_scale[i] is not None
        y = f"layer{i}_real" if requant else out
        if int8 and layer.int8_weights:
            src = layer.inputs[0]
            if mode == Mode.HYBRID:
                s_in = qmodel.layers[i].in_scale
            else:
                s_in = int_scale.get(src) if src >= 0 and int_scale.get(src) is not None else \
                    qmodel.scales["input" if src < 0 else str(src)]
            _emit_int8_linear(b, layer, qmodel.layers[i], xs[0], s_in, y)
        elif layer.kind in EMITTERS:
            EMITTERS.get(layer.kind)(b, layer, model.params[i], xs, y)
        else:
            raise UnsupportedError(f"{layer.where()}: [{layer.kind}] has no ONNX export")
        if requant:
            _qdq(b, y, int_scale[i], "out", output=out)
    value = onnx.helper.make_tensor_value_info
    inputs = [value("input", onnx.TensorProto.FLOAT, [1, *model.input_shape])]
    outputs = [value(f"layer{i}", onnx.TensorProto.FLOAT, [1, *model.layers[i].out_shape])
               for i in onnx_float.output_layers(model, heads, all_outputs)]
    graph = onnx.helper.make_graph(b.nodes, f"{model.graph.name}-qdq-{mode}", inputs, outputs, b.initializers,
                                   doc_string=f"Darknet {model.graph.name}, int8 QDQ ({mode.upper()}, "
                                              f"{qmodel.describe()}) exported by qwidgets engine")
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   producer_name="qwidgets-engine", producer_version="0.1.0")
    proto.ir_version = min(proto.ir_version, onnx_float.min_ir_version(onnx, opset))
    import json
    onnx.helper.set_model_props(proto, {"darknet_heads": json.dumps(onnx_float.head_info(model, heads)),
                                        "quantization": json.dumps({"mode": mode, "method": qmodel.method,
                                                                    "per_channel": qmodel.per_channel})})
    return proto


def export_qdq(model, qmodel, path: str | Path, *, mode: str = "int", heads: str = "raw", opset: int = 17,
               all_outputs: bool = False, check: bool = True) -> Path:
    """Write the QDQ graph (see `build_qdq`) to `path`; `check` runs onnx.checker. Returns the path.
    `all_outputs=True` also exposes every layer's `layer{i}` (to find where two runs part)."""
    from engine.export.onnx_float import import_onnx
    onnx = import_onnx()
    proto = build_qdq(model, qmodel, mode=mode, heads=heads, opset=opset, all_outputs=all_outputs)
    if check:
        onnx.checker.check_model(proto)
    from engine.atomic import atomic_write
    return atomic_write(Path(path), proto.SerializeToString())


def check_qdq(model, qmodel, path: str | Path, images: Sequence, mode: str = "int",
              optimize: bool = True) -> dict[str, dict]:
    """Run the exported QDQ graph in onnxruntime on `images` and compare each output head with our
    `Executor(mode)`: {"layer15": {"max_abs", "max_rel" (of the head's max |value|), "steps"
    (max_abs / the head's INT output scale, or its calibrated scale when it gets dequantized int32
    accumulators; nan in hybrid), "mean_abs"}}. Raises EngineError if
    onnxruntime is missing."""
    from engine.export.onnx_graph import ort_session
    from engine.quant.executor import Executor
    check_profile(qmodel)
    sess, names = ort_session(path, "checking an ONNX export", optimize=optimize)
    ex = Executor(model, qmodel, mode)
    scales = int_output_scales(model, qmodel, ex) if mode == Mode.INT8 else {}
    worst: dict[str, dict] = {n: {"max_abs": 0.0, "max_rel": 0.0, "mean_abs": 0.0} for n in names}
    for image in images:
        x = model.preprocess(image).x
        ours = ex.forward(x)
        got = sess.run(names, {"input": x[None]})
        for n, y in zip(names, got):
            ref = ours[int(n[len("layer"):])]
            d = np.abs(y[0].astype(np.float64) - ref)
            w = worst[n]
            w["max_abs"] = max(w["max_abs"], float(d.max()))
            w["max_rel"] = max(w["max_rel"], float(d.max() / max(1e-12, float(np.abs(ref).max()))))
            w["mean_abs"] = max(w["mean_abs"], float(d.mean()))
    for n, w in worst.items():
        i = int(n[len("layer"):])
        # a head fed int32 accumulators has no int8 grid: count in its calibrated output scale
        s = (scales.get(i) or qmodel.scales.get(str(i))) if mode == Mode.INT8 else None
        w["steps"] = w["max_abs"] / s if s else float("nan")
    return worst
