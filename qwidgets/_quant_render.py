"""Rendering of a method comparison: the ranked HTML table and the per-layer SQNR line chart (PNG).

Pure functions of a `CompareTable` / of SQNR series; no widgets, no engine calls.
"""
from __future__ import annotations

import html
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image, ImageDraw

from qwidgets._encode import SERIES_COLOURS, to_png
from qwidgets.layer_panel import TABLE_CSS

if TYPE_CHECKING:
    from engine.scale.compare import CompareTable

SQNR_CAP = 80.0             # dB; identical tensors (inf) are drawn at the cap


def _profile(qmodel) -> str:
    return "-" if qmodel is None else qmodel.profile


def ranked_html(table: CompareTable) -> str:
    """HTML table: rank, method, profile, INT mAP@[.5:.95] / mAP@0.5 / lost vs FLOAT, HYBRID, SQNR, int8 size."""
    head = ("<tr><th>rank</th><th>method</th><th>profile</th><th>INT mAP@[.5:.95]</th><th>INT mAP@0.5</th>"
            "<th>INT lost</th><th>HYBRID mAP@[.5:.95]</th><th>HYBRID mAP@0.5</th><th>INT found</th>"
            "<th>extra</th><th>mean INT SQNR</th><th>int8 MB</th></tr>")
    rows = []
    for k, r in enumerate(table.results, 1):
        a, h = r.agreement["int"], r.agreement["hybrid"]
        rows.append(f"<tr><td>{k}</td><td>{html.escape(r.method)}</td><td>{html.escape(_profile(r.qmodel))}</td>"
                    f"<td>{a.map50_95:.3f}</td><td>{a.map50:.3f}</td><td>{a.missed}</td>"
                    f"<td>{h.map50_95:.3f}</td><td>{h.map50:.3f}</td>"
                    f"<td>{a.matched}/{a.matched + a.missed}</td><td>{a.extra}</td><td>{r.mean_sqnr:.1f} dB</td>"
                    f"<td>{r.size['int8_bytes'] / 1e6:.2f}</td></tr>")
    note = f"<p class='qw-note'>every method refined after calibration: {html.escape(', '.join(table.refine))}</p>" \
        if table.refine else ""
    return f"{TABLE_CSS}<table class='qw-table qw-ranking'>{head}{''.join(rows)}</table>{note}"


def sqnr_chart_png(series: dict[str, Sequence[float]], width: int = 640, height: int = 220,
                   title: str = "INT SQNR per layer (dB, propagated)") -> bytes:
    """Line chart PNG: x = layer index, y = SQNR dB, one line per method; NaN gaps, inf at SQNR_CAP."""
    im = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    left, right, top, bottom = 34, width - 90, 16, height - 18
    vals = {k: np.minimum(np.asarray(v, np.float64), SQNR_CAP) for k, v in series.items()}
    finite = np.concatenate([v[np.isfinite(v)] for v in vals.values()] + [np.zeros(0)])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    lo, hi = np.floor(lo / 10) * 10, max(np.ceil(hi / 10) * 10, np.floor(lo / 10) * 10 + 10)
    n = max(len(v) for v in vals.values()) if vals else 1
    px = lambda i: left + i * (right - left) / max(1, n - 1)           # noqa: E731
    py = lambda v: bottom - (v - lo) * (bottom - top) / (hi - lo)     # noqa: E731
    for tick in np.arange(lo, hi + 1e-9, 10):
        y = py(tick)
        draw.line([(left, y), (right, y)], fill=(230, 230, 230))
        draw.text((2, y - 6), f"{tick:.0f}", fill=(0, 0, 0))
    draw.line([(left, bottom), (right, bottom)], fill=(0, 0, 0))
    for i in range(0, n, max(1, n // 12)):
        draw.text((px(i) - 4, bottom + 3), str(i), fill=(0, 0, 0))
    for k, (label, v) in enumerate(vals.items()):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        pts = [(px(i), py(y)) if np.isfinite(y) else None for i, y in enumerate(v)]
        for a, b in zip(pts, pts[1:]):
            if a is not None and b is not None:
                draw.line([a, b], fill=colour, width=2)
        for p in pts:
            if p is not None:
                draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colour)
        draw.rectangle([right + 8, top + 14 * k + 3, right + 16, top + 14 * k + 10], fill=colour)
        draw.text((right + 20, top + 14 * k), label, fill=(0, 0, 0))
    draw.text((left, 2), title + "; higher is better", fill=(0, 0, 0))
    draw.text((right + 8, bottom + 3), "layer index", fill=(0, 0, 0))       # the x axis's name
    draw.text((2, 2), "dB", fill=(0, 0, 0))                                  # the y axis's name
    return to_png(im)
