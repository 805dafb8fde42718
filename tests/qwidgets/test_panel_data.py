"""LayerPanel + panel data, headless on yolov3-tiny (one FLOAT forward per module)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.imaging.samples import sample
from engine.session.stats import error_row
from qwidgets._panel_data import layer_panel_data
from qwidgets.layer_panel import IMAGE_SLOTS, LayerPanel


def is_png(data: bytes) -> bool:
    return bool(data) and Image.open(io.BytesIO(data)).format == "PNG"


@pytest.fixture(scope="module")
def run(tiny):
    """(FLOAT outputs, network input) of yolov3-tiny on the dog photo."""
    x = tiny.preprocess(sample("dog")).x
    return tiny.forward(x), x


def test_panel_data_with_int_outputs_fills_compare_images(tiny, run):
    outs, x = run
    int_outs = [np.round(y * 8) / 8 for y in outs]             # a stand-in for dequantized INT outputs
    info, images, rows = layer_panel_data(tiny, outs, "4", x, int_outs=int_outs, scales={"out": 0.125},
                                          log2=True)
    assert info["kind"] == "convolutional" and info["out_shape"] == (64, 104, 104) and info["scales"] == {"out": 0.125}
    assert set(images) == set(IMAGE_SLOTS) and all(is_png(b) for b in images.values())
    err = [r for r in rows if r["tensor"] == "INT - FLOAT"][0]
    assert 30 < err["SQNR dB"] < 80 and err["max|err|"] <= 1 / 16 + 1e-6
    panel = LayerPanel()
    panel.show(info, images, rows)
    assert panel.node_id == "4" and panel.images == images
    assert all(f"qw-pic-{k}'" in panel._content.value for k in IMAGE_SLOTS)      # every slot shown
    with pytest.raises(KeyError, match="unknown image keys"):
        panel.show(info, {"nope": b""}, rows)


def test_error_stats_exact_match_is_infinite_sqnr():
    y = np.ones((2, 3, 3), np.float32)
    assert error_row("e", y, y)["SQNR dB"] == float("inf")
