"""`qwidgets`: the engine's own integer rules (engine/quant/qtensor.py, int_layers.py), the default."""
from __future__ import annotations

import numpy as np

from engine.quant.profiles.base import Profile
from engine.quant.qtensor import QTensor, quantize


class QwidgetsProfile(Profile):
    name = "qwidgets"
    title = "qwidgets engine (default)"
    memo_safe = True
    rules = {
        "activations": "int8 symmetric [-127, 127], per tensor",
        "weights": "int8 symmetric [-127, 127], per tensor or per output channel",
        "accumulator": "int32, exact",
        "requantization": "15-bit fixed-point multiplier and shift",
        "rounding": "half to even, then saturate",
        "leaky": "folded into requantization (second multiplier for negative sums), one rounding",
        "route/concat": "rescaled to the largest input scale (fixed point)",
        "shortcut": "a*Ma + b*Mb in 15-bit fixed point, one rounding",
        "upsample": "copy, scale kept",
        "maxpool": "int8 max, scale kept",
        "heads": "int32 accumulators dequantized for [yolo]/[region]",
        "source": "engine/quant/qtensor.py, README 'Quantization, precisely'",
    }

    def has_int_path(self, kind: str) -> bool:
        from engine.quant.int_layers import INT_LAYERS
        return kind in INT_LAYERS

    def quantize(self, x: np.ndarray, scale: float, zero_point: int = 0) -> tuple[QTensor, int]:
        q, sat = quantize(x, scale)
        return QTensor(q, scale), sat

    def run(self, layer, xs, lq, qmodel, rec):
        from engine.quant.int_layers import INT_LAYERS
        return INT_LAYERS.get(layer.kind)(layer, xs, lq, qmodel.scales.get(str(layer.index), 1.0), rec)

    def run_head(self, layer, xs, lq, qmodel, rec):
        from engine.quant.int_layers import HEAD_LAYERS
        return HEAD_LAYERS[layer.kind](layer, xs, lq, rec)

    def hybrid(self, layer, x, lq, qmodel, rec):
        from engine.quant.int_layers import HYBRID_LAYERS
        return HYBRID_LAYERS[layer.kind](layer, x, lq, rec)
