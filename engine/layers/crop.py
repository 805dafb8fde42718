"""[crop]: centred crop, values mapped x -> 2x - 1 unless noadjust=1."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.layers.base import LAYERS, BuildContext, Layer, Scratch, check_shape, single_input, darknet_keys


@LAYERS.register("crop")
@dataclass(kw_only=True)
class Crop(Layer):
    """Centred crop; values mapped x -> 2x - 1 unless noadjust=1 (inference semantics)."""
    kind = "crop"
    cfg_keys = darknet_keys("angle crop_height crop_width exposure flip noadjust saturation shift")
    crop_height: int
    crop_width: int
    noadjust: int

    @property
    def shape_only(self) -> bool:       # type: ignore[override]
        """Only a crop without the 2x - 1 value mapping just selects values."""
        return bool(self.noadjust)

    @classmethod
    def build(cls, ctx: BuildContext) -> "Crop":
        sec = ctx.section
        c, h, w = ctx.previous()[1]
        ch = sec.get_int("crop_height", 1, lo=1, hi=h)
        cw = sec.get_int("crop_width", 1, lo=1, hi=w)
        return single_input(cls, ctx, out_shape=check_shape(sec, (c, ch, cw)), crop_height=ch, crop_width=cw,
                            noadjust=sec.get_int("noadjust", 0, lo=0, hi=1))

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        x = xs[0]
        dy, dx = (x.shape[1] - self.crop_height) // 2, (x.shape[2] - self.crop_width) // 2
        y = x[:, dy:dy + self.crop_height, dx:dx + self.crop_width].astype(np.float32, copy=True)
        if not self.noadjust:
            y *= np.float32(2)
            y -= np.float32(1)
        return y
