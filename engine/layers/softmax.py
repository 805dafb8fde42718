"""[softmax]: softmax of x/T over `groups` blocks of the flattened input (classifier outputs)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.layers.base import LAYERS, BuildContext, Layer, Scratch, single_input, darknet_keys
from engine.layers.region import softmax_axis


@LAYERS.register("softmax")
@dataclass(kw_only=True)
class Softmax(Layer):
    """Softmax of x/T over `groups` consecutive blocks of the flattened input (max-subtracted)."""
    kind = "softmax"
    float_only = True
    cfg_keys = darknet_keys("groups noloss spatial temperature tree")
    groups: int
    temperature: float

    @classmethod
    def build(cls, ctx: BuildContext) -> "Softmax":
        sec = ctx.section
        if sec.has("tree"):
            from engine.errors import UnsupportedError
            raise UnsupportedError(f"{sec.where('tree')} hierarchical softmax (tree=) is not supported")
        c, h, w = ctx.previous()[1]
        groups = sec.get_int("groups", 1, lo=1)
        if (c * h * w) % groups:
            raise sec.error(f"groups={groups} does not divide the {c * h * w} inputs", "groups")
        temperature = sec.get_float("temperature", 1.0)
        if temperature <= 0:  # x / 0 gives NaN outputs; a negative one inverts the ranking
            raise sec.error(f"temperature={sec.raw('temperature')}: must be > 0", "temperature")
        return single_input(cls, ctx, groups=groups, temperature=temperature)

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        x = xs[0]
        return softmax_axis(x.reshape(self.groups, -1), 1, self.temperature).reshape(x.shape)
