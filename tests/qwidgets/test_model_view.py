"""ModelView + LayerPanel + panel data, headless on yolov3-tiny (one FLOAT forward per module)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.session.stats import error_row
from qwidgets._panel_data import layer_panel_data
from qwidgets.explorer_preview import ModelView
from qwidgets.layer_panel import IMAGE_SLOTS, LayerPanel


def is_png(data: bytes) -> bool:
    return bool(data) and Image.open(io.BytesIO(data)).format == "PNG"


@pytest.fixture(scope="module")
def view(tiny):
    return ModelView(tiny)


def test_step_moves_current_node_and_the_panel_follows(view):
    view.reset_button.click()
    assert view.graph.current_node == "input" and view.current_label.value == "current: input (input)"
    view.step_button.click()
    view.step_button.click()
    assert view.position == 1 and view.graph.current_node == "1" and view.panel.node_id == "1"
    assert "current" in view.graph.nodes["1"].classes.split()
    assert "current" not in view.graph.nodes["0"].classes.split()
    assert view.current_label.value == "current: 1 (maxpool)"
    for key in ("input", "output", "hist_input", "hist_output"):
        assert is_png(view.panel.images[key].value), key
    assert view.panel.images["weights"].value == b""          # maxpool: no weights slot shown
    assert view.panel._boxes["weights"].layout.display == "none"


def test_node_click_shows_panel_without_moving_current(view):
    view.reset_button.click()
    view.step_button.click()
    view.graph.cyto._handle_interaction(view.graph.cyto, {"widget": "node", "event": "click",
                                                          "data": {"data": {"id": "13"}}}, None)
    assert view.graph.current_node == "0" and view.panel.node_id == "13"
    assert is_png(view.panel.images["weights"].value) and "256x13x13" in view.panel._info.value
    assert "max|x|" in view.panel._stats.value


def test_step_past_the_last_layer_wraps_to_input(view):
    view.position = 23
    view.step_button.click()
    assert view.graph.current_node == "input" and is_png(view.panel.images["output"].value)


def test_panel_data_with_int_outputs_fills_compare_images(tiny, view):
    outs = view.outputs()
    int_outs = [np.round(y * 8) / 8 for y in outs]             # a stand-in for dequantized INT outputs
    info, images, rows = layer_panel_data(tiny, outs, "4", view.x, int_outs=int_outs, scales={"out": 0.125},
                                          log2=True)
    assert info["kind"] == "convolutional" and info["out_shape"] == (64, 104, 104) and info["scales"] == {"out": 0.125}
    assert set(images) == set(IMAGE_SLOTS) and all(is_png(b) for b in images.values())
    err = [r for r in rows if r["tensor"] == "INT - FLOAT"][0]
    assert 30 < err["SQNR dB"] < 80 and err["max|err|"] <= 1 / 16 + 1e-6
    panel = LayerPanel()
    panel.show(info, images, rows)
    assert panel.node_id == "4" and all(b.layout.display == "flex" for b in panel._boxes.values())
    with pytest.raises(KeyError, match="unknown image keys"):
        panel.show(info, {"nope": b""}, rows)


def test_error_stats_exact_match_is_infinite_sqnr():
    y = np.ones((2, 3, 3), np.float32)
    assert error_row("e", y, y)["SQNR dB"] == float("inf")
