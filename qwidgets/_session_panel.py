"""Layer-panel data of a Session's node: the FLOAT reference against what this mode's run computed.

Everything comes from the Session API: `float_reference()` (FLOAT outputs of the edited model),
`layer_info`, `output` / `inputs` (the tensors the session's run produced and fed the layer),
`weights(i)` / `weights(i, "int8")` and `thresholds(tensor id)`. In HYBRID / INT the three
histograms overlay the run on FLOAT:

- input: the FLOAT reference input vs the input the run fed the layer (its producers' dequantized
  outputs), with every calibration method's threshold for that tensor (id = the producer's node id,
  or "input"; concatenated multi-input routes get the default markers);
- output: FLOAT vs the run's output (or the CROSS pair), with the output tensor's thresholds;
- weights: the BN-folded FLOAT weights (what the int8 weights approximate) vs w_q * w_scale.

Weight data changes only with an edit or another quantized model, so it is cached (`invalidate()`
after an edit): a Step to a big conv does not recompute a 4.7 M-value histogram twice.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from engine.graph import INPUT
from qwidgets._encode import channels_note, feature_montage, framed_png, heatmap_png, weights_png
from engine.session.stats import error_row, tensor_row, threshold_in_use
from qwidgets._panel_data import hist_image, join_inputs, layer_info, layer_panel_data

Panel = tuple[dict[str, Any], dict[str, bytes], list[dict[str, Any]]]


def dequantized(w_q: np.ndarray, w_scale: np.ndarray) -> np.ndarray:
    """w_q * w_scale as float32 (real = q * scale), per output filter (axis 0) when per-channel."""
    scale = np.asarray(w_scale, np.float32).reshape(-1)
    if scale.size == 1:
        return w_q.astype(np.float32) * scale[0]
    return w_q.astype(np.float32) * scale.reshape((-1,) + (1,) * (w_q.ndim - 1))


def run_label(session) -> str:
    """'INT' or 'HYBRID': the name of what the session's run computed, next to FLOAT."""
    return "HYBRID" if session.mode == "hybrid" else "INT"


def fused_weights(session, index: int, shape: tuple[int, ...]) -> np.ndarray:
    """The layer's BN-folded float weights (what its int8 weights approximate) in `shape`."""
    return session.weights(index, "fused")["weights"].reshape(shape)


def scales_text(info: dict) -> dict[str, str]:
    """The quantization scales of a layer in words (real value = int8 value x scale)."""
    out = {}
    if info.get("in_scale") is not None:
        out["input scale"] = f"{info['in_scale']:.4g} (real = q x scale)"
    if info.get("out_scale") is not None:
        out["output scale"] = f"{info['out_scale']:.4g} (clips at +-{127 * info['out_scale']:.4g})"
    if info.get("weight_scale") is not None:
        lo, hi = info["weight_scale"]
        out["weight scale"] = (f"{lo:.4g} .. {hi:.4g} (per filter, min .. max)" if info.get("per_channel")
                               else f"{lo:.4g} (one for the layer)")
    return out or {"scales": "- (FLOAT run)"}


