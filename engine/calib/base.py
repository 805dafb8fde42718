"""Calibrator registry and base class: a calibrator turns an AbsHistogram into a clipping threshold."""
from __future__ import annotations

import inspect
import math
import numbers
from typing import Any

from engine.calib.histogram import AbsHistogram
from engine.errors import ArgumentError
from engine.registry import Registry

CALIBRATORS: Registry[type["Calibrator"]] = Registry("calibration method")


class Calibrator:
    """Chooses the threshold T (real values are clipped to [-T, T], scale = T / 127).

    `threshold()` is a pure function of the histogram; statistics collection is separate
    (engine/calib/collect.py), so one calibration pass serves every method.
    """
    name = "base"
    power_of_two = False            # log2-style methods round the scale up to a power of two
    weights = "minmax"              # how this method quantizes weights (see engine/quant/weights.py)

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def threshold(self, h: AbsHistogram) -> float:
        raise NotImplementedError

    # the calibration rules of engine/calib/views.py (one-sided histograms, shared scales, an
    # unclipped first layer); yolo2_light turns them off to stay that tool's exact reproduction
    rules: tuple[str, ...] = ("one_sided", "shared_scales", "first_layer")

    def group_threshold(self, view) -> float:
        """The threshold of one scale group from its calibration view (engine/calib/views.TensorView): the
        largest |x| seen where the rules keep the full range (the first layer), else `threshold(view.hist)`."""
        return view.hist.amax if view.full_range else self.threshold(view.hist)

    def weight_rounding(self, reads_image: bool) -> str:
        """How a layer's int8 weights round (engine/quant/weights.ROUNDINGS); `reads_image`: the layer reads the
        image itself (the first layer)."""
        return "nearest"

    def scale(self, h: AbsHistogram) -> float:
        """real = q * scale. Empty / all-zero tensors get the scale of threshold 1 (any works)."""
        return self.scale_for(self.threshold(h) if h.amax > 0 else 1.0)

    def scale_for(self, t: float) -> float:
        """The scale of threshold t (rounded up to a power of two for power-of-two methods)."""
        s = max(t, 1e-12) / 127.0
        if self.power_of_two:
            s = 2.0 ** math.ceil(math.log2(s) - 1e-12)   # T = 127 * 2**k gives exactly 2**k
        return s

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in sorted(self.settings.items()))
        return f"{self.name}({args})" if args else self.name


def _setting(method: str, name: str) -> str:
    """"kl stride", but "percentile" alone for percentile's own setting ("percentile percentile=" read as a typo)."""
    return name if name == method else f"{method} {name}"


def int_setting(method: str, name: str, value: Any, lo: int, hi: int) -> int:
    """Setting `name` of `method` as an integer in [lo, hi]. A bool (JSON true) or a fraction is refused,
    not read as 1 or truncated: either would quietly calibrate with a value nobody asked for."""
    ok = not isinstance(value, bool) and (isinstance(value, numbers.Integral) or (
        isinstance(value, float) and value.is_integer()))
    if not ok or not lo <= int(value) <= hi:
        raise ArgumentError(f"{_setting(method, name)}={value!r}: expected an integer in [{lo}, {hi}]")
    return int(value)


def number_setting(method: str, name: str, value: Any, lo: float, hi: float, *, closed: bool = False) -> float:
    """Setting `name` of `method` as a finite number in (lo, hi] ([lo, hi] if `closed`); a bool or a string
    is refused (JSON true would otherwise be read as 1)."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if not ok or not (lo <= value if closed else lo < value) or not value <= hi:
        raise ArgumentError(f"{_setting(method, name)}={value!r}: expected a number in {'[' if closed else '('}{lo:g}, {hi:g}]")
    return float(value)


def known_settings(cls: type[Calibrator]) -> list[str]:
    """The keyword settings a calibrator class declares in its constructor."""
    params = inspect.signature(cls.__init__).parameters.items()
    return [n for n, p in params if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def make(method: str, **settings: Any) -> Calibrator:
    """A calibrator by registry key, e.g. make("percentile", percentile=99.9).

    An unknown setting (a typo) is refused: it would otherwise be stored in the quantized model's
    meta and silently change nothing."""
    cls = CALIBRATORS.get(method)
    known = known_settings(cls)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ArgumentError(f"{', '.join(map(repr, unknown))} is not a setting of method {method!r} "
                            f"(its settings: {', '.join(known) or 'none'})")
    return cls(**settings)
