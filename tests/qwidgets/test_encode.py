"""_encode: arrays -> PNG bytes (sizes, pixel values) and histogram counts (equal to NumPy's)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.session.stats import histogram_counts
from qwidgets._encode import (DIVERGING, FLAT_GREY, GAP, feature_montage, framed_png, heatmap_png,
                              histogram_png, text_width, weights_png)


def png(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG"
    return np.asarray(im)


def tile(a: np.ndarray, i: int, cols: int, side: int) -> np.ndarray:
    r, c = divmod(i, cols)
    return a[r * (side + GAP):r * (side + GAP) + side, c * (side + GAP):c * (side + GAP) + side]


def test_montage_size_follows_channels_cols_and_tile_size():
    y = np.random.default_rng(0).random((10, 13, 13), dtype=np.float32)
    a = png(feature_montage(y, cols=4, size=52))           # 13 px upscaled x4, 3 rows of 4
    assert a.shape == (3 * 52 + 2 * GAP, 4 * 52 + 3 * GAP)
    big = png(feature_montage(np.zeros((100, 416, 416), np.float32), max_channels=16, cols=8, size=64))
    assert big.shape == (2 * 59 + GAP, 8 * 59 + 7 * GAP)   # 416 box-reduced by 7 -> 59 px tiles


def test_montage_global_max_channel_is_white_and_min_channel_black():
    y = np.zeros((3, 8, 8), np.float32)
    y[1] = 5.0                      # constant global max
    y[2, :, :4] = 2.5
    a = png(feature_montage(y, cols=3, size=8, normalize="global"))
    assert (tile(a, 0, 3, 8) == 0).all() and (tile(a, 1, 3, 8) == 255).all()
    assert (tile(a, 2, 3, 8)[:, :4] == 128).all() and (tile(a, 2, 3, 8)[:, 4:] == 0).all()


def test_montage_per_channel_stretches_each_channel():
    y = np.stack([np.tile(np.linspace(0, s, 8, dtype=np.float32), (8, 1)) for s in (1.0, 100.0)])
    y = np.concatenate([y, np.full((1, 8, 8), 7.0, np.float32)])
    a = png(feature_montage(y, cols=3, size=8, normalize="channel"))
    for i in (0, 1):                # both ramps span 0..255 whatever their scale
        t = tile(a, i, 3, 8)
        assert t[:, 0].max() == 0 and t[:, -1].min() == 255
    assert (tile(a, 2, 3, 8) == FLAT_GREY).all()      # a constant channel has no contrast


def test_montage_labels_and_bad_input():
    y = np.random.default_rng(1).random((4, 16, 16), dtype=np.float32)
    assert not np.array_equal(png(feature_montage(y, labels=True)), png(feature_montage(y)))
    with pytest.raises(ValueError, match="normalize"):
        feature_montage(y, normalize="median")
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        feature_montage(np.zeros((2, 3, 4, 5), np.float32))


def test_heatmap_is_white_at_zero_red_positive_blue_negative():
    d = np.zeros((6, 6), np.float32)
    d[0, 0], d[5, 5] = 2.0, -2.0
    a = png(heatmap_png(d, size=6))
    assert a.shape == (6, 6, 3)
    assert tuple(a[2, 2]) == tuple(DIVERGING[128]) and a[2, 2].min() > 240
    assert tuple(a[0, 0]) == tuple(DIVERGING[-1]) and tuple(a[5, 5]) == tuple(DIVERGING[0])
    chw = png(heatmap_png(np.ones((3, 4, 4), np.float32), cols=3, size=4))
    assert chw.shape == (4, 3 * 4 + 2 * GAP, 3)


def test_a_framed_picture_is_as_wide_as_its_title():
    """The weight editor's heat map (4 tiles of 64 px) was framed 260 px wide and its title lost its end
    ("... before the edit, channels 0-15 of 64" ended at "channels")."""
    heat = heatmap_png(np.ones((16, 8, 8), np.float32), max_channels=16, cols=4, vmax=1.0, as_image=True)
    title = "layer 4 output after - before the edit, channels 0-15 of 64"
    a = png(framed_png(heat, title, "diverging", -1.0, 1.0))
    assert text_width(title, 12) > 300 and a.shape[1] == text_width(title, 12) + 4
    ink = np.nonzero((a[:18] < 128).any(axis=(0, 2)))[0]
    assert ink.max() > 300                                   # the title's end is drawn, beyond the old 260 px
    assert (a[18:18 + heat.height, :heat.width] == np.asarray(heat)).all()    # the picture, unchanged, at the left
    short = png(framed_png(heat, "FLOAT", "grey"))
    assert short.shape[1] == max(heat.width, 260)            # a short title keeps the old width


@pytest.mark.parametrize("bins", [1, 16, 128])
def test_histogram_counts_equal_numpy(bins):
    x = np.random.default_rng(bins).standard_normal((8, 20, 20)).astype(np.float32)
    counts, edges = histogram_counts(x, bins=bins)
    ref_counts, ref_edges = np.histogram(x, bins=bins)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_array_equal(edges, ref_edges)


def test_histogram_log2_bins_are_octaves_of_the_magnitude():
    x = np.array([0.0, 0.3, -0.5, 1.0, 1.5, -2.0, 7.9, 8.0], np.float32)
    counts, edges = histogram_counts(x, log2=True)
    np.testing.assert_array_equal(edges, [0.25, 0.5, 1, 2, 4, 8, 16])
    np.testing.assert_array_equal(counts, np.histogram(np.abs(x[x != 0]), edges)[0])
    assert counts.sum() == 7                               # zeros are not counted
    top, top_edges = histogram_counts(x, bins=2, log2=True)    # keep the top 2 octaves
    np.testing.assert_array_equal(top_edges, [4, 8, 16])
    np.testing.assert_array_equal(top, [1, 1])


def test_histogram_png_size_and_markers_drawn():
    x = np.random.default_rng(2).standard_normal(5000).astype(np.float32)
    series = {"FLOAT": histogram_counts(x, 64), "INT": histogram_counts(np.round(x * 4) / 4, 64)}
    plain = png(histogram_png(series, {}, width=300, height=120))
    marked = png(histogram_png(series, {"minmax": float(np.abs(x).max()), "kl": 2.0}, width=300, height=120))
    assert plain.shape == marked.shape == (120, 300, 3)
    assert not np.array_equal(plain, marked)
    logy = png(histogram_png(series, {}, log_y=True, width=300, height=120))
    assert not np.array_equal(plain, logy)
    assert png(histogram_png({"log2": histogram_counts(x, log2=True)}, {"t": 1.0}, log_x=True)).shape == (200, 480, 3)


def test_weights_png_one_cell_per_filter_and_channel():
    w = np.random.default_rng(3).standard_normal((5, 3, 3, 3)).astype(np.float32)
    w[4, 0] = np.abs(w).max()                                # filter 4, channel 0: the full-red kernel
    a = png(weights_png(w))                                  # 3x3 taps at 4 px + 1 px gaps
    assert a.shape == (3 * 13 - 1, 5 * 13 - 1, 3)            # rows: channels, columns: filters
    assert (a[0:12, 4 * 13:4 * 13 + 12] == DIVERGING[-1]).all()
    assert png(weights_png(np.ones((40, 50, 1, 1), np.float32))).shape == (32 * 3, 32 * 3, 3)


def test_a_run_length_encoded_histogram_png_decodes_to_the_drawn_pixels():
    from qwidgets._encode import histogram_png, to_png
    rng = np.random.default_rng(1)
    counts, edges = np.histogram(rng.normal(size=5000), bins=64)
    png = histogram_png({"FLOAT": (counts, edges), "INT": (counts[::-1], edges)}, {"kl": 1.0, "max": 2.5},
                        title="layer 3 output", in_use="kl")
    im = Image.open(io.BytesIO(png))
    pixels = np.asarray(im.convert("RGB"))
    assert im.size == (480, 200) and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 4
    # the same pixels as the default (filtered, deflate) encoding
    again = np.asarray(Image.open(io.BytesIO(to_png(Image.fromarray(pixels)))).convert("RGB"))
    np.testing.assert_array_equal(pixels, again)


def test_numbers_are_written_without_a_minus_on_zero():
    """fmt_number, the views' one number formatter (tables via fmt_value, status lines, colour bars)."""
    from qwidgets._encode import fmt_number
    from qwidgets.layer_panel import fmt_value
    assert fmt_number(-0.0) == "0" and fmt_value(-0.0) == "0" and fmt_value(np.float64(-0.0)) == "0"
    assert fmt_number(-0.0, ".1f") == "0.0" and fmt_number(-0.00004, ".1f") == "0.0"     # rounds to zero
    assert fmt_number(-0.0, ".3g") == "0" and fmt_number(-0.0, ".2%") == "0.00%"
    assert fmt_number(-0.0001) == "-0.0001" and fmt_number(-1e-9) == "-1e-09" and fmt_number(-10.0) == "-10"
    assert fmt_number(-2.5, ".1f") == "-2.5" and fmt_number(float("-inf")) == "-inf" and fmt_number(0.0) == "0"
    assert fmt_value({"max|err|": -0.0, "SQNR dB": float("inf")}) == "max|err|=0, SQNR dB=inf"