class SessionPanelData:
    """`data(node_id, ...)` -> (info, images, stats rows) for `LayerPanel.show`; caches thresholds and weights."""

    def __init__(self, session) -> None:
        self._s = session
        self._qmodel = session.qmodel
        self._thresholds: dict[str, dict] = {}
        self._weights: dict[tuple, tuple[dict, list]] = {}

    def invalidate(self) -> None:
        """After an edit: the weights (float or int8) changed."""
        self._weights.clear()

    def _check_qmodel(self) -> None:
        if self._s.qmodel is not self._qmodel:      # another quantized model: other weights and statistics
            self._thresholds, self._weights, self._qmodel = {}, {}, self._s.qmodel

    def thresholds(self, tensor_id: str) -> dict[str, float] | None:
        """Every calibration method's threshold for a tensor (a pure function of the quantized model's
        histograms, cached until the quantized model changes); None without statistics."""
        self._check_qmodel()
        if tensor_id not in self._thresholds:
            self._thresholds[tensor_id] = self._s.thresholds(tensor_id)
        return self._thresholds[tensor_id] or None

    def data(self, node_id: str, *, cross=None, log2: bool = False, log_y: bool = False) -> Panel:
        s = self._s
        if node_id == INPUT:        # the input alone: no FLOAT forward (Explorer(s) on yolov3 waited for one)
            return layer_panel_data(s.model, [], INPUT, s.x, thresholds=self.thresholds(INPUT), log2=log2,
                                    log_y=log_y)
        ref = s.float_reference()
        i = int(node_id)
        info = s.layer_info(i)
        ran, use_int = i <= s.position, s.mode != "float"
        data = layer_info(s.model, node_id)
        data.update(scales_text(info))
        images: dict[str, bytes] = {}
        rows: list[dict[str, Any]] = []
        self._input(i, info["inputs"], ref, use_int, images, rows, log2, log_y)
        self._output(i, ref, cross, use_int and ran, images, rows, log2, log_y)
        w_images, w_rows = self._weights_part(i, info, use_int, log2, log_y)
        images.update(w_images)
        rows += w_rows
        # tensor statistics, then the error rows, then the run's record: one table each
        rows = ([r for r in rows if "min" in r] + [r for r in rows if "SQNR dB" in r]
                + [r for r in rows if "min" not in r and "SQNR dB" not in r])
        if info.get("record"):
            rows.append({"tensor": f"record ({info['precision']})", **info["record"]})
        data["precision"] = info["precision"] + (" (ran)" if ran else " (not run yet)")
        if cross is not None and cross.index == i:
            data["CROSS"] = f"{cross.precision} vs {cross.other}"
        if s.stale_from is not None and s.stale_from <= i <= s.position:
            data["stale"] = f"this output predates an edit (from layer {s.stale_from} on): Rerun or Run"
        return data, images, rows

    def _input(self, i: int, producers: list[str], ref, use_int: bool, images, rows, log2, log_y) -> None:
        s = self._s
        x = join_inputs([s.x if p == INPUT else ref[int(p)] for p in producers])
        series = {"FLOAT": x}
        # the run's input differs from FLOAT only behind a quantized producer; the network input is the
        # same tensor in every mode (a layer quantizes it itself)
        if use_int and producers != [INPUT] and all(p == INPUT or int(p) <= s.position for p in producers):
            x_run = join_inputs(s.inputs(i))
            series[run_label(s)] = x_run
            rows.append(tensor_row(f"input {run_label(s)}", x_run))
        marks = self.thresholds(producers[0]) if len(producers) == 1 else None
        images["input"] = framed_png(feature_montage(x, labels=True, as_image=True),
                                     f"layer {i} input, {channels_note(x.shape[0], min(64, x.shape[0]))}", "channel")
        used = threshold_in_use(s.qmodel, producers[0]) if use_int and len(producers) == 1 else None
        images["hist_input"] = hist_image(series, f"layer {i} input", marks, log2, log_y, used)
        rows.insert(0, tensor_row("input", x))

    def _output(self, i: int, ref, cross, with_run: bool, images, rows, log2, log_y) -> None:
        y, y_int, stats = ref[i], None, None
        ref_label, run = "output FLOAT reference", run_label(self._s)
        if cross is not None and cross.index == i:
            # after CROSS the pair is this run's input through both precisions, not the FLOAT network
            y, y_int = cross.float_and_int
            ref_label, run = "output CROSS FLOAT (same inputs)", "CROSS INT8"
        elif with_run:
            y_int = self._s.output(i)
            # the very ErrorStats the graph overlay colours by: one SQNR per layer in every view
            stats = self._s.fitness(i, local=False)["propagated"]
        images["output"] = framed_png(feature_montage(y, labels=True, as_image=True),
                                      f"layer {i} output (FLOAT), {channels_note(y.shape[0], min(64, y.shape[0]))}",
                                      "channel")
        rows.append(tensor_row(ref_label, y))
        series = {"FLOAT": y}
        if y_int is not None:
            y_int = np.asarray(y_int, np.float32)
            series[run] = y_int
            shown = channels_note(y.shape[0], min(16, y.shape[0]))
            grid = {"max_channels": 16, "cols": 4, "normalize": "global", "as_image": True}
            images["float"] = framed_png(feature_montage(y, **grid), f"FLOAT, {shown}", "grey",
                                         float(y[:16].min()), float(y[:16].max()))
            images["int"] = framed_png(feature_montage(y_int, **grid), f"{run}, {shown}", "grey",
                                       float(y_int[:16].min()), float(y_int[:16].max()))
            vmax = float(np.abs(y_int[:16] - y[:16]).max())
            images["heatmap"] = framed_png(heatmap_png(y_int - y, max_channels=16, cols=4, vmax=vmax, as_image=True),
                                           f"{run} - FLOAT, {shown}", "diverging", -vmax, vmax)
            rows.append(tensor_row(f"output {run}", y_int))
            rows.append(error_row(f"{run} - FLOAT", y, y_int, stats))
        used = threshold_in_use(self._s.qmodel, str(i)) if self._s.mode != "float" else None
        images["hist_output"] = hist_image(series, f"layer {i} output", self.thresholds(str(i)), log2, log_y, used)

    def _weights_part(self, i: int, info: dict, use_int: bool, log2: bool, log_y: bool) -> tuple[dict, list]:
        self._check_qmodel()
        with_int = use_int and "weight_scheme" in info          # layer_info names a scheme iff int8 weights exist
        key = (i, with_int, log2, log_y)
        if key not in self._weights:
            self._weights[key] = self._compute_weights(i, with_int, log2, log_y)
        return self._weights[key]

    def _compute_weights(self, i: int, with_int: bool, log2: bool, log_y: bool) -> tuple[dict, list]:
        s = self._s
        w = s.weights(i).get("weights")
        if w is None or w.ndim not in (2, 4):
            return {}, []
        images, rows = {"weights": weights_png(w)}, [tensor_row("weights (cfg file, before BN fold)", w)]
        if not with_int:
            images["hist_weights"] = hist_image({"weights": w}, f"layer {i} weights", None, log2, log_y)
            return images, rows
        q = s.weights(i, "int8")
        w_int = dequantized(q["w_q"], q["w_scale"])
        w_fused = fused_weights(s, i, w_int.shape)
        images["hist_weights"] = hist_image({"FLOAT (BN folded)": w_fused, "INT8 w_q*scale": w_int},
                                            f"layer {i} weights", None, log2, log_y)
        rows.append(tensor_row("weights FLOAT (BN folded)", w_fused))
        rows.append(tensor_row("weights INT8 (w_q*scale, BN folded)", w_int))
        rows.append(error_row("weights INT8 - folded FLOAT", w_fused, w_int))
        return images, rows
