"""What a device profile is: the integer rules one target runs, and how to quantize for it.

A profile answers, for the quantized model it is attached to (`QuantizedModel.profile`):
* quantization: activation type (int8 symmetric or uint8 with a zero point), weight bits and
  granularity, and any extra tensor a target needs (a leaky conv's pre-activation grid);
* execution: which layer kinds run on integers, how (requantization arithmetic, rounding,
  accumulator width, lookup tables), and which stay float.
`RULES` rows are what the rule table of docs/profiles.md shows; each profile fills every row with its source.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from engine.quant.qtensor import QTensor

RULES = ("activations", "weights", "accumulator", "requantization", "rounding", "leaky", "route/concat",
         "shortcut", "upsample", "maxpool", "heads", "source")


class Profile:
    name = "base"
    title = ""
    rules: dict[str, str] = {}
    asymmetric = False              # activations uint8 with a zero point (else int8 symmetric)
    pre_activation_grid = False     # a leaky conv needs its pre-activation grid (pre_scales) stored
    int32_heads = True              # a conv read only by detection heads hands them dequantized int32
    exportable: str | None = None   # an `export --format` that runs this profile's arithmetic
    weight_qmax = 127               # weights in [-weight_qmax, weight_qmax] (63: 7-bit reduce_range)
    # run / run_head / hybrid read only the layer, its inputs, its LayerQuant and the layer's own output
    # scale (qmodel.scales[str(index)]): results can be shared across quantized models (layermemo.py)
    memo_safe = False

    # ---------------------------------------------------------------- quantization
    def weight_choice(self, calibrator, per_channel: bool) -> tuple[str, bool]:
        """(weight scheme of engine/quant/weights.py, per channel) for a calibration method."""
        y2l = calibrator.weights == "yolo2_light"
        return calibrator.weights, per_channel and not y2l

    def activation_params(self, stats, calibrator, thresholds=None) -> tuple[dict[str, float], dict[str, int]]:
        """Scales (and zero points, asymmetric profiles) of every calibrated tensor (`thresholds`: the clip
        the calibration rules chose per tensor, instead of the calibrator on the tensor's own histogram)."""
        return {nid: calibrator.scale(h) for nid, h in stats.hists.items()}, {}

    def tie_grids(self, model, scales: dict[str, float], zero_points: dict[str, int]) -> None:
        """Make the stored grid of each tensor the one it has at run time (in place), where they differ: an
        [upsample] with `scale=` runs at its input's scale times the factor (`int_layers.upsample_forward_int`),
        not at the one calibrated on its own histogram; the next conv's biases and HYBRID input take that grid."""
        for layer in model.layers:
            if layer.kind == "upsample" and layer.scale != 1.0 and self.has_int_path("upsample"):
                src = layer.inputs[0]
                scales[str(layer.index)] = scales["input" if src < 0 else str(src)] * layer.scale

    def extra_params(self, model, stats, calibrator, thresholds=None) -> tuple[dict[str, float], dict[str, int]]:
        """Scales / zero points of tensors Darknet does not name (e.g. pre-activation), keyed by layer."""
        return {}, {}

    def fit_bias(self, qw: Any, b: np.ndarray, in_scale: float, weights: Any) -> Any:
        """The int8 weights (QuantWeights) a layer gets for its float biases `b` at input scale `in_scale`:
        `qw` itself here (a bias beyond int32 saturates, as the target has it). `weights()`: the layer's
        float weights, for a profile that requantizes some of them."""
        return qw

    # ---------------------------------------------------------------- execution
    def has_int_path(self, kind: str) -> bool:
        raise NotImplementedError

    def has_hybrid_path(self, kind: str) -> bool:
        """HYBRID mode: the kinds this profile runs as int8 on float activations (conv, connected)."""
        from engine.quant.int_layers import HYBRID_LAYERS
        return kind in HYBRID_LAYERS

    def runs_float(self, layer) -> bool:
        """Layers this target keeps in float although their kind has an integer path."""
        return False

    def quantize(self, x: np.ndarray, scale: float, zero_point: int = 0) -> tuple[QTensor, int]:
        raise NotImplementedError

    def run(self, layer, xs: list[QTensor], lq, qmodel, rec: dict) -> QTensor:
        raise NotImplementedError

    def run_head(self, layer, xs: list[QTensor], lq, qmodel, rec: dict) -> np.ndarray:
        raise NotImplementedError

    def hybrid(self, layer, x: np.ndarray, lq, qmodel, rec: dict) -> np.ndarray:
        raise NotImplementedError

    def host_mismatch(self) -> str | None:
        """Why this host's runtime does not compute what the modelled device computes (None: it does), so
        that a device comparison never reports the host's instruction set as the simulator's error."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, **self.rules}
