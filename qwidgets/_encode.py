"""Arrays -> PNG bytes for `ipywidgets.Image` (NumPy + Pillow only, no matplotlib).

Everything here is a pure function of its arguments. Feature maps are `(C, H, W)` float32; a
montage shows one tile per channel, row-major, `cols` tiles per row. Only PNG bytes and histogram
counts ever cross the comm, never lists of pixels.

Colour conventions: feature maps are grey (black = low, white = high); signed data (errors,
weights) use a blue-white-red diverging LUT that is symmetric around 0 (white = 0).
"""
from __future__ import annotations

import functools
import io
import zlib
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.imaging.augment import to_png as _engine_png

Z_RLE = zlib.Z_RLE       # run-length matches only (flat-colour charts)

GAP = 2                      # pixels between montage tiles
GAP_GREY = 48                # colour of the gaps (dark grey, distinct from black data)
FLAT_GREY = 128              # per-channel normalisation of a constant channel: no contrast to show
SERIES_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
MARKER_COLOURS = [(214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194), (23, 190, 207),
                  (188, 189, 34)]


def fmt_number(v: float, spec: str = ".4g") -> str:
    """`format(v, spec)`, the one way views write a real number (tables, status lines, colour bars),
    without a minus sign on a zero: -0.0 (e.g. max |error| 0 of a layer whose two runs agree, as a
    maxpool's CROSS) and negatives that round to zero (-0.0001 at ".1f") read "0" / "0.0"."""
    text = format(v, spec)
    digits = text[1:].split("e")[0].split("E")[0]
    if text.startswith("-") and digits and not digits.strip("0.,%"):
        return text[1:]
    return text


def _diverging_lut(n: int = 256) -> np.ndarray:
    """(n, 3) uint8 blue -> white -> red, linear in each half (a small RdBu-like ramp)."""
    t = np.linspace(-1.0, 1.0, n)
    blue, red, white = np.array([33, 102, 172]), np.array([178, 24, 43]), np.array([247, 247, 247])
    neg = white + (blue - white) * np.clip(-t, 0, 1)[:, None]
    pos = white + (red - white) * np.clip(t, 0, 1)[:, None]
    return np.where(t[:, None] < 0, neg, pos).round().astype(np.uint8)


DIVERGING = _diverging_lut()


@functools.lru_cache(maxsize=8)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in scalable font at `size` px (loaded once per size: a load per label cost ms)."""
    return ImageFont.load_default(size=size)


@functools.lru_cache(maxsize=4096)
def _text_mask(text: str, size: int) -> tuple[Image.Image, int]:
    """`text` rendered once as an "L" coverage mask, and its width (a FreeType render per label cost a
    millisecond: ~60 labels per layer panel, most of them repeated from one Step to the next)."""
    fnt = font(size)
    left, top, right, bottom = fnt.getbbox(text)
    mask = Image.new("L", (max(1, right), max(1, bottom)), 0)
    ImageDraw.Draw(mask).text((0, 0), text, fill=255, font=fnt)
    return mask, int(round(fnt.getlength(text)))


def draw_text(im: Image.Image, xy: tuple[float, float], text: str, fill, size: int) -> None:
    """Pillow's `ImageDraw.text(xy, text, fill, font(size))` at whole-pixel `xy`, from the cached mask."""
    if text:
        im.paste(fill, (int(round(xy[0])), int(round(xy[1]))), _text_mask(text, size)[0])


def text_width(text: str, size: int) -> int:
    return _text_mask(text, size)[1] if text else 0


def to_png(im: Image.Image | np.ndarray, flat: bool = False) -> bytes:
    """PNG bytes at zlib's fastest level (the engine's encoder; views redraw on every step). `flat`: a
    drawing of flat colours (a chart), encoded with zlib's run-length strategy: 2-3x faster there,
    ~20 % more bytes (maps and montages gain nothing from it)."""
    if flat:
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=1, compress_type=Z_RLE)
        return buf.getvalue()
    return _engine_png(im, compress_level=1)


