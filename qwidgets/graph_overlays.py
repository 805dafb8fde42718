"""Graph colourings by a metric: how each is written on nodes and in the legend, the 8-step ramp, the worst nodes.

`OVERLAY_META` says, per metric, its unit, which end is bad, its scale (fixed or the values' range) and how
to get values when there are none; `legend_html` writes the legend line of GraphView, `ramp_classes` the
colour class of each node and `worst` the list under the canvas. Pure functions of the values shown.
"""
from __future__ import annotations

import html
from typing import Mapping

import numpy as np

# 8-step sequential ramp, good -> bad (pale yellow -> dark red); labels keep a white outline on every step
RAMP = ["#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#b10026"]


class OverlayMeta:
    """How a metric is written on nodes and in the legend: unit, which end is bad, a fixed scale or not."""

    def __init__(self, title: str, fmt: str, worse: str, fixed: tuple[float, float] | None = None,
                 hint: str = "", ends: tuple[str, str] = ("good", "bad")) -> None:
        self.title, self.fmt, self.worse, self.fixed, self.hint, self.ends = title, fmt, worse, fixed, hint, ends

    def text(self, v: float) -> str:
        return self.fmt.format(v)

    def badness(self, values: Mapping[str, float]) -> dict[str, float]:
        """node -> 0 (best) .. 1 (worst) on this metric's scale (fixed, or the range of the values)."""
        lo, hi = self.fixed if self.fixed else (min(values.values()), max(values.values()))
        out = {}
        for k, v in values.items():
            t = 0.0 if hi == lo else (min(max(v, lo), hi) - lo) / (hi - lo)
            out[k] = t if self.worse == "high" else 1.0 - t
        return out


OVERLAY_META = {
    "sqnr": OverlayMeta("SQNR of the layer output vs FLOAT, dB (higher is better)", "{:.1f} dB", "low",
                        hint="run layers in INT or HYBRID (Step / Run) to see it"),
    # a fixed scale: a rate of 1e-7 is negligible and must not look as bad as 1 %
    "saturation": OverlayMeta("saturated values, % of the tensor (lower is better; scale 0 .. 1 %)", "{:.2g} %",
                              "high", fixed=(0.0, 1.0), hint="run layers in INT or HYBRID (Step / Run) to see it"),
    "range_use": OverlayMeta("int8 range used, max|q| / 127, % (low wastes resolution)", "{:.0f} %", "low",
                             fixed=(0.0, 100.0), hint="run layers in INT or HYBRID (Step / Run) to see it"),
    "recovery": OverlayMeta("recovery of the picked detection with this layer FLOAT, % (higher = more to "
                            "blame)", "{:.0f} %", "high", fixed=(0.0, 100.0),
                            hint="click Explain in the Explain tab and pick a detection",
                            ends=("not to blame", "to blame")),
    "device_mismatched": OverlayMeta("elements where the device runtime differs from our INT (lower is better)",
                                     "{:.0f}", "high", hint="click Compare with device in the Device tab",
                                     ends=("bit-exact", "most mismatched")),
    "propagated_sqnr": OverlayMeta("SQNR of the INT run vs FLOAT at this layer, propagated, dB (higher is better)",
                                   "{:.1f} dB", "low", hint="click Compare with device in the Device tab"),
    "propagated_cos": OverlayMeta("cosine of the INT run vs FLOAT at this layer, propagated (1 = same)", "{:.4f}",
                                  "low", hint="click Compare with device in the Device tab"),
    "sensitivity_rank": OverlayMeta("sensitivity rank (1 = quantizing this layer alone hurts most)", "#{:.0f}",
                                    "low", hint="run the sensitivity sweep in the Quantization tab to see it",
                                    ends=("least sensitive", "most sensitive")),
}
def finite_values(values: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}


def ramp_classes(values: Mapping[str, float], ids: list[str], meta: OverlayMeta | None = None) -> dict[str, str]:
    """Overlay class per node id: ov0 (best) .. ov7 (worst) on the metric's scale, else ov-none.
    Without `meta`: by value between the min and max finite value (low = ov0)."""
    finite = finite_values(values)
    if not finite:
        return {i: "ov-none" for i in ids}
    bad = (meta or OverlayMeta("", "{}", "high")).badness(finite)
    steps = len(RAMP)
    return {i: f"ov{min(steps - 1, int(bad[i] * steps))}" if i in finite else "ov-none" for i in ids}


def worst(values: Mapping[str, float], meta: OverlayMeta, n: int = 5) -> list[tuple[str, float]]:
    """The n worst (node, value) pairs, worst first."""
    finite = finite_values(values)
    return sorted(finite.items(), key=lambda kv: kv[1], reverse=meta.worse == "high")[:n]




def metric_legend_html(overlay: str, values: Mapping[str, float], why_none: str = "") -> str:
    """The legend of a metric colouring: its title and the ramp between its good and bad ends; without values,
    how to get some (`why_none` when the owner knows better than the metric's standing hint, e.g. values
    dropped because the session changed since they were computed)."""
    meta = OVERLAY_META.get(overlay)
    title = html.escape(meta.title if meta else overlay)
    finite = finite_values(values)
    if not finite:
        if why_none:
            return f"<small>{title}: no values ({html.escape(why_none)})</small>"
        hint = f": no values yet ({html.escape(meta.hint)})" if meta and meta.hint else ": no values yet"
        return f"<small>{title}{hint}</small>"
    swatches = "".join(f'<span style="background:{c};display:inline-block;width:14px;height:12px"></span>'
                       for c in RAMP)
    if meta and meta.fixed:
        lo, hi = meta.fixed
    else:
        lo, hi = min(finite.values()), max(finite.values())
    good, bad = (lo, hi) if (meta is None or meta.worse == "high") else (hi, lo)
    fmt = meta.text if meta else (lambda v: f"{v:.3g}")
    lo_word, hi_word = meta.ends if meta else ("good", "bad")
    return (f"<small>{title}<br>{lo_word} {html.escape(fmt(good))} {swatches} {html.escape(fmt(bad))} "
            f"{hi_word}</small>")
