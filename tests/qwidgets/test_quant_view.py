"""QuantizationView: compare two methods on one image (progress, ranking, chart), adopt the best; chart PNG."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

import engine
from engine.samples import sample
from engine.sensitivity import SensitivityRow, SensitivityTable
from qwidgets import QuantizationView
from qwidgets.quant_view import sqnr_chart_png


def test_compare_two_methods_ranks_them_and_adopt_sets_the_best(tiny):
    s = engine.Session(tiny)
    qv = QuantizationView(s, images=[sample("dog")], methods=("minmax", "log2"))
    assert qv.methods() == ["log2", "minmax"] or qv.methods() == ["minmax", "log2"]
    assert qv.adopt_button.disabled
    qv.compare_button.click()
    assert qv.status.startswith("compared 2 methods on 1 images"), qv.status
    assert qv.progress.value == qv.progress.max == 3
    assert sorted(qv.ranking) == ["log2", "minmax"] and qv.ranking[0] == qv.table.best.method
    assert "<table class='qw-table qw-ranking'>" in qv._table.value and qv._table.value.count("<tr>") == 3
    assert Image.open(io.BytesIO(qv.chart.value)).size == (640, 220)
    qv.adopt_button.click()
    assert qv.adopted == qv.ranking[0] and s.qmodel.method == qv.ranking[0] and s.mode == "int"
    s.step()
    assert s.records[0].precision == "int8"


def test_compare_without_methods_or_path_shows_errors(tiny):
    qv = QuantizationView(engine.Session(tiny), images=[sample("dog")], methods=())
    qv.compare_button.click()
    assert qv.status == "error: tick at least one calibration method"
    qv.method_boxes["minmax"].value = True
    qv._images.value = "folder / file below"
    qv.compare_button.click()
    assert qv.status.startswith("error: type a folder")
    qv._path.value = "/nonexistent/images"
    qv.compare_button.click()
    assert qv.status.startswith("error: /nonexistent/images: no such calibration image or folder")
    qv.adopt_button.click()
    assert qv.status == "error: run Compare first"


def test_sensitivity_button_advances_the_bar_and_sets_ranks(tiny, monkeypatch):
    s = engine.Session(tiny)
    qv = QuantizationView(s, images=[sample("dog")])

    def fake_sweep(progress, cancel):               # the engine sweep calls cancel() once per layer
        rows = []
        for k, i in enumerate((0, 2, 4)):
            assert cancel() is False
            rows.append(SensitivityRow(i, "convolutional", 1.0 - k / 10, 30.0, 1.0, 30.0, rank=k + 1))
        return SensitivityTable(rows, "int")
    monkeypatch.setattr(s, "sensitivity", fake_sweep)
    qv.sensitivity_button.click()
    assert qv.sensitivity_ranks == {"0": 1.0, "2": 2.0, "4": 3.0} and qv.progress.value == qv.progress.max
    assert "hurt most when quantized: 0 [convolutional]" in qv.status


def test_sqnr_chart_handles_nan_and_inf():
    png = sqnr_chart_png({"a": [10.0, np.nan, 30.0, np.inf], "b": [5.0, 6.0, 7.0, 8.0]}, width=300, height=120)
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert a.shape == (120, 300, 3) and (a != 255).any()