def _as_chw(y: np.ndarray, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2:
        y = y[None]
    if y.ndim != 3 or 0 in y.shape:
        raise ValueError(f"{name}: expected a (C, H, W) or (H, W) array, got shape {y.shape}")
    return y


def _fit(y: np.ndarray, size: int) -> np.ndarray:
    """Resize (C, H, W) so the longest side is about `size`: box-average down, repeat up (integers).

    Downscaling by an integer factor f drops the last H % f rows / W % f columns (a few pixels)
    so the average is one reshape, not a resampler.
    """
    _, h, w = y.shape
    side = max(h, w)
    if side > size:
        f = -(-side // size)
        hh, ww = max(1, h // f), max(1, w // f)
        if h >= f and w >= f:
            # two 1-D box sums (rows, then columns): ~5x faster than one mean over axes (2, 4)
            c = y.shape[0]
            rows = y[:, :hh * f, :ww * f].reshape(c, hh, f, ww * f).sum(axis=2, dtype=np.float32)
            return rows.reshape(c, hh, ww, f).sum(axis=3) * np.float32(1.0 / (f * f))
        return y[:, ::f, ::f]
    k = size // side
    if k > 1:
        return y.repeat(k, axis=1).repeat(k, axis=2)
    return y


def _tile(tiles: np.ndarray, cols: int) -> np.ndarray:
    """(N, h, w[, 3]) uint8 -> one mosaic with GAP pixels between tiles."""
    n, h, w = tiles.shape[:3]
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    shape = (rows * (h + GAP) - GAP, cols * (w + GAP) - GAP) + tiles.shape[3:]
    out = np.full(shape, GAP_GREY, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + GAP):r * (h + GAP) + h, c * (w + GAP):c * (w + GAP) + w] = tiles[i]
    return out


def _label_tiles(im: Image.Image, n: int, cols: int, h: int, w: int, first: int = 0) -> None:
    """Channel numbers in the tiles' corners (with a dark shadow), pasted from a cached mask: rendering
    64 labels with Pillow's text drawing cost more than the montage itself, on every Step."""
    fill = 255 if im.mode == "L" else (255, 255, 0)
    shadow, text = _label_masks(n, cols, h, w, first)
    im.paste(0 if im.mode == "L" else (0, 0, 0), (0, 0), shadow)
    im.paste(fill, (0, 0), text)


@functools.lru_cache(maxsize=32)
def _label_masks(n: int, cols: int, h: int, w: int, first: int) -> tuple[Image.Image, Image.Image]:
    size = (cols * (w + GAP) - GAP, (-(-n // cols)) * (h + GAP) - GAP)
    shadow, text = Image.new("L", size, 0), Image.new("L", size, 0)
    ds, dt = ImageDraw.Draw(shadow), ImageDraw.Draw(text)
    for i in range(n):
        r, c = divmod(i, cols)
        x, y = c * (w + GAP) + 1, r * (h + GAP)
        ds.text((x + 1, y + 1), str(first + i), fill=255)
        dt.text((x, y), str(first + i), fill=255)
    return shadow, text


def feature_montage(y: np.ndarray, max_channels: int = 64, cols: int = 8, size: int = 64,
                    normalize: str = "channel", labels: bool = False, as_image: bool = False) -> bytes | Image.Image:
    """PNG montage of the first `max_channels` channels of a feature map, grey levels.

    y: (C, H, W) or (H, W), any real dtype. Each tile is the channel resized so its longest side
    is about `size` pixels. normalize="channel": each channel maps its own [min, max] to
    [0, 255] (a constant channel is mid-grey); "global": the whole tensor's [min, max] (a channel
    equal to the global max is white; "global" spans the channels shown). min/max come from the
    full-resolution data.
    labels=True writes each channel index in its tile's corner.

    Raises: ValueError for a bad shape or `normalize` value.
    """
    if normalize not in ("channel", "global"):
        raise ValueError(f"normalize={normalize!r}: expected 'channel' or 'global'")
    y = _as_chw(y, "feature_montage")[:max(1, max_channels)]
    flat = y.reshape(y.shape[0], -1)
    if normalize == "channel":
        lo, hi = flat.min(axis=1).astype(np.float32), flat.max(axis=1).astype(np.float32)
    else:
        lo = np.full(y.shape[0], flat.min(), np.float32)
        hi = np.full(y.shape[0], flat.max(), np.float32)
    span = hi - lo
    flat_ch = span <= 0
    gain = np.where(flat_ch, 0.0, 255.0 / np.where(flat_ch, 1.0, span)).astype(np.float32)
    t = _fit(y.astype(np.float32, copy=False), size)
    g = (t - lo[:, None, None]) * gain[:, None, None]
    g[flat_ch] = FLAT_GREY
    tiles = np.clip(g + 0.5, 0, 255).astype(np.uint8)
    im = Image.fromarray(_tile(tiles, cols))
    if labels:
        _label_tiles(im, tiles.shape[0], max(1, min(cols, tiles.shape[0])), tiles.shape[1], tiles.shape[2])
    return im if as_image else to_png(im)


def diverging_rgb(x: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """uint8 RGB (..., 3) of signed data: 0 white, +vmax red, -vmax blue (default vmax = max|x|)."""
    x = np.asarray(x, np.float32)
    if vmax is None:
        vmax = float(np.abs(x).max()) if x.size else 0.0
    scale = (DIVERGING.shape[0] - 1) / (2.0 * vmax) if vmax > 0 else 0.0
    idx = np.clip((x * scale + (DIVERGING.shape[0] - 1) / 2.0) + 0.5, 0, DIVERGING.shape[0] - 1)
    return DIVERGING[idx.astype(np.intp)]


def heatmap_png(diff: np.ndarray, vmax: float | None = None, max_channels: int = 64, cols: int = 8,
                size: int = 64, as_image: bool = False) -> bytes | Image.Image:
    """PNG error heat map of `diff` (e.g. INT - FLOAT), diverging LUT symmetric around 0.

    diff: (C, H, W) (one tile per channel, like `feature_montage`) or (H, W). One colour scale
    for all tiles: vmax (default max|diff| over the shown channels) is full red / full blue.
    Tiles are box-averaged when downscaled, so isolated errors fade; pass a larger `size` to keep them.
    """
    d = _as_chw(diff, "heatmap_png")[:max(1, max_channels)]
    if vmax is None:
        vmax = float(np.abs(d).max())
    rgb = diverging_rgb(_fit(d.astype(np.float32, copy=False), size), vmax)
    tiled = _tile(rgb, cols)
    return Image.fromarray(tiled) if as_image else to_png(tiled)


def _hist_x_range(series: Mapping[str, tuple[np.ndarray, np.ndarray]], markers: Mapping[str, float],
                  log_x: bool) -> tuple[float, float]:
    vals = [float(v) for _, edges in series.values() for v in (edges[0], edges[-1])]
    vals += [float(v) for v in markers.values() if np.isfinite(v)]
    if log_x:
        vals = [v for v in vals if v > 0]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if hi <= lo:
        lo, hi = (lo / 2, hi * 2) if log_x else (lo - 0.5, hi + 0.5)
    return lo, hi


def histogram_png(series: Mapping[str, tuple[np.ndarray, np.ndarray]], markers: Mapping[str, float] | None = None,
                  log_y: bool = False, log_x: bool = False, width: int = 480, height: int = 200,
                  title: str = "", in_use: str | None = None) -> bytes:
    """PNG of overlaid histograms with vertical threshold markers (Pillow only).

    series: label -> (counts, edges) as from `engine.session.stats.histogram_counts` (FLOAT, INT, ...),
    drawn as translucent step areas in their own colour on one shared x axis. markers: label -> x value
    (e.g. a calibration threshold per method), drawn as vertical lines and named in the legend, which
    sits below the plot (it never covers a line); `in_use` names the marker the quantized model uses
    (drawn thicker, starred in the legend). Axes: 5 x ticks, 3 y ticks (counts). The image is width x height
with the legend inside it (the plot shrinks by one 14 px line per 3 legend entries).
    log_y: y = log10(1 + count); log_x: x axis in log2 (for log2-bin histograms; x > 0 only).
    """
    markers = dict(markers or {})
    legend = [(k, SERIES_COLOURS[i % len(SERIES_COLOURS)], "") for i, k in enumerate(series)]
    legend += [(("* " if k == in_use else "") + k, MARKER_COLOURS[i % len(MARKER_COLOURS)], f" {v:.3g}")
               for i, (k, v) in enumerate(markers.items())]
    per_row = 3
    legend_h = 14 * (-(-len(legend) // per_row))
    im = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(im, "RGBA")
    left, right, top, bottom = 48, width - 10, 16 if title else 6, height - 30 - legend_h
    lo, hi = _hist_x_range(series, markers, log_x)
    fx = (np.log2 if log_x else (lambda v: np.asarray(v, np.float64)))
    x0, x1 = float(fx(lo)), float(fx(hi))

    def px(v: np.ndarray) -> np.ndarray:
        return left + (fx(np.maximum(v, lo) if log_x else v) - x0) * ((right - left) / (x1 - x0))

    ys = {k: (np.log10(1.0 + np.asarray(c, np.float64)) if log_y else np.asarray(c, np.float64))
          for k, (c, _) in series.items()}
    ymax = max([float(y.max()) for y in ys.values() if y.size] + [1e-12])
    draw.line([(left, bottom), (right, bottom)], fill=(0, 0, 0))
    draw.line([(left, top), (left, bottom)], fill=(0, 0, 0))
    for i, (label, (_, edges)) in enumerate(series.items()):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        xs = px(np.asarray(edges, np.float64))
        yv = bottom - ys[label] / ymax * (bottom - top)
        pts = [(float(xs[0]), bottom)]
        for j, y in enumerate(yv):
            pts += [(float(xs[j]), float(y)), (float(xs[j + 1]), float(y))]
        pts.append((float(xs[-1]), bottom))
        draw.polygon(pts, fill=colour + (70,), outline=colour + (255,))
    for i, (label, v) in enumerate(markers.items()):
        if not np.isfinite(v) or (log_x and v <= 0):
            continue
        x = float(px(np.float64(v)))
        draw.line([(x, top), (x, bottom)], fill=MARKER_COLOURS[i % len(MARKER_COLOURS)] + (255,),
                  width=4 if label == in_use else 2)
    # x ticks: 5 values (octaves on a log2 axis), y ticks: 0, half, max count
    ticks = (np.exp2(np.linspace(x0, x1, 5)) if log_x else np.linspace(lo, hi, 5))
    for t in ticks:
        x = float(px(np.float64(t)))
        draw.line([(x, bottom), (x, bottom + 3)], fill=(0, 0, 0))
        text = f"{t:.3g}"
        tw = text_width(text, 11)
        draw_text(im, (min(max(0, x - tw / 2), width - tw), bottom + 4), text, (0, 0, 0), 11)
    for frac in (0.0, 0.5, 1.0):
        y = bottom - frac * (bottom - top)
        count = (10 ** (frac * ymax) - 1) if log_y else frac * ymax
        text = f"{count:.3g}"
        draw.line([(left - 3, y), (left, y)], fill=(0, 0, 0))
        draw_text(im, (left - 4 - text_width(text, 11), y - 6), text, (0, 0, 0), 11)
    draw_text(im, (left, bottom + 16), ("|x|, log2 axis" if log_x else "value") + ("   count, log axis" if log_y
              else "   (y: count)"), (90, 90, 90), 11)
    if title:
        draw_text(im, (left, 1), title, (0, 0, 0), 11)
    for k, (label, colour, suffix) in enumerate(legend):
        r, c = divmod(k, per_row)
        x, y = 8 + c * (width // per_row), height - legend_h + r * 14
        draw.rectangle([x, y + 3, x + 8, y + 11], fill=colour + (255,))
        draw_text(im, (x + 12, y), f"{label}{suffix}", (0, 0, 0), 11)
    return to_png(im, flat=True)


def weights_png(w: np.ndarray, max_filters: int = 32, max_channels: int = 32, cell: int | None = None) -> bytes:
    """PNG grid of conv weights: one column per filter, one row per input channel, diverging colours.

    w: (n, c, k, k) (or (n, c) for a 1x1 / connected matrix). Columns = filters so that first
    layers (16 filters x 3 channels) come out wide rather than tall. One symmetric scale (max|w| of
    the shown part) for the whole grid. Each kernel is `cell` pixels (default: about 8 px per tap for
    k > 1, 3 px for 1x1) with a 1-pixel gap between kernels when k > 1.
    """
    w = np.asarray(w, np.float32)
    if w.ndim == 2:
        w = w[:, :, None, None]
    if w.ndim != 4 or 0 in w.shape:
        raise ValueError(f"weights_png: expected (n, c, k, k) weights, got shape {w.shape}")
    w = w[:max_filters, :max_channels]
    n, c, kh, kw = w.shape
    rgb = diverging_rgb(w)                              # (n, c, kh, kw, 3)
    gap = 1 if max(kh, kw) > 1 else 0
    rep = cell if cell is not None else (max(1, 12 // max(kh, kw)) if gap else 3)
    rgb = rgb.repeat(rep, axis=2).repeat(rep, axis=3)
    # pad every kernel with a light-grey gap, then lay (n, c) kernels out as one image
    rgb = np.pad(rgb, ((0, 0), (0, 0), (0, gap), (0, gap), (0, 0)), constant_values=200)
    ch, cw = rgb.shape[2], rgb.shape[3]
    out = rgb.transpose(1, 2, 0, 3, 4).reshape(c * ch, n * cw, 3)     # rows: channels, columns: filters
    return to_png(out[:c * ch - gap, :n * cw - gap])


def bar_chart_png(labels: Sequence[str], values: Sequence[float], title: str, x_label: str,
                  width: int = 480, bar_h: int = 18, lo: float | None = None, hi: float | None = None,
                  colour: tuple[int, int, int] = (214, 39, 40)) -> bytes:
    """Horizontal bars, one per label (top = first), value written at the bar end, x axis with ticks and
    `x_label` (its unit and direction). lo/hi: the axis range (default 0 .. max(values))."""
    fnt = font(12)
    n = max(1, len(labels))
    left, right, top = 110, width - 60, 24
    height = top + n * (bar_h + 4) + 40
    im = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    draw.text((6, 4), title, fill=(0, 0, 0), font=fnt)
    vals = [float(v) for v in values]
    lo = min(0.0, min(vals, default=0.0)) if lo is None else lo
    hi = max(vals + [lo + 1e-9]) if hi is None else hi
    span = (hi - lo) or 1.0

    def px(v: float) -> float:
        return left + (min(max(v, lo), hi) - lo) / span * (right - left)
    for k, (label, v) in enumerate(zip(labels, vals)):
        y = top + k * (bar_h + 4)
        draw.text((6, y + 2), label, fill=(0, 0, 0), font=fnt)
        draw.rectangle([px(max(lo, 0.0)), y, px(v), y + bar_h], fill=colour)
        draw.text((px(v) + 4, y + 2), f"{v:.2f}", fill=(0, 0, 0), font=fnt)
    axis_y = top + n * (bar_h + 4) + 2
    draw.line([(left, axis_y), (right, axis_y)], fill=(0, 0, 0))
    for t in np.linspace(lo, hi, 5):
        draw.line([(px(t), axis_y), (px(t), axis_y + 4)], fill=(0, 0, 0))
        draw.text((px(t) - 10, axis_y + 5), f"{t:.4g}", fill=(0, 0, 0), font=fnt)
    draw.text((left, axis_y + 20), x_label, fill=(0, 0, 0), font=fnt)
    return to_png(im)


def framed_png(png: bytes | Image.Image, title: str, bar: str | None = None, lo: float = 0.0, hi: float = 1.0,
               unit: str = "") -> bytes:
    """`png` with a title line above and a labelled colour bar below; the image is as wide as the title.

    bar: "grey" (black = lo .. white = hi), "channel" (grey, each channel's own min .. max),
    "diverging" (blue = lo .. white = 0 .. red = hi) or None (title only)."""
    src = png if isinstance(png, Image.Image) else Image.open(io.BytesIO(png))
    # grey maps stay one byte per pixel: a third of the PNG to encode and send
    mode = "L" if src.mode == "L" and bar in (None, "grey", "channel") else "RGB"
    src = src.convert(mode)
    # as wide as the title too: a 4-column heat map (~260 px) cut "layer 4 output after - before the edit,
    # channels 0-15 of 64" after "channels"; the picture stays at the left, the margin is white
    width = max(src.width, 260, text_width(title, 12) + 4)
    bar_h = 0 if bar is None else 34
    out = Image.new(mode, (width, 18 + src.height + bar_h), 255 if mode == "L" else (255, 255, 255))
    black = 0 if mode == "L" else (0, 0, 0)
    draw = ImageDraw.Draw(out)
    draw_text(out, (2, 2), title, black, 12)
    out.paste(src, (0, 18))
    if bar is not None:
        y0, x0, x1 = 18 + src.height + 4, 40, width - 40
        t = np.linspace(0.0, 1.0, x1 - x0)
        if bar == "diverging":
            strip = DIVERGING[np.clip((t * (DIVERGING.shape[0] - 1)).round().astype(int), 0, DIVERGING.shape[0] - 1)]
        else:
            g = (t * 255).round().astype(np.uint8)
            strip = np.stack([g, g, g], axis=1)
        out.paste(Image.fromarray(np.repeat(strip[None], 10, axis=0)).convert(mode), (x0, y0))
        draw.rectangle([x0 - 1, y0 - 1, x1, y0 + 10], outline=black)
        if bar == "channel":
            labels = [(x0, "each channel's min"), (x1, "its max")]
        elif bar == "diverging":
            labels = [(x0, f"{fmt_number(lo, '.3g')}{unit}"), ((x0 + x1) // 2, "0"),
                      (x1, f"+{fmt_number(hi, '.3g')}{unit}")]
        else:
            labels = [(x0, f"{fmt_number(lo, '.3g')}{unit}"), (x1, f"{fmt_number(hi, '.3g')}{unit}")]
        for x, text in labels:
            tw = text_width(text, 12)
            draw_text(out, (min(max(2, x - tw / 2), width - tw - 2), y0 + 13), text, black, 12)
    return to_png(out)


def channels_note(c: int, shown: int) -> str:
    return f"channels 0-{shown - 1} of {c}" if shown < c else f"all {c} channels"
