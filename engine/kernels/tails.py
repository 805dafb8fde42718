"""Work a conv kernel runs on each piece of its output right after writing it, in the same work item
while the piece is in cache: the layer after the conv, fused (`Model.forward` decides which pairs).

`AddInto`: a [shortcut] out = y + other (every yolov3 shortcut: 23 passes over up to 64x208x208 floats,
each a hand-off to the kernel threads). Band kernels (`gemm.conv_banded`, `winograd_rows`) call `rows`
on each band of output rows when `on_bands` says so, else `rest` after their bands; filter-block
kernels (`gemm.conv1x1`, `winograd_gemm`) call `chans` on each block of filters. A float32 add is
exact per element, so the pair has the very bits of the two layers run one after the other.

Fused 2x2 maxpools (yolov3-tiny's layers 1-9) and [yolo] / [upsample] after 1x1 convs were tried at
stop 24 and removed: on a quiet host they cost CPU (76.5 -> 79.2 ms per forward) and wall time
(1.024 -> 1.062x OpenCV, 60 interleaved runs), though they saved hand-offs under load.
"""
from __future__ import annotations

import numpy as np

from engine.kernels.scratch import Scratch
from engine.kernels.threads import parallel_for


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
