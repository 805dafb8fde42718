"""The ONNX Runtime batch backend (engine/export/ort_backend.py) against the NumPy engine on the real
yolov3-tiny and the shared photos: FLOAT head outputs within 1e-4 relative, INT (profile onnxruntime)
identical and so identical detections, the same compare table, Monte Carlo and worst-image rankings, and
clear errors for what ORT cannot run."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from helpers import IMAGES  # noqa: E402

from engine.darknet.detect import detect_outputs  # noqa: E402
from engine.errors import ArgumentError, EngineError  # noqa: E402
from engine.export import ort_backend  # noqa: E402
from engine.export.ort_backend import forward_on, resolve  # noqa: E402
from engine.kernels.threads import blas_limit  # noqa: E402
from engine.quant.executor import Executor  # noqa: E402
from engine.quant.qmodel import quantize_model  # noqa: E402

PHOTOS = sorted(IMAGES.glob("*.jpg"))
HEADS = (15, 16, 22, 23)          # the raw head convs and the [yolo] layers of yolov3-tiny


def test_float_heads_within_1e4_relative_of_numpy(tiny, photo_inputs):
    run = forward_on("onnxruntime", tiny, None, "float")
    worst = 0.0
    for pre in photo_inputs:
        ours, theirs = tiny.forward(pre.x), run(pre.x)
        for h in HEADS:
            assert theirs[h].shape == ours[h].shape and theirs[h].dtype == np.float32
            rel = float(np.abs(theirs[h] - ours[h]).max() / np.abs(ours[h]).max())
            worst = max(worst, rel)
            assert rel < 1e-4, (h, rel)
    assert worst > 0          # a different runtime: not the same bits (the test compares two computations)
    n = 0
    for p in photo_inputs:
        a, b = detect_outputs(tiny, tiny.forward(p.x), p), detect_outputs(tiny, run(p.x), p)
        assert [d.class_id for d in a] == [d.class_id for d in b]
        assert np.allclose([d[2:] for d in a], [d[2:] for d in b], rtol=1e-4, atol=1e-3) if a else not b
        n += len(a)
    assert n > 15


def test_int_identical_to_numpy_whatever_the_thread_count(tiny, tiny_ort, photo_inputs):
    ex = Executor(tiny, tiny_ort, "int")
    total = 0
    floats = {}
    for threads in (1, 2):
        with blas_limit(threads):
            run = forward_on("onnxruntime", tiny, tiny_ort, "int")
            run_float = forward_on("onnxruntime", tiny, None, "float")
            floats[threads] = [np.array(run_float(pre.x)[h]) for pre in photo_inputs[:2] for h in HEADS]
            for pre in photo_inputs:
                ours, theirs = ex.forward(pre.x), run(pre.x)
                for h in HEADS:
                    assert np.array_equal(ours[h], theirs[h]), (threads, h)
                d_ours, d_ort = detect_outputs(tiny, ours, pre), detect_outputs(tiny, theirs, pre)
                assert d_ours == d_ort
                total += len(d_ours)
    assert total > 20
    assert all(np.array_equal(a, b) for a, b in zip(floats[1], floats[2]))   # ORT FLOAT: same bits too


def _weight_dtypes(proto) -> set:
    import onnx
    names = {n.input[3] for n in proto.graph.node if n.op_type == "QLinearConv"}
    names |= {n.input[1] for n in proto.graph.node if n.op_type == "ConvInteger"}
    return {onnx.helper.tensor_dtype_to_np_dtype(t.data_type) for t in proto.graph.initializer if t.name in names}


@pytest.mark.parametrize("kernel", ["vnni", "avx2"])
def test_int_sessions_take_int8_weights_only_where_the_u8s8_kernel_is_exact(tiny, tiny_ort, photo_inputs,
                                                                              monkeypatch, kernel):
    """uint8 weights (zero point 128) run MLAS's u8 x u8 kernel; on a VNNI host the same weights as int8 run
    the VNNI kernel (1.7x the images/s) with the same exact sums. Every layer of the graph the backend builds equals
    the NumPy INT executor; on an AVX2 host the backend keeps uint8 weights."""
    import engine.export.onnx_int8 as onnx_int8
    from engine.quant.profiles import avx2_u8s8
    host = avx2_u8s8.host_u8s8_kernel()
    real_build = onnx_int8.build_int8
    built = []
    monkeypatch.setattr(avx2_u8s8, "host_u8s8_kernel", lambda *a: kernel)
    monkeypatch.setattr(onnx_int8, "build_int8", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    assert ort_backend.signed_weights(tiny_ort) is (kernel == "vnni")
    ort_backend.clear_sessions()
    try:
        run = forward_on("onnxruntime", tiny, tiny_ort, "int", all_outputs=True)
        assert _weight_dtypes(built[-1]) == {np.dtype(np.int8 if kernel == "vnni" else np.uint8)}
        if kernel == host or kernel == "avx2":     # int8 weights on a non-VNNI CPU would saturate pairs
            ex = Executor(tiny, tiny_ort, "int")
            for pre in photo_inputs[:2]:
                ours, theirs = ex.forward(pre.x), run(pre.x)
                for i in range(len(tiny.layers)):
                    assert np.array_equal(ours[i], theirs[i]), (kernel, i)
    finally:
        ort_backend.clear_sessions()
    saturating = tiny_ort.copy()
    saturating.profile = "avx2_u8s8"
    with pytest.raises(ValueError, match="saturating"):
        real_build(tiny, saturating, signed_weights=False)


def test_evaluate_inprocess_runtime_equals_numpy_int(tiny, tiny_ort):
    from engine.scale.backends import InProcess
    from engine.scale.evaluate import evaluate
    a = evaluate(tiny, tiny_ort, PHOTOS[:3], ("int",), InProcess())
    b = evaluate(tiny, tiny_ort, PHOTOS[:3], ("int",), InProcess(runtime="onnxruntime"))
    assert a.detections["int"] == b.detections["int"] and sum(map(len, b.detections["int"])) > 10
    with pytest.raises(ArgumentError, match="backend='gpu'"):
        InProcess(runtime="gpu")


def test_sessions_cached_in_memory_and_rebuilt_after_an_edit(tiny_copy, tiny_ort, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ort_backend.clear_sessions()
    a = ort_backend.session(tiny_copy, None, "float")
    assert ort_backend.session(tiny_copy, None, "float") is a
    tiny_copy.params[0]["weights"] = tiny_copy.params[0]["weights"] * 0.5
    assert ort_backend.session(tiny_copy, None, "float") is not a
    assert list(tmp_path.iterdir()) == []          # nothing written


def test_errors_name_why_and_what_to_use(tiny, tiny_q, tiny_ort):
    with pytest.raises(EngineError, match="profile 'qwidgets'.*profile='onnxruntime'.*backend='numpy'"):
        forward_on("onnxruntime", tiny, tiny_q, "int")
    with pytest.raises(EngineError, match="HYBRID.*no ONNX Runtime form"):
        forward_on("onnxruntime", tiny, tiny_ort, "hybrid")
    with pytest.raises(EngineError, match=r"layers \[4, 5\] run FLOAT between int8 layers"):
        forward_on("onnxruntime", tiny, tiny_ort, "int", float_layers=[4, 5])
    with pytest.raises(ArgumentError, match="backend='ort'.*numpy, onnxruntime, auto"):
        forward_on("ort", tiny, tiny_ort, "int")
    assert resolve("auto", tiny, tiny_q, "int") == "numpy"          # auto falls back, explicitly asked for
    assert resolve("auto", tiny, tiny_ort, "int") == "onnxruntime"
    assert resolve("auto", tiny, tiny_ort, "int", [4, 5]) == "numpy"


def test_compare_same_table_on_both_backends(tiny, tiny_stats):
    from engine.scale.compare import compare
    images = PHOTOS[:2]
    tables = {b: compare(tiny, tiny_stats, images, ["minmax", "kl"], per_channel=True, progress=False, backend=b,
                         profile="onnxruntime") for b in ("numpy", "onnxruntime")}
    a, b = tables["numpy"], tables["onnxruntime"]
    # the same ranking on both backends (which method wins on two photos is not this test's business)
    assert [r.method for r in a.results] == [r.method for r in b.results]
    assert sorted(r.method for r in a.results) == ["kl", "minmax"]
    for ra, rb in zip(a.results, b.results):
        for mode in ("int", "hybrid"):
            x, y = ra.agreement[mode], rb.agreement[mode]
            assert (x.matched, x.missed, x.extra) == (y.matched, y.missed, y.extra)
            assert abs(x.map50_95 - y.map50_95) < 1e-3 and abs(x.map50 - y.map50) < 1e-3
        for la, lb in zip(ra.layers, rb.layers):
            for k in ("int_sqnr", "hybrid_sqnr", "int_local_sqnr"):
                assert la[k] == pytest.approx(lb[k], rel=1e-3, nan_ok=True), (la["layer"], k)   # dB
            assert la["range_use"] == pytest.approx(lb["range_use"], nan_ok=True)   # codes recovered exactly
            assert np.isnan(lb["saturation"])                                       # not measured on ORT
    assert b.results[0].agreement["int"].matched > 10


def test_compare_refuses_int_on_ort_for_the_qwidgets_profile(tiny, tiny_stats):
    from engine.scale.compare import compare
    with pytest.raises(EngineError, match="profile 'qwidgets'"):
        compare(tiny, tiny_stats, PHOTOS[:1], ["minmax"], progress=False, backend="onnxruntime")


def test_montecarlo_on_ort_equals_numpy_int(tiny, tiny_ort):
    from engine.scale.montecarlo import run_montecarlo
    res = {b: run_montecarlo(tiny, tiny_ort, PHOTOS, n_variants=6, modes=("int",), seed=3, backend=b)
           for b in ("numpy", "onnxruntime")}
    rows_np, rows_ort = res["numpy"].rows, res["onnxruntime"].rows
    assert [r["float_dets"] for r in rows_np] == [r["float_dets"] for r in rows_ort]
    assert sum(r["float_dets"] for r in rows_ort) > 5
    for x, y in zip(rows_np, rows_ort):
        assert {k: x["int"][k] for k in ("matched", "missed", "extra")} == \
               {k: y["int"][k] for k in ("matched", "missed", "extra")}
        assert abs(x["int"]["map50"] - y["int"]["map50"]) < 1e-6
    with pytest.raises(EngineError, match="HYBRID"):
        run_montecarlo(tiny, tiny_ort, PHOTOS, n_variants=2, modes=("hybrid",), backend="onnxruntime")


def test_worst_images_and_mixed_search_on_ort(tiny, tiny_ort):
    from engine.quant.mixed import search
    from engine.quant.worst_images import rank_images
    a = rank_images(tiny, tiny_ort, "int", PHOTOS)
    b = rank_images(tiny, tiny_ort, "int", PHOTOS, backend="onnxruntime")
    assert [(r.name, r.n_float, r.lost, r.shifted, r.extra) for r in a] == \
           [(r.name, r.n_float, r.lost, r.shifted, r.extra) for r in b]
    res = search(tiny, tiny_ort, PHOTOS, target=0.99, max_layers=1, backend="auto")
    ref = search(tiny, tiny_ort, PHOTOS, target=0.99, max_layers=1)
    assert [(p.added, p.lost, p.extra) for p in res.curve] == [(p.added, p.lost, p.extra) for p in ref.curve]
    with pytest.raises(EngineError, match="run FLOAT between int8 layers.*'auto'"):
        search(tiny, tiny_ort, PHOTOS, target=0.99, max_layers=1, backend="onnxruntime")


def test_cli_compare_backend(tiny, capsys):
    from helpers import TINY_CFG, TINY_WEIGHTS
    from engine.cli.main import main
    common = [str(TINY_CFG), "--weights", str(TINY_WEIGHTS), "--calib", str(PHOTOS[0]), "--images", str(PHOTOS[0]),
              "--methods", "minmax", "--quiet", "--json"]
    assert main(["compare", *common, "--backend", "onnxruntime"]) == 2
    assert "--profile onnxruntime" in capsys.readouterr().err
    assert main(["compare", *common, "--backend", "onnxruntime", "--profile", "onnxruntime"]) == 0
    import json
    out = json.loads(capsys.readouterr().out)
    assert out["best"] == "minmax" and out["methods"][0]["agreement"]["int"]["matched"] > 0


def test_cli_montecarlo_and_worst_images_on_ort(tiny, tiny_ort, tmp_path, capsys):
    import json
    from helpers import TINY_CFG, TINY_WEIGHTS
    from engine.cli.main import main
    q = tmp_path / "q.npz"
    tiny_ort.save(q)
    model = [str(TINY_CFG), "--weights", str(TINY_WEIGHTS), "--quantized", str(q), "--images", *map(str, PHOTOS)]
    assert main(["montecarlo", *model, "--variants", "4", "--seed", "1", "--backend", "onnxruntime", "--json"]) == 0
    mc = json.loads(capsys.readouterr().out)
    assert len(mc["variants"]) == 4 and mc["summary"]["int"]["n"] == 4
    assert main(["montecarlo", *model, "--variants", "4", "--modes", "hybrid", "--backend", "onnxruntime"]) == 2
    assert "HYBRID" in capsys.readouterr().err
    assert main(["worst-images", *model, "--backend", "onnxruntime", "--json"]) == 0
    ranked = json.loads(capsys.readouterr().out)["images"]
    from engine.quant.worst_images import rank_images
    assert ranked == [r.to_dict() for r in rank_images(tiny, tiny_ort, "int", PHOTOS, backend="onnxruntime")]
    assert {r["name"] for r in ranked} == {p.name for p in PHOTOS}
    assert main(["worst-images", *model, "--float-layers", "4,5", "--backend", "onnxruntime"]) == 2
    assert "layers [4, 5] run FLOAT between int8 layers" in capsys.readouterr().err
    assert main(["worst-images", *model, "--float-layers", "4,5", "--backend", "auto"]) == 0


def test_session_compare_methods_backend(tiny):
    from engine import Session
    s = Session(tiny, image=PHOTOS[0])
    a = s.compare_methods(PHOTOS[:1], ["minmax"], backend="onnxruntime", profile="onnxruntime")
    b = s.compare_methods(PHOTOS[:1], ["minmax"], profile="onnxruntime")
    x, y = a.best.agreement["int"], b.best.agreement["int"]
    assert a.best.qmodel.profile == "onnxruntime" and (x.matched, x.missed, x.extra) == (y.matched, y.missed, y.extra)
    assert x.matched > 3
    with pytest.raises(EngineError, match="profile 'qwidgets'"):
        s.compare_methods(PHOTOS[:1], ["minmax"], backend="onnxruntime")


def test_a_layer_without_an_integer_onnx_form_is_refused_or_falls_back_with_auto(tmp_path):
    import engine
    from helpers import CFG_DIR, resized_cfg
    from engine.calib.collect import collect
    model = engine.load(resized_cfg(CFG_DIR / "yolov3-tiny-prn.cfg", 160, tmp_path), random_weights=1)
    qm = quantize_model(model, collect(model, PHOTOS[:1], progress=False), "minmax", profile="onnxruntime")
    with pytest.raises(EngineError, match=r"cannot run INT.*\[shortcut\] \(layer 13\): only a linear shortcut.*"
                                          r"backend='numpy'"):
        forward_on("onnxruntime", model, qm, "int")
    x = model.preprocess(PHOTOS[0]).x
    run = forward_on("auto", model, qm, "int")          # falls back: the NumPy executor
    assert np.array_equal(run(x)[-1], Executor(model, qm, "int").forward(x)[-1])
    assert resolve("auto", model, qm, "float") == "onnxruntime"


def test_cli_quantize_target_map_backend(tmp_path, capsys):
    from helpers import TINY_CFG, TINY_WEIGHTS
    from engine.cli.main import main
    base = ["quantize", str(TINY_CFG), "--weights", str(TINY_WEIGHTS), "--calib", str(PHOTOS[0]), "--per-channel",
            "--quiet", "--target-map", "0.999", "--val", str(PHOTOS[0]), "--backend", "onnxruntime"]
    assert main([*base, "-o", str(tmp_path / "a.npz")]) == 2          # profile qwidgets: INT is not ORT's
    assert "profile 'qwidgets'" in capsys.readouterr().err and not (tmp_path / "a.npz").exists()


@pytest.mark.parametrize("kernel", ["vnni", "avx2"])
def test_int_of_a_profile_this_hosts_ort_does_not_compute_stays_on_numpy(tiny, tiny_stats, monkeypatch, kernel):
    """An `avx2_u8s8` model (the int16-saturating pairs of ORT on AVX2 without VNNI) ran on this VNNI host's ORT,
    whose u8 x s8 kernel sums exactly: `auto` took ORT silently and 323184 values of layer 0 (every layer) were
    another device's; `--backend onnxruntime` ran it too. The host check (`Profile.host_mismatch`) now refuses it,
    naming why: `auto` keeps NumPy, `onnxruntime` raises. On an AVX2 host (the device itself) ORT still runs it."""
    from engine.quant.profiles import avx2_u8s8
    monkeypatch.setattr(avx2_u8s8, "host_u8s8_kernel", lambda *a: kernel)
    qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="avx2_u8s8")
    reason = ort_backend.why_not(tiny, qm, "int")
    if kernel == "avx2":
        assert reason is None
        return
    assert reason == ("INT under profile 'avx2_u8s8' is not what this host's ONNX Runtime computes: this host's CPU "
                      "has VNNI: its ONNX Runtime sums u8 x s8 products exactly in int32, unlike the "
                      "AVX2-without-VNNI CPU the 'avx2_u8s8' profile models")
    assert resolve("auto", tiny, qm, "int") == "numpy"
    with pytest.raises(EngineError, match="has VNNI"):
        resolve("onnxruntime", tiny, qm, "int")
    x = tiny.preprocess(PHOTOS[0]).x
    assert np.array_equal(forward_on("auto", tiny, qm, "int")(x)[0], Executor(tiny, qm, "int").forward(x)[0])
    reduced = quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="ort_reduce_range")
    assert ort_backend.why_not(tiny, reduced, "int") is None       # 7-bit weights: exact on every x86 kernel
