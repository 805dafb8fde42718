"""[dropout]: identity at inference."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.layers.base import LAYERS, BuildContext, Layer, Scratch, single_input, darknet_keys


@LAYERS.register("dropout")
@dataclass(kw_only=True)
class Dropout(Layer):
    """Identity at inference (no 1/(1-p) scaling: Darknet scales only while training)."""
    kind = "dropout"
    shape_only = keeps_scale = passes_sign = commutes_channel_scale = True
    cfg_keys = darknet_keys("dropblock dropblock_size_abs dropblock_size_rel probability")
    probability: float

    @classmethod
    def build(cls, ctx: BuildContext) -> "Dropout":
        return single_input(cls, ctx, probability=ctx.section.get_float("probability", 0.5, lo=0.0, hi=1.0))

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        return xs[0]
