"""sim_vs_device: per layer FLOAT vs our INT (local, propagated) and our INT vs the profile's runtime (ORT)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from helpers import IMAGES  # noqa: E402

from engine.quant.device import cosine, sim_vs_device  # noqa: E402
from engine.quant.executor import Executor  # noqa: E402
from engine.quant.qmodel import quantize_model  # noqa: E402

PHOTO = sorted(IMAGES.glob("*.jpg"))[0]


def test_onnxruntime_profile_device_columns_are_exact_and_errors_are_real(tiny, tiny_stats):
    qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="onnxruntime")
    x = tiny.preprocess(PHOTO).x
    table = sim_vs_device(tiny, qm, x)
    assert table.runtime.startswith("onnxruntime") and len(table.rows) == len(tiny.layers)
    ints = [r for r in table.rows if r["precision"] == "int8"]
    assert len(ints) == 22 and all(r["device_mismatched"] == 0 and r["device_steps"] == 0 for r in ints)
    float_outs = Executor(tiny).forward(x)
    int_outs = Executor(tiny, qm, "int").forward(x)
    for r in table.rows:
        i = r["layer"]
        assert r["propagated_cos"] == pytest.approx(cosine(int_outs[i], float_outs[i]), abs=1e-12)
        assert r["propagated_max"] == pytest.approx(float(np.abs(int_outs[i] - float_outs[i]).max()))
        # SQNR in dB, naive float64 sums (signal energy over error energy)
        ref64, err64 = float_outs[i].astype(np.float64), int_outs[i].astype(np.float64) - float_outs[i]
        assert r["propagated_sqnr"] == pytest.approx(10 * np.log10((ref64 ** 2).sum() / (err64 ** 2).sum()), abs=1e-6)
        if r["precision"] == "int8":     # bit-exact runtime: its SQNR vs FLOAT is ours
            assert r["device_sqnr"] == pytest.approx(r["propagated_sqnr"], abs=1e-9)
    # quantization error is there, and local error (one layer alone) is below the accumulated one deep down
    assert 0.98 < table.rows[22]["propagated_cos"] < 0.99999
    assert table.rows[12]["local_cos"] > table.rows[12]["propagated_cos"]
    assert table.rows[12]["local_sqnr"] > table.rows[12]["propagated_sqnr"] > 10
    assert table.worst("local_cos", 1)[0]["layer"] == min(ints, key=lambda r: r["local_cos"])["layer"]
    assert "device_mismatched" in table.to_text() and "propagated_sqnr" in table.to_text()


def test_device_column_catches_a_simulator_that_gets_int16_saturation_wrong(tiny, tiny_stats, monkeypatch):
    from engine.quant.profiles.avx2_u8s8 import Avx2U8S8Profile, host_u8s8_kernel
    from engine.quant.profiles.onnxruntime import OrtProfile
    x = tiny.preprocess(PHOTO).x
    if host_u8s8_kernel() == "avx2":        # the device the profile models: a generic int32 simulator is caught
        qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="avx2_u8s8")
        assert all(not r.get("device_mismatched") for r in sim_vs_device(tiny, qm, x).rows)
        monkeypatch.setattr(Avx2U8S8Profile, "accumulate", OrtProfile.accumulate)
    else:        # VNNI: ORT sums exactly; the saturating simulator, forced to compare here, is caught
        assert host_u8s8_kernel() == "vnni"
        exact = quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="onnxruntime")
        assert all(not r.get("device_mismatched") for r in sim_vs_device(tiny, exact, x).rows)
        qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="avx2_u8s8")
        monkeypatch.setattr(Avx2U8S8Profile, "host_mismatch", lambda self: None)
    rows = sim_vs_device(tiny, qm, x).rows
    assert rows[2]["device_mismatched"] > 100 and rows[2]["device_steps"] >= 1


def test_device_columns_stay_empty_where_the_host_is_not_the_device(tiny, tiny_stats, monkeypatch):
    from engine.quant.profiles import avx2_u8s8
    qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="avx2_u8s8")
    monkeypatch.setattr(avx2_u8s8, "host_u8s8_kernel", lambda: "vnni")
    table = sim_vs_device(tiny, qm, tiny.preprocess(PHOTO).x)
    assert table.runtime is None and "VNNI" in table.note and "avx2_u8s8" in table.note
    assert all(r.get("device_mismatched") is None for r in table.rows)
    assert table.rows[2]["propagated_sqnr"] > 5               # the simulator's own columns are still there


def test_profiles_without_runtime_leave_device_columns_empty(tiny, tiny_q):
    table = sim_vs_device(tiny, tiny_q, tiny.preprocess(PHOTO).x)
    assert table.runtime is None and "no runtime" in table.note
    assert all(r.get("device_mismatched") is None for r in table.rows)


def test_layers_kept_float_run_float_and_leave_the_device_out(tiny, tiny_stats):
    qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="onnxruntime")
    table = sim_vs_device(tiny, qm, tiny.preprocess(PHOTO).x, float_layers=[4])
    assert table.runtime is None and "layers [4] are kept FLOAT" in table.note
    assert table.rows[4]["precision"] == "float" and table.rows[4]["local_max"] == 0.0
