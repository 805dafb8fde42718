"""DeviceView on real yolov3-tiny: the table and overlays are sim_vs_device's numbers; a profile without a
runtime says so."""
from __future__ import annotations

import pytest

import engine
from engine.imaging.samples import sample
from engine.quant.device import sim_vs_device
from engine.quant.qmodel import quantize_model
from qwidgets.device_view import DeviceView


def test_onnxruntime_profile_table_and_overlays_are_the_engine_rows(tiny, tiny_stats):
    pytest.importorskip("onnxruntime")
    qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="onnxruntime")
    s = engine.Session(tiny, qm, mode="int", image=sample("dog"))
    view = DeviceView(s, background=False)
    view.run_button.click()
    ref = sim_vs_device(tiny, qm, s.x)
    assert view.result.rows == ref.rows and view.result.runtime == ref.runtime
    assert "bit-exact with our INT" in view.status and "onnxruntime" in view.status
    rows = view.table.value.split("<tr>")[2:]
    assert len(rows) == len(tiny.layers)
    r = ref.rows[12]
    assert rows[12] == (f"<td>12</td><td>{r['kind']}</td><td>{r['precision']}</td><td>{r['local_sqnr']:.1f} dB</td>"
                        f"<td>{r['local_cos']:.4f}</td><td>{r['local_max']:.4f}</td>"
                        f"<td>{r['propagated_sqnr']:.1f} dB</td><td>{r['propagated_cos']:.4f}</td>"
                        f"<td>{r['propagated_max']:.4f}</td><td>{r['device_mismatched']}</td><td>0.0000</td>"
                        f"<td>{r['device_sqnr']:.1f} dB</td></tr>")
    assert "propagated: SQNR (dB)" in view.table.value and 10 < r["propagated_sqnr"] < 60
    assert view.overlays["propagated_cos"] == {str(r["layer"]): r["propagated_cos"] for r in ref.rows}
    assert view.overlays["propagated_sqnr"] == {str(r["layer"]): r["propagated_sqnr"] for r in ref.rows}
    assert view.overlays["device_mismatched"]["12"] == 0 == r["device_mismatched"]


def test_profile_without_runtime_gets_a_note(tiny, tiny_q):
    s = engine.Session(tiny, tiny_q, mode="int", image=sample("dog"))
    view = DeviceView(s, background=False)
    view.run_button.click()
    assert "device columns not measured:</b> profile 'qwidgets' has no runtime" in view.table.value
    assert view.status == "profile qwidgets: device not measured (profile 'qwidgets' has no runtime to run)"
    assert "device_mismatched" not in view.overlays or view.overlays["device_mismatched"] == {}
    view2 = DeviceView(engine.Session(tiny), background=False)
    view2.run_button.click()
    assert view2.status.startswith("error: no quantized model")


def test_explorer_has_the_tabs_and_colours_the_graph_by_device_rows(tiny, tiny_stats):
    pytest.importorskip("onnxruntime")
    from qwidgets import Explorer
    from qwidgets.explorer import TABS
    qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="onnxruntime")
    s = engine.Session(tiny, qm, mode="int", image=sample("dog"))
    ex = Explorer(s, background=False)
    assert ex.tabs.children[TABS.index("Mixed precision")] is ex.mixed_view
    assert ex.tabs.children[TABS.index("Device")] is ex.device_view
    assert "device profile:</b> onnxruntime" in ex.quant_view.header.value
    assert {"device_mismatched", "propagated_sqnr", "propagated_cos"} <= set(ex.graph.overlay_options)
    ex.device_view.run_button.click()
    assert "bit-exact" in ex.status
    ref = sim_vs_device(tiny, qm, s.x)
    ex.graph.overlay = "propagated_cos"
    assert ex.graph.overlay_values == {str(r["layer"]): r["propagated_cos"] for r in ref.rows}
    ex.graph.overlay = "propagated_sqnr"
    assert ex.graph.overlay_values == {str(r["layer"]): r["propagated_sqnr"] for r in ref.rows}
    assert ex.graph.node_label("12").endswith(f"{ref.rows[12]['propagated_sqnr']:.1f} dB")
    ex.graph.overlay = "device_mismatched"
    assert ex.graph.overlay_values == {str(r["layer"]): r["device_mismatched"] for r in ref.rows
                                       if r.get("device_mismatched") is not None}
