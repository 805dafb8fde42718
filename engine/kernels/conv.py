"""The conv chooser: which kernel runs a float convolution layer, and the call that runs it.

3x3 stride-1 layers with many channels go through Winograd F(2x2,3x3) (`engine.kernels.winograd`,
16/36 of the multiplies); 1x1 stride-1 layers are one GEMM on the input; the rest im2col + GEMM in
cache-sized bands (`engine.kernels.gemm`). A model decides once per layer, when it prepares its
weights (`choice`), and keeps one kernel form of them.
"""
from __future__ import annotations

import numpy as np

from engine.kernels import winograd
from engine.kernels.gemm import FUSED_ACTS, conv_gemm
from engine.kernels.scratch import Scratch
from engine.kernels.threads import own_threads


def choice(c: int, h: int, w: int, n: int, k: int, s: int, p: int, groups: int = 1) -> str:
    """The kernel conv2d uses for a (C, H, W) input and n filters of k x k: 'winograd',
    'gemm-1x1' or 'im2col-kxk/s'."""
    if groups == 1 and winograd.suitable(c, h, w, n, k, s, p):
        return "winograd"
    return "gemm-1x1" if k == 1 and s == 1 and p == 0 else f"im2col-{k}x{k}/{s}"


def conv2d(x: np.ndarray, w2d: np.ndarray | None, b: np.ndarray, k: int, s: int, p: int, groups: int,
           scratch: Scratch, act: str | None = None, wino: np.ndarray | None = None,
           choose: bool = True) -> np.ndarray:
    """Float cross-correlation + per-channel bias (+ optional fused activation): (C, H, W) -> new (n, Ho, Wo).

    w2d: (n, C/groups*k*k) float32; b: (n,) float32. `act` (one of FUSED_ACTS, or None for none) is
    applied in the same pass as the bias; other activations are the caller's business.
    `wino`: the Winograd weights made for this layer (`winograd.prepare_weights`), when the caller
    keeps them instead of w2d (then w2d may be None). `choose=False`: the caller already chose (a
    model decides once per layer, when it prepares it), so w2d always runs im2col + GEMM.
    """
    c, h, w = x.shape
    if act is not None and act not in FUSED_ACTS:
        raise ValueError(f"conv2d: act={act!r} cannot be fused; use one of {FUSED_ACTS} or apply it after")
    with own_threads():
        if wino is not None:
            return winograd.conv3x3(x, None, b, p, scratch, act, u=wino)
        if choose and choice(c, h, w, w2d.shape[0], k, s, p, groups) == "winograd":
            return winograd.conv3x3(x, w2d, b, p, scratch, act)
        return conv_gemm(x, w2d, b, k, s, p, groups, scratch, act)
