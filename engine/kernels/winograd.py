"""When float 3x3 stride-1 convolutions go through Winograd: the switch (`QW_WINOGRAD`, `disabled()`),
the F(2x2) suitability rule the chooser (`engine.kernels.conv.choice`) applies, and the block size of
the weight transforms. The kernel itself, F(2x2)/F(4x4) with every transform a GEMM, is
`engine.kernels.winograd_gemm`; it replaced the NumPy-pass F(2x2) that was here (3-10% slower,
docs/performance.md round 4).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

# Winograd trades memory for speed: a model keeps each such layer's transformed weights, 16/9 the size
# of its 3x3 weights (4x on F(4x4) layers). QW_WINOGRAD=0 (or `disabled()` around the load
# and first forward of a model) keeps every conv on im2col + GEMM: less memory, slower 3x3 layers.
ENABLED = os.environ.get("QW_WINOGRAD", "1").strip().lower() not in ("0", "false", "no", "off")


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Models that prepare their layers inside this block use im2col + GEMM for good."""
    global ENABLED
    before, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = before


def suitable(c: int, h: int, w: int, n: int, k: int, s: int, p: int) -> bool:
    """Whether Winograd beats im2col + GEMM for this layer (measured on 2 cores, AVX2 OpenBLAS).

    It pays when the GEMMs dominate (many input and output channels); on big maps with few channels
    the transforms' memory passes cost more than the multiplies saved. Measured (CPU time, own
    threads): 20-35% less from 64 channels (52x52 to 104x104 maps), 9% more at 32 channels on 208x208.
    """
    return ENABLED and k == 3 and s == 1 and p <= 2 and h + 2 * p >= 4 and w + 2 * p >= 4 and c >= 64 and n >= 64


WEIGHT_BLOCK = 1 << 18   # kernel weights per float64 block of the transform (a few MB of temporaries)
