"""The Explorer's layer panel in HYBRID / INT: input and weights histograms overlay the run on FLOAT."""
from __future__ import annotations

import numpy as np
import pytest

import engine
from qwidgets import Explorer


def rows_by_name(ex) -> dict:
    return {r["tensor"]: r for r in ex._panel_data.data(ex.graph.selected_node)[2]}


def test_int_panel_overlays_input_with_its_thresholds_and_int8_weights(tiny, tiny_q, monkeypatch):
    s = engine.Session(tiny, tiny_q, "int")
    asked = []
    thresholds = s.thresholds
    monkeypatch.setattr(s, "thresholds", lambda tid: (asked.append(str(tid)), thresholds(tid))[1])
    ex = Explorer(s)
    s.run_to(2)                                           # layer 2: conv reading maxpool 1's int8 output
    assert ex.panel.node_id == "2" and {"1", "2"} <= set(asked)    # input tensor = producer "1", output "2"
    rows = rows_by_name(ex)
    x_run = s.inputs(2)[0]
    assert rows["input INT"]["max"] == float(x_run.max()) and rows["input"]["max"] != rows["input INT"]["max"]
    q = s.weights(2, "int8")
    w_int = q["w_q"].astype(np.float32) * q["w_scale"].astype(np.float32).reshape(-1, 1, 1, 1)
    assert rows["weights INT8 (w_q*scale, BN folded)"]["max|x|"] == float(np.abs(w_int).max())
    assert 20 < rows["weights INT8 - folded FLOAT"]["SQNR dB"] < 80      # int8 weights approximate BN-folded ones
    for key in ("hist_input", "hist_output", "hist_weights"):
        assert ex.panel.images[key][:4] == b"\x89PNG", key


def test_float_panel_shows_plain_weights_and_an_edit_refreshes_the_cached_weights(tiny, tiny_q):
    s = engine.Session(tiny, tiny_q, "float")
    ex = Explorer(s)
    s.run_to(2)
    rows = rows_by_name(ex)
    assert "input INT" not in rows and "weights INT8 (w_q*scale, BN folded)" not in rows
    before = ex.panel.images["hist_weights"]
    s.set_mode("int")
    s.run_to(2)
    assert "weights INT8 (w_q*scale, BN folded)" in rows_by_name(ex) and ex.panel.images["hist_weights"] != before
    int_hist = ex.panel.images["hist_weights"]
    s.edit_weights(2, 0, np.zeros(s.weights(2, "int8")["w_q"][0].shape), target="int8")   # zero filter 0
    assert ex.panel.images["hist_weights"] != int_hist


def test_graph_overlay_and_layer_panel_show_the_same_sqnr_for_a_layer(tiny, tiny_q):
    """One statistic, one number: the overlay's SQNR and the panel's error row come from the engine's
    error_stats on the same tensors, checked here against a float64 SQNR computed independently."""
    s = engine.Session(tiny, tiny_q, "int")
    ex = Explorer(s)
    ex.graph.overlay = "sqnr"
    s.run_to(4)
    for node in ("2", "4"):
        ex.graph.selected_node = node
        row = rows_by_name(ex)["INT - FLOAT"]
        ref = s.float_reference()[int(node)].astype(np.float64)
        err = s.output(int(node)).astype(np.float64) - ref
        independent = 10 * np.log10((ref * ref).sum() / (err * err).sum())
        assert row["SQNR dB"] == ex.graph.overlay_values[node]
        assert abs(row["SQNR dB"] - independent) < 1e-9
        assert f"{row['SQNR dB']:.1f}" in ex.graph.node_label(node)   # the number written on the node too


def test_weights_rows_say_which_weights_they_are(tiny, tiny_q):
    s = engine.Session(tiny, tiny_q, "int")
    ex = Explorer(s)
    s.run_to(2)
    rows = rows_by_name(ex)
    fused = s.weights(2, "fused")["weights"]
    assert rows["weights FLOAT (BN folded)"]["max"] == float(fused.max())
    assert rows["weights (cfg file, before BN fold)"]["max"] == float(s.weights(2)["weights"].max())


