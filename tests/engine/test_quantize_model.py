"""Quantized models: yolo2_light-parity weight multipliers, exact file round trip, the Executor's modes
(FLOAT == model.forward, HYBRID/INT on zoo cfgs with random weights, mixed precision), per-layer records
and local/propagated error statistics."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

import engine
from engine.calib.collect import collect, one_sided_ids, quantizable_ids
from engine.errors import EngineError, WeightsError
from engine.quant.executor import FLOAT, INT8, Executor, Value
from engine.quant.fitness import local_stats, propagated_stats
from engine.quant.intops import conv_int
from engine.quant.qmodel import QuantizedModel, quantize_model
from engine.quant.qtensor import quantize_multiplier
from engine.quant.weights import quantize_weights, y2l_weight_multiplier
from helpers import CFG_DIR, IMAGES, resized_cfg

# darknet-semantics.md C.1: yolo2_light's weight multipliers for the 13 fused convs of yolov3-tiny
Y2L_TINY_MULTIPLIERS = [4, 128, 128, 256, 512, 512, 256, 1024, 512, 256, 128, 1024, 256]


@pytest.fixture(scope="module")
def dog(tiny):
    return tiny.preprocess(IMAGES / "dog.jpg")


@pytest.fixture(scope="module")
def tiny_stats(tiny, dog):
    return collect(tiny, [dog.x, tiny.preprocess(IMAGES / "horses.jpg").x], progress=False)


@pytest.fixture(scope="module")
def tiny_q(tiny, tiny_stats):
    return quantize_model(tiny, tiny_stats, "minmax", per_channel=True)


# --------------------------------------------------------------------------- yolo2_light parity
def test_y2l_weight_multipliers_of_yolov3_tiny_equal_the_spec(tiny):
    convs = [l for l in tiny.layers if l.kind == "convolutional"]
    fused = [l.fused(tiny.params[l.index])[0] for l in convs]
    assert [y2l_weight_multiplier(w) for w in fused] == Y2L_TINY_MULTIPLIERS
    for w, mult in zip(fused, Y2L_TINY_MULTIPLIERS):
        qw = quantize_weights(w, "yolo2_light")
        assert qw.scale.tolist() == [1.0 / mult] and not qw.per_channel
        # truncation toward zero, then saturation at +-127 (C.1 step 5), few saturated (<= 0.05 %)
        expect = np.clip(np.trunc(w.astype(np.float64) * mult), -127, 127)
        np.testing.assert_array_equal(qw.w_q, expect.astype(np.int8))
        assert np.mean(np.abs(w.astype(np.float64) * mult) >= 128) <= 5e-4
    with pytest.raises(ValueError, match="per tensor"):
        quantize_weights(fused[0], "yolo2_light", per_channel=True)


def test_y2l_method_uses_those_multipliers_in_the_quantized_model(tiny, tiny_stats):
    qm = quantize_model(tiny, tiny_stats, "yolo2_light", per_channel=True)   # per-channel is refused silently
    assert not qm.per_channel
    mults = [1.0 / float(qm.layers[l.index].w_scale[0]) for l in tiny.layers if l.kind == "convolutional"]
    assert mults == Y2L_TINY_MULTIPLIERS


# --------------------------------------------------------------------------- file round trip
def assert_same_qmodel(a: QuantizedModel, b: QuantizedModel) -> None:
    for name in ("method", "settings", "per_channel", "scales", "thresholds", "model_name", "cfg_text",
                 "fingerprint", "float_layers", "meta"):
        assert getattr(a, name) == getattr(b, name), name
    assert sorted(a.layers) == sorted(b.layers)
    for i, la in a.layers.items():
        lb = b.layers[i]
        for f in ("w_q", "w_scale", "b_q", "w_f"):
            x, y = getattr(la, f), getattr(lb, f)
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), (i, f)
        assert (la.in_scale, la.scheme) == (lb.in_scale, lb.scheme)
    assert a.stats.images == b.stats.images and sorted(a.stats.hists) == sorted(b.stats.hists)
    for k, ha in a.stats.hists.items():
        hb = b.stats.hists[k]
        assert (ha.hi, ha.amax, ha.lo_signed, ha.hi_signed, ha.total) == (hb.hi, hb.amax, hb.lo_signed, hb.hi_signed,
                                                                           hb.total)
        np.testing.assert_array_equal(ha.counts, hb.counts)


def test_quantized_model_file_round_trips_exactly_without_pickle(tiny, tiny_stats, dog, tmp_path):
    qm = quantize_model(tiny, tiny_stats, "percentile", per_channel=True, float_layers=[15, 22], percentile=99.9)
    path = qm.save(tmp_path / "tiny.q.npz")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    assert "meta.npy" in names and "layer0/w_q.npy" in names and "calib/input/counts.npy" in names
    with np.load(path, allow_pickle=False) as z:             # raises if any member needs pickle
        assert all(z[k].dtype != object for k in z.files)
    back = QuantizedModel.load(path)
    assert_same_qmodel(qm, back)
    assert back.settings == {"percentile": 99.9} and back.float_layers == (15, 22)
    # the same integers run: INT outputs identical bit for bit
    ya, yb = Executor(tiny, qm, "int").forward(dog.x), Executor(tiny, back, "int").forward(dog.x)
    for a, b in zip(ya, yb):
        assert np.array_equal(a, b)
    # thresholds of other methods can be recomputed from the stored histograms
    assert quantize_model(tiny, back.stats, "minmax").scales == quantize_model(tiny, tiny_stats, "minmax").scales


def test_quantized_model_load_errors(tmp_path, tiny):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    with pytest.raises(WeightsError, match="not a quantized model"):
        QuantizedModel.load(bad)
    with pytest.raises(WeightsError, match="cannot read"):
        QuantizedModel.load(tmp_path / "missing.npz")
    other = engine.load(CFG_DIR / "yolov2-tiny.cfg", random_weights=0)
    qm = quantize_model(other, collect(other, [np.full(other.input_shape, 0.5, np.float32)], progress=False), "minmax")
    with pytest.raises(EngineError, match="different cfg"):
        Executor(tiny, qm, "int")
    with pytest.raises(EngineError, match="needs a quantized model"):
        Executor(tiny, None, "hybrid")
    with pytest.raises(ValueError, match="mode"):
        Executor(tiny, None, "int4")


# --------------------------------------------------------------------------- executor modes
def test_float_mode_equals_model_forward_bit_for_bit(tiny, tiny_q, dog):
    ref = tiny.forward(dog.x)
    for ex in (Executor(tiny), Executor(tiny, tiny_q, "float")):
        outs = ex.forward(dog.x)
        assert len(outs) == len(ref)
        for i, (a, b) in enumerate(zip(outs, ref)):
            assert a.dtype == b.dtype and np.array_equal(a, b), f"layer {i}"


@pytest.mark.parametrize("mode", ["int", "hybrid"])
def test_all_layers_kept_float_equals_float_exactly(tiny, tiny_q, dog, mode):
    ex = Executor(tiny, tiny_q, mode, float_layers=range(len(tiny.layers)))
    assert all(ex.precision(i) == FLOAT for i in range(len(tiny.layers)))
    for i, (a, b) in enumerate(zip(ex.forward(dog.x), tiny.forward(dog.x))):
        assert np.array_equal(a, b), f"layer {i}"


def test_mixed_precision_changes_only_what_it_should(tiny, tiny_q, dog):
    full = Executor(tiny, tiny_q, "int").forward(dog.x)
    ex = Executor(tiny, tiny_q, "int", float_layers=[15, 22])
    assert ex.precision(15) == FLOAT and ex.precision(14) == INT8 and ex.precision(16) == FLOAT  # yolo: float only
    mixed = ex.forward(dog.x)
    for i in range(15):
        assert np.array_equal(mixed[i], full[i]), f"layer {i} precedes the float layers"
    assert not np.array_equal(mixed[15], full[15])
    ref = tiny.forward(dog.x)
    err = lambda y: float(np.mean((y.astype(np.float64) - ref[15]) ** 2))  # noqa: E731
    assert err(mixed[15]) < err(full[15])                # a float head is closer to FLOAT


# one calibration method per model (the modes are what is under test; each method is covered once)
@pytest.mark.parametrize("name, size, method, per_channel", [("yolov2", 128, "minmax", True), ("yolov3", 128, "log2", False),
                                                             ("yolov4-tiny", 160, "percentile", True)])
def test_every_mode_runs_on_zoo_cfgs_with_random_weights(name, size, method, per_channel, tmp_path):
    model = engine.load(resized_cfg(CFG_DIR / f"{name}.cfg", size, tmp_path), random_weights=0)
    rng = np.random.default_rng(3)
    imgs = [rng.random(model.input_shape, dtype=np.float32) for _ in range(3)]
    stats = collect(model, imgs[:2], progress=False)
    assert sorted(k for k in stats.hists if not k.endswith("+")) == sorted(quantizable_ids(model))
    assert {k[:-1] for k in stats.hists if k.endswith("+")} == one_sided_ids(model) and stats.images == 2
    kinds = {l.kind for l in model.layers}
    qm = quantize_model(model, stats, method, per_channel=per_channel)
    ref = model.forward(imgs[2])
    for mode in ("hybrid", "int"):
        ex = Executor(model, qm, mode)
        values, records = ex.run(imgs[2])
        for i, (v, r, layer) in enumerate(zip(values, records, model.layers)):
            y = v.float()
            assert y.shape == ref[i].shape, f"{name} layer {i}"
            assert y.dtype == np.float32 and np.isfinite(y).all(), f"{name} {mode} layer {i} [{layer.kind}]"
            assert r.precision == ex.precision(i)
            if mode == "int" and r.precision == INT8 and ex.int32_out(i):
                # a conv read only by heads ends the int8 chain: dequantized int32 accumulators
                assert v.q is None and r.stats["output"] == "int32 dequantized for the head"
                assert all(model.layers[j].kind in ("yolo", "region") for j in readers(model, i))
            elif mode == "int" and r.precision == INT8:
                assert v.q is not None and v.q.q.dtype == np.int8 and v.q.q.min() >= -127
        if mode == "int":
            assert any(ex.int32_out(i) for i in range(len(model.layers))), name
        # int8 really ran where it should
        n_int = sum(r.precision == INT8 for r in records)
        assert n_int >= (sum(l.kind == "convolutional" for l in model.layers) if mode == "hybrid" else
                         sum(l.kind not in ("yolo", "region") for l in model.layers))
        # and stays close to FLOAT on the layer before the first head (random weights: loose bound)
        head = min(i for i, l in enumerate(model.layers) if l.kind in ("yolo", "region")) - 1
        a, b = values[head].float().astype(np.float64), ref[head].astype(np.float64)
        cos = float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert cos > 0.9, f"{name} {method} {mode}: cosine {cos:.3f} at layer {head}"
    assert ({"shortcut", "upsample"} <= kinds if name == "yolov3" else True)
    assert ({"reorg", "region"} <= kinds if name == "yolov2" else True)


def readers(model, i: int) -> list[int]:
    return [layer.index for layer in model.layers if i in layer.inputs]


# --------------------------------------------------------------------------- records and statistics
def int64_requant(acc: np.ndarray, m: np.ndarray, sh: np.ndarray) -> np.ndarray:
    """Round-half-even of acc*m / 2**sh in int64 (an independent integer implementation)."""
    num = acc.astype(np.int64) * m.reshape(-1, 1, 1)
    den = np.left_shift(np.int64(1), sh).reshape(-1, 1, 1)
    q, r = np.floor_divide(num, den), np.mod(num, den)
    up = (2 * r > den) | ((2 * r == den) & (q % 2 == 1))
    return q + up


def test_int_records_hold_the_accumulator_range_and_saturation(tiny, tiny_q, dog):
    ex = Executor(tiny, tiny_q, "int")
    values, records = ex.run(dog.x)
    for r, layer in zip(records, tiny.layers):
        if layer.kind == "convolutional":
            assert {"acc_min", "acc_max", "saturated", "total"} <= r.stats.keys(), layer.index
            assert r.stats["acc_min"] <= r.stats["acc_max"] and r.stats["total"] == int(np.prod(layer.out_shape))
    # recompute layer 2 (leaky conv on int8 maxpool output) independently
    i, layer, lq = 2, tiny.layers[2], tiny_q.layers[2]
    x = values[1].q
    acc = conv_int(x.q, lq.w_f, lq.b_q, layer.size, layer.stride, layer.padding).astype(np.int64)
    assert (records[i].stats["acc_min"], records[i].stats["acc_max"]) == (acc.min(), acc.max())
    acc_scale = x.scale * lq.w_scale
    out_scale = tiny_q.scales["2"]
    m, sh = quantize_multiplier(acc_scale / out_scale)
    mn, shn = quantize_multiplier(acc_scale * 0.1 / out_scale)
    q = np.where(acc >= 0, int64_requant(acc, m, sh), int64_requant(acc, mn, shn))
    assert records[i].stats["saturated"] == int((np.abs(q) > 127).sum())
    np.testing.assert_array_equal(values[i].q.q, np.clip(q, -127, 127))
    # HYBRID records: input saturation and the accumulator range
    _, hrec = Executor(tiny, tiny_q, "hybrid").run(dog.x, stop=2)
    assert {"input_saturated", "acc_min", "acc_max"} <= hrec[2].stats.keys()


HEADS = (15, 22)     # yolov3-tiny's 1x1 linear convs read only by [yolo]


def test_int_head_convs_dequantize_their_exact_int32_accumulators(tiny, tiny_q, dog):
    ex = Executor(tiny, tiny_q, "int")
    assert {i for i in range(len(tiny.layers)) if ex.int32_out(i)} == set(HEADS)
    values, records = ex.run(dog.x)
    for i in HEADS:
        layer, lq, x = tiny.layers[i], tiny_q.layers[i], values[tiny.layers[i].inputs[0]].q
        assert values[i].q is None and x is not None and x.q.dtype == np.int8
        # independent: int64 sums of int8 products, then one float64 multiply per channel
        assert layer.size == 1 and x.scale == lq.in_scale
        acc = np.tensordot(lq.w_q[:, :, 0, 0].astype(np.int64), x.q.astype(np.int64), axes=(1, 0))
        acc = acc + lq.b_q.astype(np.int64).reshape(-1, 1, 1)
        assert (records[i].stats["acc_min"], records[i].stats["acc_max"]) == (acc.min(), acc.max())
        want = (acc * (x.scale * np.broadcast_to(lq.w_scale, (acc.shape[0],))).reshape(-1, 1, 1)).astype(np.float32)
        np.testing.assert_array_equal(values[i].f, want)
    # the INT head conv is the HYBRID kernel on the same int8 input
    hyb = Executor(tiny, tiny_q, "hybrid")
    for i in HEADS:
        y, _ = hyb.run_layer(i, [Value(f=values[tiny.layers[i].inputs[0]].q.dequantize())])
        np.testing.assert_array_equal(y.f, values[i].f)


def test_local_and_propagated_statistics(tiny, tiny_q, dog):
    ref = tiny.forward(dog.x)
    ex = Executor(tiny, tiny_q, "int")
    values, records = ex.run(dog.x)
    prop = propagated_stats(ref, values, records)
    local = local_stats(ex, dog.x, ref)
    assert len(prop) == len(local) == len(tiny.layers)
    for i, layer in enumerate(tiny.layers):
        if layer.kind == "yolo":
            assert local[i] is None
            continue
        s = local[i]
        assert s is not None and 15 < s.sqnr_db < 80 and 0.98 < s.cosine <= 1 + 1e-9, (i, s)
        if i in HEADS:    # dequantized int32 accumulators: no int8 grid to use or saturate
            assert np.isnan(s.range_use) and s.saturation == 0, (i, s)
            continue
        assert 0 < s.range_use <= 1 and 0 <= s.saturation < 0.01
        assert prop[i].sqnr_db > 5, (i, prop[i])
    # errors accumulate: the network's int8 output is further from FLOAT than a layer run alone
    assert local[22].sqnr_db > prop[22].sqnr_db
    assert np.mean([p.sqnr_db for p in prop[:3]]) > np.mean([p.sqnr_db for p in prop[-3:-1]])
    # a FLOAT executor has no error at all
    fv, fr = Executor(tiny).run(dog.x)
    assert all(s.sqnr_db == float("inf") and s.max_abs == 0 for s in propagated_stats(ref, fv, fr))
