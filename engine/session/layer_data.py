"""What a layer is, independent of any run: its graph node, quantization and parameter arrays.

Plain functions of (model, quantized model, executor) the Session's inspection methods
(`layer_info`, `weights`, `thresholds`) answer with; the views reach them through the Session.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from engine.errors import ArgumentError, EngineError
from engine.quant.qtensor import dequantize_weights


def layer_info(model, qmodel, executor, index: int) -> dict[str, Any]:
    """Graph facts, precision and quantization parameters of layer `index` (a checked index)."""
    node = model.graph.node(index)
    info = {"index": index, "id": node.id, "kind": node.kind, "inputs": list(node.inputs),
            "in_shapes": [list(s) for s in node.in_shapes], "out_shape": list(node.out_shape),
            "params": node.params, "macs": node.macs, "attrs": dict(node.attrs),
            "precision": executor.precision(index), "mode": executor.mode}
    if qmodel is not None:
        info["out_scale"] = qmodel.scales.get(str(index))
        info["threshold"] = qmodel.thresholds.get(str(index))
        lq = qmodel.layers.get(index)
        if lq is not None:
            info["in_scale"] = lq.in_scale
            info["weight_scale"] = (float(lq.w_scale.min()), float(lq.w_scale.max()))
            info["weight_scheme"] = lq.scheme
            info["per_channel"] = lq.w_scale.size > 1
    return info


def layer_weights(model, qmodel, index: int, kind: str = "float") -> dict[str, np.ndarray]:
    """Copies of a layer's parameters: kind "float" (raw cfg params), "fused" (batch norm folded
    in: the weights and biases the int8 ones approximate), "int8" (w_q, b_q, w_scale) or "dequantized"
    (weights: the int8 weights' real values w_q * w_scale, float32 (`dequantize_weights`); w_scale)."""
    if kind == "float":
        return {k: v.copy() for k, v in model.params[index].items()}
    if kind == "fused":
        layer = model.layers[index]
        if not layer.int8_weights:
            raise EngineError(f"layer {index} [{layer.kind}] has no weights")
        w, b = layer.fused(model.params[index])
        return {"weights": np.array(w, dtype=np.float32), "biases": np.array(b, dtype=np.float32)}
    if kind in ("int8", "dequantized"):
        lq = None if qmodel is None else qmodel.layers.get(index)
        if lq is None:
            raise EngineError(f"layer {index} [{model.layers[index].kind}] has no int8 weights")
        if kind == "dequantized":
            return {"weights": dequantize_weights(lq.w_q, lq.w_scale), "w_scale": np.array(lq.w_scale, copy=True)}
        return {"w_q": lq.w_q.copy(), "b_q": lq.b_q.copy(), "w_scale": np.array(lq.w_scale, copy=True)}
    raise ArgumentError(f"kind={kind!r}: expected 'float', 'fused', 'int8' or 'dequantized'")


def calibrator_thresholds(qmodel, node_id: int | str, model=None, *, raw: bool = False) -> dict[str, float]:
    """The threshold every registered calibration method picks for this tensor ({} without stats).

    With `model`: the one quantizing with that method sets, under the calibration rules
    (engine/calib/views.py: the one-sided histogram of a leaky output, its scale group's histogram, the image and
    the first layer never clipped; the rules the quantized model was made with, else each method's own); {} for
    a tensor no rule quantizes (a head's output). `raw` (or no model): each calibrator on the tensor's own |x|
    histogram, which the first layer's marks showed below its maximum though no method clips it there."""
    from engine.calib import CALIBRATORS, make
    from engine.calib.views import views
    if qmodel is None or qmodel.stats is None:
        return {}
    # `auto` has no threshold of its own: it picks one of the others per tensor by running the model
    names = [n for n in CALIBRATORS.names() if not getattr(CALIBRATORS.get(n), "needs_images", False)]
    if model is None or raw:
        h = qmodel.stats.hists.get(str(node_id))
        if h is None or h.amax == 0:
            return {}
        return {name: make(name).threshold(h) for name in names}
    made = qmodel.meta.get("rules")             # quantize(rules=...) recorded them
    seen: dict[tuple, Any] = {}
    out = {}
    for name in names:
        # the quantized model's own method with its settings (kl clip_max=1 is another threshold than kl's)
        cal = make(name, **(qmodel.settings or {})) if name == qmodel.method else make(name)
        rules = tuple(cal.rules if made is None else made)
        if rules not in seen:
            seen[rules] = views(model, qmodel.stats, rules).get(str(node_id))
        view = seen[rules]
        if view is None or view.hist.amax == 0:
            return {}
        out[name] = float(cal.group_threshold(view))
    return out
