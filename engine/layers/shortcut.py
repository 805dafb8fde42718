"""Darknet [shortcut]: residual add of an earlier output to the previous one, then an activation.

pj `shortcut_cpu` handles unequal shapes (resnet, tiny-prn): the larger input is sampled every
`stride` pixels (top-left aligned) and only min(C_prev, C_from) channels are added.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.kernels import tails
from engine.kernels.threads import own_threads, parallel_for
from engine.layers.activations import activate, activation_key
from engine.layers.base import LAYERS, BuildContext, Layer, Scratch, refuse, darknet_keys


def shortcut_add(prev: np.ndarray, add: np.ndarray, alpha: float = 1.0, beta: float = 1.0) -> np.ndarray:
    """out = alpha*prev + beta*add on the overlapping channels/grid (new array, prev's shape).

    Equal shapes with alpha = beta = 1 (every yolov3 shortcut): one add per channel range on the
    kernel threads, the same sums as the copy-then-add below (23 serial passes of up to 64x208x208
    in a yolov3 forward before)."""
    if alpha == 1.0 and beta == 1.0 and prev.shape == add.shape and prev.dtype == add.dtype == np.float32:
        out = np.empty(prev.shape, np.float32)
        with own_threads():
            parallel_for(out.shape[0], lambda lo, hi: np.add(prev[lo:hi], add[lo:hi], out=out[lo:hi]), out.size)
        return out
    out = prev.astype(np.float32, copy=True)
    if alpha != 1.0:
        out *= np.float32(alpha)
    c = min(prev.shape[0], add.shape[0])
    st = max(1, add.shape[2] // prev.shape[2])
    sample = max(1, prev.shape[2] // add.shape[2])
    src = add[:c, ::st, ::st]
    dst = out[:c, ::sample, ::sample]
    h, w = min(src.shape[1], dst.shape[1]), min(src.shape[2], dst.shape[2])
    term = src[:, :h, :w] if beta == 1.0 else np.float32(beta) * src[:, :h, :w]
    dst[:, :h, :w] += term
    return out


@LAYERS.register("shortcut")
@dataclass(kw_only=True)
class Shortcut(Layer):
    kind = "shortcut"
    cfg_keys = darknet_keys("activation alpha beta from weights_normalization weights_type")
    from_: int
    activation: str
    alpha: float
    beta: float

    @classmethod
    def build(cls, ctx: BuildContext) -> "Shortcut":
        sec = ctx.section
        refuse(sec, "weights_type", "none")
        refs = sec.get_int_list("from")
        if len(refs) != 1:
            raise sec.error(f"from={sec.raw('from')}: only a single source layer is supported", "from")
        src = ctx.resolve("from", refs[0])
        prev, shape = ctx.previous()
        if prev < 0:
            raise sec.error("a [shortcut] cannot be the first layer")
        return cls(index=ctx.index, inputs=(prev, src), in_shapes=(shape, ctx.shape_of(src)), out_shape=shape,
                   line=sec.line, source=sec.path, from_=src, activation=activation_key(sec, default="linear"),
                   alpha=sec.get_float("alpha", 1.0), beta=sec.get_float("beta", 1.0))

    def attrs(self) -> dict:
        a = super().attrs()
        a["from"] = a.pop("from_")
        return a

    @property
    def is_tail(self) -> bool:
        """The plain residual add of every yolov3 shortcut (equal shapes, alpha = beta = 1, linear):
        shortcut_add's own fast path, element by element."""
        return (self.alpha == 1.0 and self.beta == 1.0 and self.activation == "linear"
                and self.in_shapes[0] == self.in_shapes[1])

    def tail(self, others: list[np.ndarray]) -> tails.AddInto:
        return tails.AddInto(np.empty(self.out_shape, np.float32), others[0])

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        return activate(shortcut_add(xs[0], xs[1], self.alpha, self.beta), self.activation)
