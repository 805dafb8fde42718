"""MixedPrecisionView on real yolov3-tiny: Search shows the engine's curve, Keep sets the session's FLOAT layers."""
from __future__ import annotations

import io

from PIL import Image

import engine
from engine.imaging.samples import sample
from engine.quant.mixed import search
from engine.quant.qmodel import quantize_model
from qwidgets.mixed_view import MixedPrecisionView


def test_search_shows_the_engine_curve_and_keep_applies_it(tiny, tiny_stats):
    bad = quantize_model(tiny, tiny_stats, "kl", rules=())          # loses detections: something to fix
    s = engine.Session(tiny, bad, mode="int")
    dog = sample("dog")
    view = MixedPrecisionView(s, images=[dog], background=False)
    view.keep_button.click()
    assert view.keep_button.disabled
    view.target.value, view.max_layers.value = 0.9, 2
    seen = []
    view.task.progress.observe(lambda c: seen.append(c.new), names="value")
    view.search_button.click()
    ref = search(tiny, bad, [dog], target=0.9, mode="int", max_layers=2)
    assert [p.to_dict() for p in view.result.curve] == [p.to_dict() for p in ref.curve]
    assert view.float_layers == list(ref.float_layers) and len(ref.curve) >= 2 and seen[-1] == len(ref.curve)
    rows = view.table.value.split("<tr>")[2:]
    assert len(rows) == len(ref.curve)
    for row, p in zip(rows, ref.curve):
        assert row.startswith(f"<td>{p.layers_float}</td><td>{'-' if p.added is None else p.added}</td>"
                              f"<td>{p.map50_95:.3f}</td><td>{p.map50:.3f}</td><td>{p.lost}</td>")
    assert ("NOT met" in view.table.value) == (not ref.met) and "mAP@[.5:.95]" in view.status
    assert Image.open(io.BytesIO(view.chart.value)).size[0] == 480
    view.keep_button.click()
    assert s.float_layers == set(ref.float_layers) and s.mode == "int" and view.revision == 1
    assert view.status.startswith(f"FLOAT layers now {sorted(ref.float_layers)}")


def test_search_without_quantized_model_and_cancel(tiny, tiny_q):
    view = MixedPrecisionView(engine.Session(tiny), background=False)
    view.search_button.click()
    assert view.status.startswith("error: no quantized model")
    view = MixedPrecisionView(engine.Session(tiny, tiny_q, mode="int"), images=[sample("dog")], background=False)
    view.task.start = _cancelling(view.task.start, view.task)
    view.search_button.click()
    assert view.status == "mixed-precision search cancelled" and view.result is None
    assert not view.search_button.disabled


def _cancelling(start, task):
    def wrapped(work, on_done, what="working"):
        def cancelled_work(tick):
            task.cancel()               # the Cancel click, arriving before the first step
            return work(tick)
        return start(cancelled_work, on_done, what)
    return wrapped


def test_explorer_mixed_tab_keeps_the_result_float_and_the_session_follows(tiny, tiny_stats):
    from qwidgets import Explorer
    from qwidgets.explorer import TABS
    bad = quantize_model(tiny, tiny_stats, "kl", rules=())
    s = engine.Session(tiny, bad, mode="int", image=sample("dog"))
    ex = Explorer(s, calibration_images=[sample("dog")], background=False)
    view = ex.tabs.children[TABS.index("Mixed precision")]
    view.target.value, view.max_layers.value = 0.9, 1
    view.search_button.click()
    assert ex.status.startswith("mixed precision: ") and view.result.curve[0].added is None
    view.keep_button.click()
    assert s.float_layers == set(view.result.float_layers) and "FLOAT layers now" in ex.status
    s.run()
    kept = view.result.float_layers
    assert kept and [r.precision for r in s.records if r.index in kept] == ["float"] * len(kept)
