"""DeviceView on real yolov3-tiny: the table and overlays are sim_vs_device's numbers; a profile without a
runtime says so."""
from __future__ import annotations

import pytest

import engine
import engine.quant.device as device
from engine.errors import EngineError
from engine.imaging.samples import sample
from engine.quant.device import sim_vs_device
from engine.quant.qmodel import quantize_model
from helpers import frozen_arrays, same_arrays
from qwidgets.device_view import DeviceView, runtime_hint


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
    # qa4: and says how to get them (the default profile has no runtime; nothing named one that has)
    hint = ("to measure one, pick a Profile with a runtime (onnxruntime, avx2_u8s8, ort_reduce_range) in the "
            "Quantization tab, Compare, then Adopt")
    assert view.status == f"profile qwidgets: device not measured (profile 'qwidgets' has no runtime to run); {hint}"
    assert f"; {hint}</div>" in view.table.value
    assert runtime_hint("onnxruntime") == "" and runtime_hint("no-such-profile") == ""
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


def test_progress_per_layer_and_cancel_keeps_the_last_table(tiny, tiny_q):
    s = engine.Session(tiny, tiny_q, mode="int", image=sample("dog"))
    view = DeviceView(s, background=False)
    values, texts = [], []
    view.task.progress.observe(lambda c: values.append(c.new), names="value")
    view.task.observe(lambda c: texts.append(c.new), names="text")
    view.run_button.click()
    n = len(tiny.layers)
    assert values == list(range(1, n + 4)) and view.task.progress.max == n + 3     # FLOAT, INT, runtime, rows
    assert any(t.startswith(f"simulation vs device: layer 7 of {n}: conv 6 (9 / {n + 3} done, ") for t in texts)
    # Cancel on a background run, a table already shown
    view = DeviceView(s, background=True)
    view.show(sim_vs_device(s.model, s.qmodel, s.x))
    first, table, overlays, qm = view.result, view.table.value, view.overlays, s.qmodel
    frozen_m, frozen_q = frozen_arrays(tiny), frozen_arrays(qm)
    values, buttons = [], set()

    def on_value(change) -> None:                # on the comparison's thread, as each step starts
        values.append(change.new)
        buttons.add((view.run_button.disabled, view.task.cancel_button.disabled))
        if change.new == 6:
            view.task.cancel_button.click()      # Cancel clicked during "layer 4 of 24"
    view.task.progress.observe(on_value, names="value")
    view.run_button.click()
    view.wait(60)
    assert values == [1, 2, 3, 4, 5, 6] and not view.task.running and buttons == {(True, False)}
    assert view.status == "device comparison cancelled" and "cancelled after" in view.task.text
    assert view.result is first and view.table.value == table and view.overlays == overlays
    assert not view.run_button.disabled and view.task.cancel_button.disabled and view.error_details == ""
    assert s.qmodel is qm and s.mode == "int" and s.float_layers == set()
    assert same_arrays(frozen_m, frozen_arrays(tiny)) and same_arrays(frozen_q, frozen_arrays(qm))


def test_an_error_mid_comparison_is_shown_and_keeps_the_last_table(tiny, tiny_q, monkeypatch):
    s = engine.Session(tiny, tiny_q, mode="int", image=sample("dog"))
    view = DeviceView(s, background=False)
    view.run_button.click()
    table = view.table.value
    rows, cosine = [], device.cosine

    def failing(a, b):
        rows.append(1)
        if len(rows) == 9:
            raise EngineError("layer 4: refused")
        return cosine(a, b)
    monkeypatch.setattr(device, "cosine", failing)
    view.run_button.click()
    assert view.status == "error: layer 4: refused" and view.task.text.endswith("error: layer 4: refused")
    assert view.table.value == table and not view.run_button.disabled and view.error_details == ""
    assert view.task.progress.value == 3 + 4         # the bar stays where it stopped: layer 5's row (2 cosines a row)


def test_a_comparison_whose_session_switched_models_while_it_ran_is_not_shown(tiny, tiny_q, tiny_kl_pt):
    """sim_vs_device runs on its own thread: a table of the quantized model the session had when it started
    was shown (and coloured the graph) after another one was adopted."""
    s = engine.Session(tiny, tiny_q, mode="int", image=sample("dog"))
    view = DeviceView(s, background=False)

    def switch(change) -> None:
        if change.new == 2:
            s.set_quantized(tiny_kl_pt)
    view.task.progress.observe(switch, names="value")
    view.run_button.click()
    assert view.result is None and view.overlays == {} and view.status == (
        "device comparison: result dropped, the session's model or quantized model changed while it ran: "
        "Compare again")
    assert not view.run_button.disabled


def test_cancel_during_the_int_run_stops_it_at_the_next_layer_and_keeps_the_last_table(tiny, tiny_q, monkeypatch):
    """Cancel was asked only between steps: clicked during the INT run (one step, every layer of the network),
    it waited for the whole run. It now stops the run before its next layer."""
    import threading

    from engine.quant.executor import Executor
    s = engine.Session(tiny, tiny_q, mode="int", image=sample("dog"))
    view = DeviceView(s, background=True)
    view.show(sim_vs_device(s.model, s.qmodel, s.x))
    first, table, overlays, qm = view.result, view.table.value, view.overlays, s.qmodel
    frozen_m, frozen_q = frozen_arrays(tiny), frozen_arrays(qm)
    ran, run_layer = [], Executor.run_layer

    def counting(self, index, inputs, precision=None, memo=None):
        if self.mode == "int" and threading.current_thread() is view.task.thread:
            ran.append(index)
            if index == 3:
                view.task.cancel_button.click()  # Cancel clicked while layer 3 of the INT run computes
        return run_layer(self, index, inputs, precision, memo)
    monkeypatch.setattr(Executor, "run_layer", counting)
    view.run_button.click()
    view.wait(60)
    assert ran == [0, 1, 2, 3] and not view.task.running       # the INT run's layers 4..23 never ran
    assert view.task.progress.value == 1 and "cancelled after" in view.task.text   # the bar stays on the INT run
    assert view.status == "device comparison cancelled" and view.task.cancelled and view.error_details == ""
    assert view.result is first and view.table.value == table and view.overlays == overlays
    assert not view.run_button.disabled and view.task.cancel_button.disabled
    assert same_arrays(frozen_m, frozen_arrays(tiny)) and same_arrays(frozen_q, frozen_arrays(qm))
