"""Data for LayerPanel.show from a FLOAT run (and, optionally, an INT run's dequantized outputs).

`layer_panel_data(model, outs, node_id, x=...)` reads the layer's structure from `model.graph`,
its tensors from `outs` (what `model.forward(x)` returned) and its weights from `model.params`,
and encodes them with `qwidgets._encode`; every number comes from `engine.session.stats`.
No widgets here (`_session_panel` builds on it for the Explorer).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from engine.graph import INPUT
from engine.layers.route import join_inputs  # noqa: F401  (the engine's join, re-exported for callers here)
from engine.session.stats import default_markers, error_map, error_row, histogram_counts, tensor_row
from qwidgets._encode import feature_montage, heatmap_png, histogram_png, weights_png

BINS = 128
ATTR_KEYS = ("filters", "size", "stride", "padding", "groups", "batch_normalize", "activation", "layers", "from",
             "classes", "mask")


IN_USE = "in use (127 x scale)"


def hist_image(series: Mapping[str, Any], title: str, thresholds: Mapping[str, float] | None,
               log2: bool, log_y: bool, in_use: float | None = None,
               counts: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> bytes:
    """Overlaid histograms of the named tensors with threshold markers (default: max|x|, p99.9) and the
    threshold the quantized model uses (`in_use`, drawn thicker). A series is an array or a callable
    returning it (then only called when needed); `counts`: their `histogram_counts` already computed."""
    def array(v):
        return v() if callable(v) else v
    if counts is None:
        counts = {k: histogram_counts(array(v), BINS, log2=log2) for k, v in series.items()}
    if thresholds is None:
        first = next(iter(series))
        thresholds = default_markers(array(series[first]) if log2 else None, *counts[first], log2)
    marks = dict(thresholds)
    if in_use is not None:
        marks[IN_USE] = in_use
    return histogram_png(counts, marks, log_y=log_y, log_x=log2, title=title,
                         in_use=IN_USE if in_use is not None else None)


def layer_input(model, outs: Sequence[np.ndarray], index: int, x: np.ndarray | None) -> np.ndarray | None:
    """The layer's input (`engine.layers.route.join_inputs`) from a FLOAT run's outputs."""
    srcs = model.layers[index].inputs
    if any(i < 0 for i in srcs) and x is None:
        return None
    return join_inputs(model.inputs_of(index, x, outs))


def layer_info(model, node_id: str) -> dict[str, Any]:
    """Structure of one node for the info table (id, kind, inputs, shapes, params, MACs, cfg keys)."""
    if node_id == INPUT:
        return {"id": INPUT, "kind": "input", "out_shape": tuple(model.input_shape)}
    n = model.graph.node(node_id)
    info: dict[str, Any] = {"id": n.id, "kind": n.kind, "inputs": ", ".join(n.inputs),
                            "in_shapes": [tuple(s) for s in n.in_shapes], "out_shape": tuple(n.out_shape),
                            "params": int(n.params), "MACs": int(n.macs)}
    info.update({k: n.attrs[k] for k in ATTR_KEYS if k in n.attrs})
    info["cfg line"] = n.line
    return info


def layer_panel_data(model, outs: Sequence[np.ndarray], node_id: str, x: np.ndarray | None = None, *,
                     int_outs: Sequence[np.ndarray] | None = None, scales: Mapping[str, float] | None = None,
                     thresholds: Mapping[str, float] | None = None, log2: bool = False,
                     log_y: bool = False) -> tuple[dict[str, Any], dict[str, bytes], list[dict[str, Any]]]:
    """(info, images, stats_rows) for `LayerPanel.show` of node `node_id`.

    outs: FLOAT outputs of `model.forward(x)` (one (C, H, W) float32 per layer); x: the network
    input (needed for the input of layer 0 and for node "input"); int_outs: the INT run's
    dequantized outputs (adds FLOAT / INT / error images, an INT histogram series and an error
    row); scales: shown in the info table; thresholds: label -> value markers on the output
    histogram (default max|y| and p99.9); log2 / log_y: histogram bins and count axis.
    Raises: KeyError for an unknown node id.
    """
    info = layer_info(model, node_id)
    info["scales"] = dict(scales) if scales else "- (FLOAT run)"
    images: dict[str, bytes] = {}
    rows: list[dict[str, Any]] = []
    if node_id == INPUT:
        if x is not None:
            images["output"] = feature_montage(x, labels=True, size=128, cols=3)
            images["hist_output"] = hist_image({"input": x}, "network input", thresholds, log2, log_y)
            rows.append(tensor_row("input", x))
        return info, images, rows
    index = model.graph.node(node_id).index
    y = outs[index]
    xin = layer_input(model, outs, index, x)
    if xin is not None:
        images["input"] = feature_montage(xin, labels=True)
        images["hist_input"] = hist_image({"FLOAT": xin}, f"layer {node_id} input", None, log2, log_y)
        rows.append(tensor_row("input", xin))
    images["output"] = feature_montage(y, labels=True)
    series = {"FLOAT": y}
    rows.append(tensor_row("output", y))
    if int_outs is not None:
        y_int = np.asarray(int_outs[index], np.float32)
        series["INT"] = y_int
        images["float"] = feature_montage(y, max_channels=16, cols=4, normalize="global")
        images["int"] = feature_montage(y_int, max_channels=16, cols=4, normalize="global")
        diff, vmax = error_map(y_int, y, channels=16)
        images["heatmap"] = heatmap_png(diff, vmax=vmax, max_channels=16, cols=4)
        rows.append(tensor_row("output INT", y_int))
        rows.append(error_row("INT - FLOAT", y, y_int))
    images["hist_output"] = hist_image(series, f"layer {node_id} output", thresholds, log2, log_y)
    w = model.params[index].get("weights")
    if w is not None and w.ndim in (2, 4):
        images["weights"] = weights_png(w)
        images["hist_weights"] = hist_image({"weights": w}, f"layer {node_id} weights", None, log2, log_y)
        rows.append(tensor_row("weights", w))
    return info, images, rows
