"""quantize() of a float tensor holding NaN (a float layer that overflowed: inf - inf) must still saturate
its other values. Its extremes came from ndarray.max / min, which return NaN when one element is NaN; the
comparisons with +-127.5 were then False, nothing was clipped, and the int8 cast wrapped every value past
the range around (1000 / 0.1 -> 16, -300 / 0.1 -> 72: the sign flipped, inf -> 0) with 0 counted saturated."""
from __future__ import annotations

import numpy as np
import pytest

from engine.quant import qtensor
from engine.quant.qtensor import quantize


@pytest.mark.parametrize("blocks", [False, True])
def test_a_nan_does_not_stop_the_other_values_from_saturating(monkeypatch, blocks):
    x = np.array([np.nan, 1000, -np.inf, np.inf, 1.0, -300, 12.75, -12.75], np.float32)
    want = [0, 127, -127, 127, 10, -127, 127, -127]          # NaN: code 0 (real 0); the rest saturate
    if blocks:                                               # a big tensor: quantized in blocks on the threads
        monkeypatch.setattr(qtensor, "QUANTIZE_BLOCK", 4)
        x = np.tile(x, 8)
        want = want * 8
    with np.errstate(invalid="ignore"):
        q, saturated = quantize(x, 0.1)
    assert q.tolist() == want
    assert saturated == 6 * (8 if blocks else 1)             # 1000, -inf, inf, -300, and +-127.5 (rounded to +-128)
