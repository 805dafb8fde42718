"""The conv chooser: which kernel runs a float convolution layer, and the call that runs it.

3x3 stride-1 layers with many channels go through Winograd with its transforms as GEMMs
(`engine.kernels.winograd_gemm`): F(4x4,3x3) (36/144 of the multiplies) on mid-sized maps, F(2x2,3x3)
(16/36) on the others (`engine.kernels.winograd` holds the switch and the F(2x2) suitability rule);
those with 16-32 input channels on large maps go through F(6, 3) down the rows only
(`engine.kernels.winograd_rows`, 8/18); 1x1 stride-1 layers are one GEMM on the input; the
rest im2col + GEMM in cache-sized bands (`engine.kernels.gemm`). A model decides once per layer, when it prepares its weights (`choice`),
and keeps one kernel form of them.
"""
from __future__ import annotations

import numpy as np

from engine.kernels import winograd, winograd_gemm, winograd_rows
from engine.kernels.gemm import FUSED_ACTS, conv_gemm, conv_out_size
from engine.kernels.scratch import Scratch, derived
from engine.kernels.tails import Tail
from engine.kernels.threads import own_threads

SMALL_F4X4 = 8 << 20     # bytes of F(4x4) weights (36 n C float32) up to which 24-39 px maps take F(4x4) too


def choice(c: int, h: int, w: int, n: int, k: int, s: int, p: int, groups: int = 1) -> str:
    """The kernel conv2d uses for a (C, H, W) input and n filters of k x k: 'winograd-rows',
    'winograd-4x4', 'winograd', 'gemm-1x1' or 'im2col-kxk/s'.

    F(6, 3) down the rows for 16-32 input channels on maps of 96 pixels a side and more (CPU time,
    one thread: 0.73-0.78x the best of im2col and F(4x4) on 16->32 @208, 32->64 @104 and 32->64
    @208; with 64 channels F(4x4) wins, with 3 im2col).

    F(4x4) where it measured faster than both F(2x2) and im2col (CPU time of each kernel on the
    layer's shape, 1 and 2 threads, yolov3-tiny and yolov3 at 416; `bench_conv_kernels.py`,
    docs/performance.md): maps of 40 pixels a side and more from 32 input channels (with its GEMM
    transforms it beats im2col from 32->64 @104 on), and 26-pixel maps with >= 384 input channels.
    On 13-pixel maps its 6x6 tiles waste half their outputs (F(2x2) wins); with 16 input channels
    the transforms cost more than the multiplies saved (im2col wins).

    On 24-39 px maps (26 at 416) F(4x4) also wins below 384 channels while its weights stay small
    (`SMALL_F4X4`, 36 n C floats <= 8 MiB: yolov3-tiny's layer 8, 128->256 @26, 3.09 vs 3.36 ms CPU
    for F(2x2), one thread); yolov3's 256->512 @26 (19 MB of them) stays on F(2x2).
    """
    if groups == 1 and k == 3 and s == 1 and p <= 2 and winograd.ENABLED:
        side = min(h, w) + 2 * p - 2
        if 16 <= c <= 32 and n >= 16 and side >= 96:
            return "winograd-rows"
        if c >= 32 and n >= 64 and (side >= 40 or side >= 24 and (c >= 384 or 36 * 4 * n * c <= SMALL_F4X4)):
            return "winograd-4x4"
        if winograd.suitable(c, h, w, n, k, s, p):
            return "winograd"
    return "gemm-1x1" if k == 1 and s == 1 and p == 0 else f"im2col-{k}x{k}/{s}"


def conv2d(x: np.ndarray, w2d: np.ndarray | None, b: np.ndarray, k: int, s: int, p: int, groups: int,
           scratch: Scratch, act: str | None = None, wino: np.ndarray | None = None,
           choose: bool = True, tail: Tail | None = None) -> np.ndarray:
    """Float cross-correlation + per-channel bias (+ optional fused activation): (C, H, W) -> new (n, Ho, Wo).

    w2d: (n, C/groups*k*k) float32; b: (n,) float32. `act` (one of FUSED_ACTS, or None for none) is
    applied in the same pass as the bias; other activations are the caller's business.
    `wino`: the Winograd weights made for this layer (`prepare_winograd`), when the caller
    keeps them instead of w2d (then w2d may be None). `choose=False`: the caller already chose (a
    model decides once per layer, when it prepares it), so w2d always runs im2col + GEMM.
    `tail` (`engine.kernels.tails`): the next layer fused, its output filled by the kernel's own work
    items while each piece of this one is in cache (a conv + [shortcut] pair in one pass).
    """
    c, h, w = x.shape
    if tail is not None:
        tail.check(b.shape[0], conv_out_size(h, k, s, p), conv_out_size(w, k, s, p))
    if act is not None and act not in FUSED_ACTS:
        raise ValueError(f"conv2d: act={act!r} cannot be fused; use one of {FUSED_ACTS} or apply it after")
    with own_threads():
        if wino is None and choose:
            kind = choice(c, h, w, w2d.shape[0], k, s, p, groups)
            if kind.startswith("winograd"):
                wino = derived(kind, (w2d,), lambda: prepare_winograd(kind, w2d, c, h, w, p))
        if wino is None:
            return conv_gemm(x, w2d, b, k, s, p, groups, scratch, act, tail)
        if winograd_rows.is_rows_form(wino):
            return winograd_rows.conv3x3(x, wino, b, p, scratch, act, tail)
        return winograd_gemm.conv3x3(x, wino, b, p, scratch, act, tail)   # F(4x4): 36 planes, F(2x2): 16


def prepare_winograd(kind: str, w2d: np.ndarray, c: int, h: int, w: int, p: int) -> np.ndarray:
    """The transformed weights conv2d runs for a layer `choice` gave a Winograd kind."""
    if kind == "winograd-rows":
        return winograd_rows.transform_weights(w2d)
    return winograd_gemm.transform_weights(w2d, 4 if kind == "winograd-4x4" else 2)
