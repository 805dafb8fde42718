"""2x2 stride-2 max pooling of a conv's output band while it is still in cache (conv + [maxpool] fused).

yolov3-tiny's first five [maxpool] layers (size=2, stride=2 on even maps) read back the map the conv
before them has just written: 11 MB for layer 1, from memory, in a parallel pass (one more hand-off
to the kernel thread) of its own. The conv kernels (`gemm.conv_banded`, `gemm.conv1x1`,
`winograd_rows`, `winograd_gemm`) call `pool2x2` on each band of rows or block of filters right
after writing it, in the same work item. A maximum is exact, so the pooled map has the very bits of
`engine.layers.maxpool.maxpool` on the conv's output (the reference in tests).
"""
from __future__ import annotations

import numpy as np

from engine.kernels.scratch import Scratch
from engine.kernels.threads import parallel_for

BLOCK = 1 << 16          # floats of row maxima per pass (256 KiB): built and read in cache


def fits(h: int, w: int) -> bool:
    """Whether a (C, h, w) map pools as disjoint 2x2 blocks: a [maxpool] size=2 stride=2 with padding
    0 or 1 reads no cell outside it (Darknet's padding 1 starts its windows at 0 and ends at h - 1)."""
    return h >= 2 and w >= 2 and h % 2 == 0 and w % 2 == 0


def pool2x2(src: np.ndarray, dst: np.ndarray, scratch: Scratch, part: int | str) -> None:
    """dst (C, R, W/2) = maxima of the 2x2 blocks of src (C, 2R, W), W even, in channel blocks.

    Row pairs as strided views (each row contiguous: ufuncs run them at full speed), then the column
    pairs of the row maxima *copied* into a contiguous buffer first (ufuncs on element-strided operands
    are several times slower than a strided copy; measured 125 vs 150 us on a 16 x 42 x 416 band)."""
    c, h, w = src.shape
    r, wh = h // 2, w // 2
    step = max(1, min(c, BLOCK // max(1, r * w)))
    rows = scratch.get(f"pool_r{part}", (step, r, w))
    tmp = scratch.get(f"pool_t{part}", (step, r, wh))
    for c0 in range(0, c, step):
        c1 = min(c, c0 + step)
        rb, tb, db = rows[:c1 - c0], tmp[:c1 - c0], dst[c0:c1]
        np.maximum(src[c0:c1, 0::2], src[c0:c1, 1::2], out=rb)
        db[...] = rb[:, :, 0::2]
        tb[...] = rb[:, :, 1::2]
        np.maximum(db, tb, out=db)


def pool2x2_rows(y: np.ndarray, pooled: np.ndarray, r0: int, r1: int, scratch: Scratch, part: int) -> None:
    """Pool output rows [r0, r1) of y (r0 even; r1 even or the last row) into pooled's rows r0/2.."""
    r1 -= r1 % 2
    if r1 > r0:
        pool2x2(y[:, r0:r1], pooled[:, r0 // 2:r1 // 2], scratch, part)


def pool2x2_pass(y: np.ndarray, pooled: np.ndarray, scratch: Scratch) -> None:
    """The whole map, channel ranges on the kernel threads: for a kernel whose bands have odd heights."""
    parallel_for(y.shape[0], lambda lo, hi: pool2x2(y[lo:hi], pooled[lo:hi], scratch, f"c{lo}"), y.size)
