"""Layer-panel data of a Session's node: the FLOAT reference against what this mode's run computed.

Everything comes from the Session API: `float_reference()` (FLOAT outputs of the edited model),
`layer_info`, `output` / `inputs` (the tensors the session's run produced and fed the layer),
`weights(i)` / `weights(i, "int8")` and `thresholds(tensor id)`. In HYBRID / INT the three
histograms overlay the run on FLOAT:

- input: the FLOAT reference input vs the input the run fed the layer (its producers' dequantized
  outputs), with every calibration method's threshold for that tensor (id = the producer's node id,
  or "input"; concatenated multi-input routes get the default markers);
- output: FLOAT vs the run's output (or the CROSS pair), with the output tensor's thresholds;
- weights: the BN-folded FLOAT weights (what the int8 weights approximate) vs w_q * w_scale
  (`weights(i, "dequantized")`).

Joins of a layer's several inputs (`engine.layers.route.join_inputs`), dequantization
(`QTensor.dequantize`), error maps and value ranges (`engine.session.stats`) are engine calls too.

Weight data changes only with an edit or another quantized model, so it is cached (`invalidate()`
after an edit): a Step to a big conv does not recompute a 4.7 M-value histogram twice. Tensor results
(histogram counts, statistics rows, montages, the FLOAT / run / error maps) are remembered per tensor
identity (`qwidgets._memo`): after a Step the new layer's input is the output the panel showed one Step
before, and a click on a visited layer recomputes nothing but the PNG frames.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from engine.graph import INPUT
from engine.layers.route import join_inputs, joined_count, joined_shape
from qwidgets._encode import channels_note, feature_montage, framed_png, heatmap_png, weights_png
from engine.quant.qtensor import QTensor
from engine.session.stats import (code_counts, error_map, error_row, histogram_counts, qtensor_histogram_counts,
                                  qtensor_row, tensor_row, threshold_in_use, value_range)
from qwidgets._memo import IdentityMemo
from qwidgets._panel_data import BINS, hist_image, layer_info, layer_panel_data

Panel = tuple[dict[str, Any], dict[str, bytes], list[dict[str, Any]]]


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
        # a layer's FLOAT-side results (4 entries) for every layer of yolov3 (107) fit, with room for runs
        self.memo = IdentityMemo(size=1024)

    def invalidate(self, edits: Sequence[Any] | None = None) -> None:
        """After edits (`engine.session.edits.Edit`, with `layer` and `target`; None: anything may have
        changed): forget the weights part of the edited layers. The memo needs no clearing for correctness
        (its results are tied to tensor identities, and a rerun makes new tensors); it is emptied after a
        FLOAT edit, whose new FLOAT reference leaves every FLOAT-side result behind. After an int8 or scale
        edit the FLOAT side stays valid and is kept (the background warm-up need not redo it)."""
        if edits is None:
            self._weights.clear()
            self.memo.clear()
            return
        layers = {str(e.layer) for e in edits}
        self._weights = {k: v for k, v in self._weights.items() if str(k[0]) not in layers}
        if any(e.target == "float" for e in edits):
            self.memo.clear()

    def _run_token(self, producer: str) -> Any:
        """The object that stands for a tensor of this mode's run: the int8 QTensor (its float view is a
        fresh array per call), else the float output itself; the network input is `s.x`."""
        s = self._s
        if producer == INPUT:
            return s.x
        q = s.output_q(int(producer))
        return q if q is not None else s.output(int(producer))

    def _codes(self, tokens: Sequence[Any]) -> tuple[list, list, tuple] | None:
        """(QTensors, their code counts, joined shape) when the tensor `tokens` stand for is int8 codes
        only (one output, or a route's concatenation: `join_inputs`), else None. Its row and histogram
        then come from the 256 code counts, with no float copy of the tensor."""
        if not all(isinstance(t, QTensor) for t in tokens):
            return None
        qts = list(tokens)
        qts = qts[:joined_count([t.shape for t in qts])]     # the ones join_inputs joins
        shape = joined_shape([t.shape for t in qts])
        return qts, [self.memo.get([t], "codes", lambda t=t: code_counts(t)) for t in qts], shape

    def _counts(self, tokens: Sequence[Any], array, log2: bool) -> tuple:
        codes = None if log2 else self._codes(tokens)
        if codes is not None:
            # int8 codes: count the 256 codes, not the float copy (same counts, engine.session.stats)
            qts, ns, _ = codes
            return self.memo.get(tokens, ("hist", BINS, log2), lambda: qtensor_histogram_counts(qts, BINS, codes=ns))
        return self.memo.get(tokens, ("hist", BINS, log2), lambda: histogram_counts(array(), BINS, log2=log2))

    def _row(self, name: str, tokens: Sequence[Any], array) -> dict:
        codes = self._codes(tokens)
        if codes is not None:
            row = self.memo.get(tokens, "row", lambda: qtensor_row("", *codes))
        else:
            row = self.memo.get(tokens, "row", lambda: tensor_row("", array()))
        return {**row, "tensor": name}

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

    def warm(self, node_id: str, *, log2: bool = False, log_y: bool = False) -> None:
        """Compute ahead what `data(node_id)` will need whatever the run does: the FLOAT reference's output
        and input pictures, statistics rows and histogram counts (remembered for those very tensors) and
        the weights part (kept until an edit). `data` then finds them; its results are the same with or without this."""
        if node_id == INPUT:
            return
        s, i = self._s, int(node_id)
        ref = s.float_reference()
        y = ref[i]
        self._float_output_png(i, y, [y])
        self._row("", [y], lambda: y)
        self._counts([y], lambda: y, log2)
        info = s.layer_info(i)
        # the input picture too: framed under this layer's title (a route's or shortcut's joined inputs
        # are a tensor of their own: montage, row and counts)
        srcs, x_of, _ = self._float_input(i, info["inputs"], ref)
        self._row("", srcs, x_of)
        self._counts(srcs, x_of, log2)
        self._weights_part(i, info, s.mode != "float", log2, log_y)

    def _float_input(self, i: int, producers: list[str], ref) -> tuple[list, Callable[[], np.ndarray], bytes]:
        """The FLOAT input tensors, their joined array (built on demand) and the input picture."""
        s = self._s
        srcs = [s.x if p == INPUT else ref[int(p)] for p in producers]
        x_of = _once(lambda: join_inputs(srcs))
        c = joined_shape([a.shape for a in srcs])[0]
        title = f"layer {i} input, {channels_note(c, min(64, c))}"
        png = self.memo.get(srcs, ("png", title), lambda: framed_png(self.memo.get(
            srcs, "montage", lambda: feature_montage(x_of(), labels=True, as_image=True)), title, "channel"))
        return srcs, x_of, png

    def _float_output_png(self, i: int, y: np.ndarray, tokens: list) -> bytes:
        title = f"layer {i} output (FLOAT), {channels_note(y.shape[0], min(64, y.shape[0]))}"
        return self.memo.get(tokens, ("png", title), lambda: framed_png(self.memo.get(
            tokens, "montage", lambda: feature_montage(y, labels=True, as_image=True)), title, "channel"))

    def _input(self, i: int, producers: list[str], ref, use_int: bool, images, rows, log2, log_y) -> None:
        s = self._s
        srcs, x_of, images["input"] = self._float_input(i, producers, ref)
        series_tokens = {"FLOAT": srcs}
        arrays: dict[str, Callable[[], np.ndarray]] = {"FLOAT": x_of}
        # the run's input differs from FLOAT only behind a quantized producer; the network input is the
        # same tensor in every mode (a layer quantizes it itself)
        if use_int and producers != [INPUT] and all(p == INPUT or int(p) <= s.position for p in producers):
            run_tokens = [self._run_token(p) for p in producers]
            x_run = _once(lambda: join_inputs(s.inputs(i)))
            series_tokens[run_label(s)], arrays[run_label(s)] = run_tokens, x_run
            rows.append(self._row(f"input {run_label(s)}", run_tokens, x_run))
        marks = self.thresholds(producers[0]) if len(producers) == 1 else None
        used = threshold_in_use(s.qmodel, producers[0]) if use_int and len(producers) == 1 else None
        images["hist_input"] = self._hist_png(series_tokens, arrays, f"layer {i} input", marks, log2, log_y, used)
        rows.insert(0, self._row("input", srcs, x_of))

    def _output(self, i: int, ref, cross, with_run: bool, images, rows, log2, log_y) -> None:
        y, stats = ref[i], None
        y_of = _once(lambda: y)
        ref_label, run = "output FLOAT reference", run_label(self._s)
        ref_tokens, run_tokens, y_int_of, qt = [y], None, None, None
        if cross is not None and cross.index == i:
            # after CROSS the pair is this run's input through both precisions, not the FLOAT network
            y, y_int = cross.float_and_int
            y_int = np.asarray(y_int, np.float32)
            y_of, y_int_of = _once(lambda: y), _once(lambda: y_int)
            ref_tokens, run_tokens = [y], [y_int]
            ref_label, run = "output CROSS FLOAT (same inputs)", "CROSS INT8"
        elif with_run:
            run_tokens = [self._run_token(str(i))]
            qt = run_tokens[0] if isinstance(run_tokens[0], QTensor) else None
            # an int8 output is read as codes (row, histogram, error row, the 16 channels of the maps):
            # its whole float copy is made only if something else asks for it
            y_int_of = _once(lambda: np.asarray(self._s.output(i), np.float32))
            # the very ErrorStats the graph overlay colours by: one SQNR per layer in every view
            stats = self._s.fitness(i, local=False)["propagated"]
        images["output"] = self._float_output_png(i, y, ref_tokens)
        rows.append(self._row(ref_label, ref_tokens, y_of))
        series, series_tokens = {"FLOAT": y_of}, {"FLOAT": ref_tokens}
        if y_int_of is not None:
            series[run], series_tokens[run] = y_int_of, run_tokens
            pair = [*ref_tokens, *run_tokens]
            head = ((lambda: qt.dequantize(slice(0, 16))) if qt is not None else (lambda: y_int_of()[:16]))
            images.update(self.memo.get(pair, ("maps", run), lambda: _maps(y, head(), run)))
            rows.append(self._row(f"output {run}", run_tokens, y_int_of))
            rows.append(self.memo.get(pair, ("error", run), lambda: error_row(
                f"{run} - FLOAT", y, qt if qt is not None else y_int_of(), stats)))
        used = threshold_in_use(self._s.qmodel, str(i)) if self._s.mode != "float" else None
        images["hist_output"] = self._hist_png(series_tokens, series, f"layer {i} output", self.thresholds(str(i)),
                                               log2, log_y, used)

    def _hist_png(self, tokens: dict[str, Sequence[Any]], arrays: dict, title: str, marks, log2: bool, log_y: bool,
                  used: float | None) -> bytes:
        """The histogram picture, remembered for these very tensors and markers."""
        everything = [t for ts in tokens.values() for t in ts]
        key = ("hist png", tuple(tokens), tuple(len(t) for t in tokens.values()), title,
               tuple(sorted((marks or {}).items())), log2, log_y, used)
        return self.memo.get(everything, key, lambda: hist_image(
            arrays, title, marks, log2, log_y, used, {k: self._counts(t, arrays[k], log2) for k, t in tokens.items()}))

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
        w_int = s.weights(i, "dequantized")["weights"]
        w_fused = fused_weights(s, i, w_int.shape)
        images["hist_weights"] = hist_image({"FLOAT (BN folded)": w_fused, "INT8 w_q*scale": w_int},
                                            f"layer {i} weights", None, log2, log_y)
        rows.append(tensor_row("weights FLOAT (BN folded)", w_fused))
        rows.append(tensor_row("weights INT8 (w_q*scale, BN folded)", w_int))
        rows.append(error_row("weights INT8 - folded FLOAT", w_fused, w_int))
        return images, rows


def _once(f: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
    """f, called at most once (a tensor built only when a memo misses, then shared)."""
    box: list = []

    def get() -> np.ndarray:
        if not box:
            box.append(f())
        return box[0]
    return get


def _maps(y: np.ndarray, y_int: np.ndarray, run: str) -> dict[str, bytes]:
    """FLOAT, run and run - FLOAT maps of the first 16 channels, one grey scale each, with colour bars
    (`y_int`: the run's output, or only its first 16 channels)."""
    shown = channels_note(y.shape[0], min(16, y.shape[0]))
    grid = {"max_channels": 16, "cols": 4, "normalize": "global", "as_image": True}
    # only the 16 shown channels: a whole-tensor difference was 4x the work on yolov3's 64-channel maps
    y, y_int = y[:16], y_int[:16]
    diff, vmax = error_map(y_int, y)
    return {"float": framed_png(feature_montage(y, **grid), f"FLOAT, {shown}", "grey", *value_range(y)),
            "int": framed_png(feature_montage(y_int, **grid), f"{run}, {shown}", "grey", *value_range(y_int)),
            "heatmap": framed_png(heatmap_png(diff, max_channels=16, cols=4, vmax=vmax, as_image=True),
                                  f"{run} - FLOAT, {shown}", "diverging", -vmax, vmax)}
