"""[cost]: the training loss; identity at inference and never the network output."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.layers.base import LAYERS, BuildContext, Layer, Scratch, single_input, darknet_keys


@LAYERS.register("cost")
@dataclass(kw_only=True)
class Cost(Layer):
    """Training loss; identity at inference and never chosen as the network output."""
    kind = "cost"
    float_only = True
    is_loss = True
    cfg_keys = darknet_keys("noobj ratio scale thresh type")

    @classmethod
    def build(cls, ctx: BuildContext) -> "Cost":
        return single_input(cls, ctx)

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        return xs[0]
