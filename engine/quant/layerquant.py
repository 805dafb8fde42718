"""`LayerQuant`: the integer parameters of one conv / connected layer of a quantized model.

Its own module so the integer layer paths (int_layers, device profiles) read it without importing the
quantized-model file code (engine/quant/qmodel.py re-exports it)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.npzfile import Deferred
from engine.quant.intcache import kept


class _ReadOnUse:
    """A dataclass field that may hold a deferred read (engine.npzfile.Deferred, from a quantized model file):
    read on first access and kept. No class-level default, so the field stays required."""

    def __set_name__(self, owner, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj, objtype=None):
        if obj is None:
            raise AttributeError(self.slot[1:])
        value = obj.__dict__[self.slot]
        if isinstance(value, Deferred):
            value = obj.__dict__[self.slot] = value.array()
        return value

    def __set__(self, obj, value) -> None:
        obj.__dict__[self.slot] = value


@dataclass
class LayerQuant:
    """Integer parameters of one conv / connected layer."""
    w_q: np.ndarray = _ReadOnUse()   # int8, (n, C/g, k, k) or (out, in); from a file: read on first use
    w_scale: np.ndarray      # float64 (n,) or (1,)
    b_q: np.ndarray          # int32 (n,), in the accumulator scale in_scale * w_scale
    in_scale: float          # scale of the input tensor the biases were quantized for
    scheme: str

    @property
    def w_f(self) -> np.ndarray:
        """int8 values as float32, laid out for the GEMM: (n, C/g*k*k). Exact (|q| <= 127). Kept while
        w_q lives, within the int8 kernels' memory budget (engine/quant/intcache.py)."""
        w_q = self.w_q

        def make() -> np.ndarray:
            w = np.ascontiguousarray(w_q.reshape(w_q.shape[0], -1), dtype=np.float32)
            w.flags.writeable = False          # shared by every use
            return w
        return kept("int-w-f32", w_q, make)

    @property
    def acc_scale(self) -> np.ndarray:
        return self.in_scale * np.broadcast_to(self.w_scale, (self.w_q.shape[0],))

    def dequantized_weights(self) -> np.ndarray:
        shape = (-1,) + (1,) * (self.w_q.ndim - 1)
        return (self.w_q.astype(np.float64) * np.broadcast_to(self.w_scale, (self.w_q.shape[0],)).reshape(shape)
                ).astype(np.float32)