def test_int8_tensors_are_read_as_codes_and_draw_what_their_float_copies_draw(tiny, tiny_q, monkeypatch):
    """An INT layer's output and a route's two int8 inputs: rows, histograms and maps from the codes, never
    from the run's whole float copies, and the same pictures as the float path (rows to display precision)."""
    from engine.imaging.samples import sample
    from engine.session.stats import error_row, tensor_row
    from qwidgets._panel_data import join_inputs
    from qwidgets._session_panel import SessionPanelData
    s = engine.Session(tiny, tiny_q, "int", image=sample("dog"))
    s.run_to(20)
    route = next(i for i in range(21) if tiny.layers[i].kind == "route" and len(tiny.layers[i].inputs) == 2)
    floats = SessionPanelData(s)
    monkeypatch.setattr(floats, "_codes", lambda tokens: None)           # the float path, as before
    want = {n: floats.data(str(n)) for n in (route, 13)}
    copies: list = []
    output, inputs = s.output, s.inputs
    monkeypatch.setattr(s, "output", lambda i: (copies.append(("output", i)), output(i))[1])
    monkeypatch.setattr(s, "inputs", lambda i: (copies.append(("inputs", i)), inputs(i))[1])
    codes = SessionPanelData(s)
    for n in (route, 13):
        info, images, rows = codes.data(str(n))
        assert images == want[n][1] and info == want[n][0], n
        got, ref = {r["tensor"]: r for r in rows}, {r["tensor"]: r for r in want[n][2]}
        assert got.keys() == ref.keys()
        for name, row in got.items():
            for k, v in row.items():
                assert v == ref[name][k] if isinstance(v, str) else np.isclose(v, ref[name][k], rtol=1e-4), (n, name, k)
    assert copies == []
    # and those rows are the statistics of the float copies
    rows = {r["tensor"]: r for r in codes.data(str(route))[2]}
    x = join_inputs(inputs(route))
    assert rows["input INT"]["max"] == tensor_row("", x)["max"]
    assert rows["input INT"]["shape"] == "x".join(map(str, x.shape))
    rows = {r["tensor"]: r for r in codes.data("13")[2]}
    y, ref = output(13), s.float_reference()[13]
    assert rows["INT - FLOAT"]["mean|err|"] == pytest.approx(error_row("", ref, y)["mean|err|"], rel=1e-9)


def test_cross_on_a_maxpool_shows_no_negative_zero(tiny, tiny_q):
    """A maxpool runs the same in int8 and float: CROSS finds max |diff| 0 (the engine's -0.0), written 0."""
    import re
    s = engine.Session(tiny, tiny_q, "int")
    ex = Explorer(s)
    s.run_to(1)
    assert tiny.layers[1].kind == "maxpool" and ex.graph.selected_node == "1"
    ex.controls.cross_button.click()
    assert ex.controls.cross_result.diff.max_abs == 0
    assert ex.status.endswith("SQNR inf dB, max |diff| 0"), ex.status
    row = {r["tensor"]: r for r in ex._panel_data.data("1", cross=ex.controls.cross_result)[2]}["CROSS INT8 - FLOAT"]
    assert row["max|err|"] == 0 and "<td>CROSS INT8 - FLOAT</td><td>16x208x208</td><td>inf</td><td>0</td>" in ex.panel.stats
    for text in (ex.status, ex.panel.content_html(), ex.controls.current_label.value):
        assert not re.search(r"-0(?![.\d])|-0\.0+(?!\d)", text), text


def test_panel_int8_weights_are_the_engines_dequantized_weights(tiny, tiny_q):
    """The weights row and histogram of the int8 weights come from Session.weights(i, "dequantized")."""
    from qwidgets._session_panel import SessionPanelData
    s = engine.Session(tiny, tiny_q, "int")
    s.run_to(2)
    d = s.weights(2, "dequantized")
    asked = []
    weights = s.weights
    s.weights = lambda i, kind="float": (asked.append((i, kind)), weights(i, kind))[1]
    rows = {r["tensor"]: r for r in SessionPanelData(s).data("2")[2]}
    assert (2, "dequantized") in asked and (2, "int8") not in asked
    w = d["weights"]
    assert rows["weights INT8 (w_q*scale, BN folded)"]["max"] == float(w.max())
    assert rows["weights INT8 (w_q*scale, BN folded)"]["min"] == float(w.min())
