"""Work a conv kernel runs on each piece of its output right after writing it, in the same work item
while the piece is in cache: the layer after the conv, fused (`Model.forward` decides which pairs).

`Pool2x2`: a [maxpool] size=2 stride=2 on an even map (yolov3-tiny's layers 1, 3, 5, 7, 9 read back
the map the conv before them has just written: 11 MB for layer 1, in a pass and a hand-off to the
kernel thread of its own). `AddInto`: a [shortcut] out = y + other (every yolov3 shortcut: 23 passes
over up to 64x208x208 floats, each a hand-off). `Channelwise`: [yolo] and [upsample] after a 1x1 conv. Band kernels (`gemm.conv_banded`,
`winograd_rows`) call `rows` on each band of output rows, filter-block kernels (`gemm.conv1x1`,
`winograd_gemm`) call `chans` on each block of filters. A maximum and a float32 add are exact per
element, so the results have the very bits of the layers run one after the other (tested against
`engine.layers.maxpool.maxpool_naive` and the shortcut layer).
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


class Tail:
    """The fused next layer: `out` is its output, filled piece by piece by the conv's work items."""

    def __init__(self, out: np.ndarray) -> None:
        self.out = out

    def check(self, n: int, ho: int, wo: int) -> None:
        raise NotImplementedError

    def on_bands(self, rows: int) -> bool:
        """Whether to run on bands of `rows` output rows (`rows`); else the band kernel calls `rest`
        after its bands."""
        raise NotImplementedError

    def rows(self, y: np.ndarray, r0: int, r1: int, scratch: Scratch, part: int) -> None:
        """Output rows [r0, r1) of every filter of y are final."""
        raise NotImplementedError

    def chans(self, y: np.ndarray, c0: int, c1: int, scratch: Scratch, part: int) -> None:
        """Filters [c0, c1) of y are final."""
        raise NotImplementedError

    def rest(self, y: np.ndarray, scratch: Scratch) -> None:
        """The whole map at once, channel ranges on the kernel threads."""
        parallel_for(y.shape[0], lambda lo, hi: self.chans(y, lo, hi, scratch, f"c{lo}"), y.size)


class Pool2x2(Tail):
    """out (n, Ho/2, Wo/2) = the maxima of y's 2x2 blocks."""

    def on_bands(self, rows: int) -> bool:
        return rows % 2 == 0      # whole row pairs: an odd band would split one with the next band

    def check(self, n: int, ho: int, wo: int) -> None:
        if not fits(ho, wo) or self.out.shape != (n, ho // 2, wo // 2) or self.out.dtype != np.float32:
            raise ValueError(f"conv2d: pooled {self.out.shape} {self.out.dtype} for a ({n}, {ho}, {wo}) output; "
                             "expected float32 (n, Ho/2, Wo/2) of an even map")

    def rows(self, y: np.ndarray, r0: int, r1: int, scratch: Scratch, part: int) -> None:
        pool2x2(y[:, r0:r1], self.out[:, r0 // 2:r1 // 2], scratch, part)

    def chans(self, y: np.ndarray, c0: int, c1: int, scratch: Scratch, part: int | str) -> None:
        pool2x2(y[c0:c1], self.out[c0:c1], scratch, part)


class Channelwise(Tail):
    """A layer whose output channels [lo, hi) come from its input's channels [lo, hi) alone
    ([yolo] activations, [upsample]): `run(y, lo, hi)` writes them into `out`."""

    def __init__(self, out: np.ndarray, run) -> None:
        super().__init__(out)
        self.run = run

    def check(self, n: int, ho: int, wo: int) -> None:
        if self.out.shape[0] != n:
            raise ValueError(f"conv2d: a channelwise tail of {self.out.shape[0]} channels after {n} filters")

    def on_bands(self, rows: int) -> bool:
        return False

    def chans(self, y: np.ndarray, c0: int, c1: int, scratch: Scratch, part: int | str) -> None:
        self.run(y, c0, c1)


class AddInto(Tail):
    """out = y + other (a [shortcut] of equal float32 shapes, alpha = beta = 1, linear)."""

    def __init__(self, out: np.ndarray, other: np.ndarray) -> None:
        super().__init__(out)
        self.other = other

    def check(self, n: int, ho: int, wo: int) -> None:
        if not (self.out.shape == self.other.shape == (n, ho, wo) and self.out.dtype == self.other.dtype == np.float32):
            raise ValueError(f"conv2d: residual {self.other.shape} {self.other.dtype} into {self.out.shape} for a "
                             f"({n}, {ho}, {wo}) output; expected float32 arrays of the output's shape")

    def on_bands(self, rows: int) -> bool:
        """Never: a band is a short run of rows per channel in three arrays, two of them not in cache;
        yolov3's 32->64 @304 (F(6, 3) rows, bands of 6 rows) took 12 ms for its band adds against
        3.4 ms for one add of the whole map (one thread's CPU)."""
        return False

    def rows(self, y: np.ndarray, r0: int, r1: int, scratch: Scratch, part: int) -> None:
        np.add(y[:, r0:r1], self.other[:, r0:r1], out=self.out[:, r0:r1])

    def chans(self, y: np.ndarray, c0: int, c1: int, scratch: Scratch, part: int | str) -> None:
        np.add(y[c0:c1], self.other[c0:c1], out=self.out[c0:c1])
