"""`compare --refine` / compare(refine=...) / Session.compare_methods(refine=...): every method refined after
calibration by engine.quant.refine.pipeline, in its order, exactly as `quantize --refine` refines one method."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import IMAGES, ROOT, TINY_CFG, TINY_WEIGHTS

from engine.calib.collect import collect
from engine.calib.floats import float_outputs
from engine.errors import ArgumentError
from engine.quant.autoquant import quantize
from engine.quant.qmodel import QuantizedModel
from engine.quant.refine import eq_search, gptq_rounding
from engine.scale import compare as compare_mod
from engine.scale.compare import compare
from engine.session import Session

PHOTOS = sorted(IMAGES.glob("*.jpg"))[:2]


def _same(a: QuantizedModel, b: QuantizedModel) -> None:
    assert a.scales == b.scales and a.zero_points == b.zero_points
    for i in a.layers:
        assert np.array_equal(a.layers[i].w_q, b.layers[i].w_q) and np.array_equal(a.layers[i].b_q, b.layers[i].b_q)


def test_compare_refines_every_method_as_the_refinements_themselves_do(tiny):
    stats = collect(tiny, PHOTOS, progress=False)
    table = compare(tiny, stats, PHOTOS, ["minmax", "kl"], per_channel=True, progress=False,
                    profile="qwidgets_asym", refine=["eq", "gptq"])
    assert table.refine == ("gptq", "eq")                        # the order they run, whatever was asked
    assert table.to_dict()["refine"] == ["gptq", "eq"] and "gptq, eq" in str(table)
    floats = float_outputs(tiny, PHOTOS)
    for r in table.results:
        plain = quantize(tiny, stats, r.method, per_channel=True, profile="qwidgets_asym")
        _same(r.qmodel, eq_search(tiny, gptq_rounding(tiny, plain, floats), floats))
        assert "gptq" in r.qmodel.meta and "eq" in r.qmodel.meta
    kl = next(r for r in table.results if r.method == "kl").qmodel
    assert any(v[0] != v[1] for v in kl.meta["eq"].values())     # EQ moved kl's ranges: a refined table


def test_compare_refuses_refinements_of_the_float_model_and_unknown_names(tiny):
    stats = collect(tiny, PHOTOS[:1], progress=False)
    with pytest.raises(ArgumentError, match="'cle'.*quantize --refine"):
        compare(tiny, stats, PHOTOS[:1], ["minmax"], progress=False, refine=["cle"])
    with pytest.raises(ArgumentError, match="'eqq'"):
        compare(tiny, stats, PHOTOS[:1], ["minmax"], progress=False, refine=["eqq"])
    from engine.quant.refine.pipeline import check
    assert check("eq") == ("eq",) and check(["margin", "gptq", "margin"]) == ("margin", "gptq")
    with pytest.raises(ArgumentError, match="cle and cle_act are two ways"):
        check(["cle", "cle_act"], where="--refine")


def test_session_compare_methods_refines_from_the_calibration_pass_without_another(tiny, monkeypatch):
    # the FLOAT outputs EQ reads come from the calibration pass the session kept for the reference
    def no_pass(*a, **k):
        raise AssertionError("a second FLOAT pass over the calibration images")
    monkeypatch.setattr("engine.calib.floats.float_outputs", no_pass)
    table = Session(tiny).compare_methods(PHOTOS, ["minmax"], refine="eq")        # one name, as a string
    monkeypatch.undo()
    stats = collect(tiny, PHOTOS, progress=False)
    plain = quantize(tiny, stats, "minmax", per_channel=True)
    _same(table.best.qmodel, eq_search(tiny, plain, float_outputs(tiny, PHOTOS)))
    assert table.refine == ("eq",)


def test_session_compare_methods_reports_every_phase_by_default(tiny, capsys):
    # in Python it was silent for tens of seconds (quantizing and refining every method, then the runs) unless
    # on_progress was given, and on_progress itself heard nothing between the calibration and the last run
    calls = []
    Session(tiny).compare_methods(PHOTOS[:1], ["minmax", "kl"], refine="eq",
                                  on_progress=lambda *call: calls.append(call))
    err = capsys.readouterr().err
    phases = ["calibrating", "quantizing + refining", "comparing"]
    assert all(p in err for p in phases) and [err.index(p) for p in phases] == sorted(err.index(p) for p in phases)
    assert "quantizing + refining: 100%" in err and "4/4" in err and "refine kl (eq)" in err
    assert calls == [("calibrate", 1, 1), *[("quantize", k, 4) for k in range(5)], ("compare", 1, 2), ("compare", 2, 2)]
    calls.clear()
    Session(tiny).compare_methods(PHOTOS[:1], ["minmax"], progress=False, on_progress=lambda *call: calls.append(call))
    assert capsys.readouterr().err == ""           # progress=False: no bars (a widget shows on_progress its own way)
    assert calls == [("calibrate", 1, 1), ("quantize", 0, 1), ("quantize", 1, 1), ("compare", 1, 1)]


def test_cli_compare_refine_json(tmp_path):
    res = subprocess.run([sys.executable, "-m", "engine", "compare", str(TINY_CFG), "--weights", str(TINY_WEIGHTS),
                          "--calib", *map(str, PHOTOS), "--images", str(PHOTOS[0]), "--methods", "minmax,kl",
                          "--per-channel", "--refine", "eq", "--json", "--quiet"],
                         capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["refine"] == ["eq"] and sorted(out["ranking"]) == ["kl", "minmax"]
    bad = subprocess.run([sys.executable, "-m", "engine", "compare", str(TINY_CFG), "--weights", str(TINY_WEIGHTS),
                          "--calib", str(PHOTOS[0]), "--images", str(PHOTOS[0]), "--refine", "cle"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode != 0 and "invalid choice: 'cle'" in bad.stderr and "Traceback" not in bad.stderr


def test_a_refinement_added_to_the_pipeline_is_recorded_under_its_own_name(monkeypatch):
    # a refinement appended to pipeline.AFTER without an entry in RECORDED made `recorded(meta)` raise KeyError
    # for every quantized model, so `python -m engine info Q.npz` printed only "error: 'fold'", even for
    # files the new refinement never touched
    from engine.quant.refine import pipeline
    assert pipeline.recorded({"eq": {}, "head_margin": {}, "equalization": {}}) == ("cle", "eq", "margin")
    monkeypatch.setattr(pipeline, "AFTER", (*pipeline.AFTER, "fold"))
    assert pipeline.recorded({"eq": {}}) == ("eq",)
    assert pipeline.recorded({"eq": {}, "fold": {"layers": 3}}) == ("eq", "fold")
