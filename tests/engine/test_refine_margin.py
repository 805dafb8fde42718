"""Near-threshold head errors and the recall margin (`--refine margin`, engine/quant/refine/margin.py).

References: the selected positions and their errors are recomputed position by position with `math`; the
objectness-equivalent error is checked by its definition (moving the INT objectness logit by -e gives the
FLOAT score back); the int32 bias moves are checked against a real INT run of the original model plus the
shift; the lost detection it recovers is a real one (valset's `dark` variant of horses.jpg, FLOAT .263, INT
.243 on uint8 zero-point grids, docs/quantization.md).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from engine.errors import ArgumentError, EngineError
from engine.quant.executor import Executor, FloatView
from engine.quant.qmodel import QuantizedModel, quantize_model
from engine.quant.refine.headbias import head_convs
from engine.quant.refine.margin import (NearErrors, collect_near_errors, fit_logit_shifts, fit_shifts, head_margin,
                                        margin_stats, near_errors, shift_heads)
from engine.quant.refine.pipeline import MARGIN_K
from engine.quant.valset import fitting_images, random_variants, second_variants
from helpers import IMAGES, dark_horse_case

PHOTOS = sorted(IMAGES.glob("*.jpg"))


def sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_near_errors_equal_the_position_by_position_values():
    rng = np.random.default_rng(3)
    a, k = 3, 4
    f = rng.normal(-1, 2, size=(a * (5 + k), 6, 7)).astype(np.float32)
    q = (f + rng.normal(-0.05, 0.2, size=f.shape)).astype(np.float32)
    got = near_errors(f, q, a, k, band=(0.1, 0.5))
    fr, qr = f.reshape(a, 5 + k, -1), q.reshape(a, 5 + k, -1)
    want = []
    for ai in range(a):                              # the order near_errors reads: anchor, then position
        for p in range(fr.shape[2]):
            best = max(range(k), key=lambda c: fr[ai, 5 + c, p])
            s = sig(float(fr[ai, 4, p])) * sig(float(fr[ai, 5 + best, p]))
            if 0.1 <= s <= 0.5:
                want.append((s, float(qr[ai, 4, p] - fr[ai, 4, p]), float(qr[ai, 5 + best, p] - fr[ai, 5 + best, p]),
                             float(qr[ai, 4, p]), float(qr[ai, 5 + best, p])))
    assert len(want) == got.score.size > 10
    for i, (s, do, dc, qo, qc) in enumerate(want):
        assert got.score[i] == pytest.approx(s, rel=1e-9)
        assert got.dobj[i] == pytest.approx(do, abs=1e-6) and got.dcls[i] == pytest.approx(dc, abs=1e-6)
        if s / sig(qc) < 0.999:                      # e: the objectness move that gives the FLOAT score back
            assert sig(qo - got.e[i]) * sig(qc) == pytest.approx(s, rel=1e-6)
    st = margin_stats(got)
    assert st["n"] == len(want)
    assert st["dobj"][0] == pytest.approx(np.mean([w[1] for w in want]), abs=1e-9)
    med = float(np.median(got.e))
    assert st["e_robust"] == pytest.approx([med, 1.4826 * float(np.median(np.abs(got.e - med)))])


def test_fit_shifts_removes_the_means_then_adds_k_robust_deviations():
    rng = np.random.default_rng(4)
    n = 400
    score = rng.uniform(0.15, 0.4, n)
    fcls = rng.normal(2.0, 0.5, n)
    fobj = np.log(score / (1 / (1 + np.exp(-fcls)))) - np.log1p(-score / (1 / (1 + np.exp(-fcls))))
    errs = NearErrors(score, fobj, fcls, rng.normal(-0.04, 0.15, n), rng.normal(-0.09, 0.2, n))
    d_obj0, d_cls, rep = fit_shifts(errs, 0.0)
    assert d_cls == pytest.approx(-errs.dcls.mean())
    after = errs.shifted(-errs.dobj.mean(), d_cls)
    assert abs(after.dobj.mean()) < 1e-12 and abs(after.dcls.mean()) < 1e-12
    m, sd = rep["after_bias"]["e_robust"]
    assert d_obj0 == pytest.approx(-errs.dobj.mean() - m)
    d_obj2, d_cls2, _ = fit_shifts(errs, 2.0)
    assert d_cls2 == d_cls and d_obj2 == pytest.approx(d_obj0 + 2 * sd)
    final = errs.shifted(d_obj2, d_cls2)
    assert np.median(final.e) == pytest.approx(2 * sd, abs=1e-9)   # e is linear in the objectness logit
    assert 0.005 < np.mean(final.e < 0) < 0.06        # about Phi(-2) of the positions still fall low


def test_near_errors_of_every_class_equal_the_pair_by_pair_values():
    """every_class: each (anchor, class, position) whose FLOAT objectness x that class is in the band, not
    only the best class (a [yolo] head reports every class over the threshold)."""
    rng = np.random.default_rng(5)
    a, k = 2, 3
    f = rng.normal(0, 1.5, size=(a * (5 + k), 5, 6)).astype(np.float32)
    q = (f + rng.normal(0.02, 0.2, size=f.shape)).astype(np.float32)
    got = near_errors(f, q, a, k, band=(0.1, 0.5), every_class=True)
    fr, qr = f.reshape(a, 5 + k, -1), q.reshape(a, 5 + k, -1)
    want = []
    for ai in range(a):                              # anchor, then class, then position
        for c in range(k):
            for p in range(fr.shape[2]):
                s = sig(float(fr[ai, 4, p])) * sig(float(fr[ai, 5 + c, p]))
                if 0.1 <= s <= 0.5:
                    want.append((s, float(qr[ai, 4, p] - fr[ai, 4, p]), float(qr[ai, 5 + c, p] - fr[ai, 5 + c, p]),
                                 fr[ai, 5 + c, p] < fr[ai, 5:, p].max()))
    assert len(want) == got.score.size and sum(w[3] for w in want) > 5     # second classes are in
    for i, (s, do, dc, _) in enumerate(want):
        assert got.score[i] == pytest.approx(s, rel=1e-9)
        assert got.dobj[i] == pytest.approx(do, abs=1e-6) and got.dcls[i] == pytest.approx(dc, abs=1e-6)
    assert got.score.size > near_errors(f, q, a, k, band=(0.1, 0.5)).score.size


def test_fit_logit_shifts_removes_the_means_then_adds_k_robust_deviations_of_each_logit():
    rng = np.random.default_rng(6)
    n = 2000
    score = rng.uniform(0.15, 0.4, n)
    p_cls = rng.uniform(score + 0.02, 0.99)          # best classes (p near 1) and second ones (p near the score)
    fcls, fobj = np.log(p_cls / (1 - p_cls)), np.log(score / (p_cls - score))
    dobj, dcls = rng.normal(-0.03, 0.15, n), rng.normal(-0.08, 0.3, n)
    errs = NearErrors(score, fobj, fcls, dobj, dcls)
    d_obj, d_cls, rep = fit_logit_shifts(errs, 2.0)
    rsd = [1.4826 * float(np.median(np.abs(v - np.median(v)))) for v in (dobj, dcls)]
    assert rep["logits_robust_sd"] == pytest.approx(rsd) and rsd[0] == pytest.approx(0.15, rel=0.1)
    assert d_obj == pytest.approx(-dobj.mean() + 2 * rsd[0]) and d_cls == pytest.approx(-dcls.mean() + 2 * rsd[1])
    assert rep["objectness_shift"] == d_obj and rep["class_shift"] == d_cls
    assert abs(rep["after_bias"]["dobj"][0]) < 1e-12 and abs(rep["after_bias"]["dcls"][0]) < 1e-12
    assert fit_logit_shifts(errs, 0.0)[:2] == pytest.approx((-dobj.mean(), -dcls.mean()))
    # each pair's INT score ends below its FLOAT score about as often as a 2-sigma normal tail, whichever
    # logit carries the score (the objectness rule puts every move on objectness)
    s_int = 1 / (1 + np.exp(-(fobj + dobj + d_obj))) / (1 + np.exp(-(fcls + dcls + d_cls)))
    assert 0.001 < np.mean(s_int < score) < 0.05


def test_random_variants_are_deterministic_and_seeds_differ():
    a = random_variants(PHOTOS[:1], 3, seed=1)
    b = random_variants(PHOTOS[:1], 3, seed=1)
    c = random_variants(PHOTOS[:1], 3, seed=2)
    assert [v.name for v in a] == ["dog:r1-0", "dog:r1-1", "dog:r1-2"]
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b))
    assert not any(x.image.size == y.image.size and np.array_equal(np.asarray(x.image), np.asarray(y.image))
                   for x, y in zip(a, c))
    fit = fitting_images(PHOTOS[:2], per_photo=2)
    assert [v.name for v in fit] == ["dog", "horses", "dog:r1-0", "dog:r1-1", "horses:r1-0", "horses:r1-1"]


@pytest.fixture(scope="module")
def asym(tiny, tiny_stats):
    return quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="qwidgets_asym")


@pytest.fixture(scope="module")
def fit():
    return fitting_images(PHOTOS, per_photo=8)


@pytest.fixture(scope="module")
def margin(tiny, asym, fit):
    return head_margin(tiny, asym, fit, k=2.0)


def test_head_margin_moves_the_int32_biases_by_the_fitted_shifts(tiny, asym, fit, margin):
    errs = collect_near_errors(tiny, asym, fit, every_class=True)
    assert sorted(errs) == [15, 22] and all(v.score.size >= 20 for v in errs.values())
    for c, a, k in head_convs(tiny, asym):
        d_obj, d_cls, _ = fit_logit_shifts(errs[c], 2.0)
        rep = margin.meta["head_margin"][str(c)]
        assert rep["rule"] == "logits"
        assert rep["objectness_shift"] == pytest.approx(d_obj) and rep["class_shift"] == pytest.approx(d_cls)
        assert 0.05 < d_obj < 1.0 and 0.05 < d_cls < 1.0     # up: INT low near the threshold, plus the margin
        moved = (margin.layers[c].b_q.astype(np.int64) - asym.layers[c].b_q).reshape(a, 5 + k)
        step = np.asarray(asym.layers[c].acc_scale, np.float64).reshape(a, 5 + k)
        assert np.all(moved[:, :4] == 0)
        assert np.all(np.abs(moved[:, 4] * step[:, 4] - d_obj) <= 0.5 * step[:, 4] + 1e-12)
        assert np.all(np.abs(moved[:, 5:] * step[:, 5:] - d_cls) <= 0.5 * step[:, 5:] + 1e-12)
        assert np.array_equal(margin.layers[c].w_q, asym.layers[c].w_q)
    assert all(margin.layers[i] is asym.layers[i] for i in asym.layers if i not in (15, 22))


def test_the_int_run_is_the_original_plus_the_shift_in_accumulator_steps(tiny, asym, margin):
    p = tiny.preprocess(PHOTOS[1])
    before, after = FloatView(Executor(tiny, asym, "int").run(p.x)[0]), FloatView(Executor(tiny, margin, "int").run(p.x)[0])
    for c, a, k in head_convs(tiny, asym):
        moved = (margin.layers[c].b_q.astype(np.int64) - asym.layers[c].b_q) * np.asarray(asym.layers[c].acc_scale)
        want = np.asarray(before[c], np.float64) + moved[:, None, None]
        assert np.allclose(np.asarray(after[c], np.float64), want, rtol=0, atol=1e-5)
    assert np.array_equal(np.asarray(after[14]), np.asarray(before[14]))   # nothing upstream moves


def test_head_margin_recovers_a_lost_detection(tiny, asym, margin):
    found = dark_horse_case(tiny)
    assert not found(asym)                           # lost on uint8 grids
    assert found(margin)


def test_head_margin_keeps_a_second_class_detection(tiny, asym, fit, margin):
    """second_variants' dog:crop2: FLOAT finds a truck at .2532 at a position whose best class is car
    (objectness +.84, truck -.56, car +.20). Plain uint8 INT scores it .213; the objectness rule of rounds
    5-9 (k robust deviations of the objectness-equivalent error, best classes only) .244, lost; the
    per-logit margin over every class in the band .301."""
    from engine.darknet.detect import detect_outputs
    from engine.quant.explain import box_iou
    p = tiny.preprocess(next(v for v in second_variants(PHOTOS[:1]) if v.name == "dog:crop2").image)
    truth = [d for d in detect_outputs(tiny, tiny.forward(p.x), p, 0.25, 0.45) if d.name == "truck"]
    target = min(truth, key=lambda d: d.score)
    assert 0.25 < target.score < 0.26

    def int_score(qm) -> float:
        dets = detect_outputs(tiny, FloatView(Executor(tiny, qm, "int").run(p.x)[0]), p, 0.01, 0.45)
        return max(d.score for d in dets if d.class_id == target.class_id and box_iou(target, d) >= 0.5)
    assert int_score(asym) < 0.25
    assert int_score(head_margin(tiny, asym, fit, k=2.0, rule="objectness")) < 0.25
    assert int_score(margin) > 0.28


def test_head_margin_round_trips_through_the_quantized_file(tiny, margin, tmp_path):
    margin.save(tmp_path / "m.npz")
    back = QuantizedModel.load(tmp_path / "m.npz")
    assert back.meta["head_margin"] == margin.meta["head_margin"]        # JSON keeps the floats exactly
    for c in (15, 22):
        assert np.array_equal(back.layers[c].b_q, margin.layers[c].b_q)


def test_head_margin_errors_are_clear(tiny, asym):
    with pytest.raises(ArgumentError, match="k=-1"):
        head_margin(tiny, asym, PHOTOS[:1], k=-1)
    with pytest.raises(EngineError, match=r"positions of head conv .*\(every class at a position counted, 20 needed"):
        head_margin(tiny, asym, PHOTOS[:1], k=1)      # one photo: too few near-threshold positions
    with pytest.raises(ArgumentError, match="rule='both'.*'logits', 'objectness'"):
        head_margin(tiny, asym, PHOTOS, k=1, rule="both")
    with pytest.raises(ArgumentError, match="layer 14"):
        shift_heads(tiny, asym, {14: (0.1, 0.0)}, "head_margin", {})


def test_cli_quantize_refine_margin(tmp_path):
    import subprocess
    import sys
    from helpers import ROOT, TINY_CFG, TINY_WEIGHTS
    out = tmp_path / "m.npz"
    base = [sys.executable, "-m", "engine", "quantize", str(TINY_CFG), "--weights", str(TINY_WEIGHTS), "--calib",
            str(IMAGES / "dog.jpg"), str(IMAGES / "horses.jpg"), "--per-channel", "--profile", "qwidgets_asym",
            "--quiet", "--refine", "margin"]
    res = subprocess.run(base + ["--margin-k", "1.5", "-o", str(out)], capture_output=True, text=True, cwd=ROOT,
                         timeout=900)
    assert res.returncode == 0, res.stderr
    qm = QuantizedModel.load(out)
    assert sorted(qm.meta["head_margin"]) == ["15", "22"]
    assert all(v["k"] == 1.5 and 0 < v["objectness_shift"] < 1.5 for v in qm.meta["head_margin"].values())
    res = subprocess.run(base + ["--margin-k", "-1", "-o", str(out)], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert res.returncode != 0 and "--margin-k" in res.stderr and "Traceback" not in res.stderr


def test_cli_best_configuration_fits_the_margin_on_the_gptq_rounded_model(tmp_path, tiny):
    """README's best INT configuration, `--refine gptq --refine eq --refine margin`: the file holds GPTQ's
    rounded weights (every conv as a gptq + eq run writes it, and not minmax's nearest rounding), EQ's
    thresholds, and, in the head convs only, the objectness and class biases moved by the margin's shifts
    (to half an accumulator step), box channels untouched: the margin is measured on the rounded, searched
    model, the order the CLI runs."""
    import subprocess
    import sys
    from engine.calib.collect import collect
    from helpers import ROOT, TINY_CFG, TINY_WEIGHTS
    calib = [IMAGES / "dog.jpg", IMAGES / "horses.jpg"]
    base = [sys.executable, "-m", "engine", "quantize", str(TINY_CFG), "--weights", str(TINY_WEIGHTS), "--calib",
            *map(str, calib), "--per-channel", "--profile", "qwidgets_asym", "--quiet", "--refine", "gptq", "--refine", "eq"]
    files = {}
    for name, extra in (("g", []), ("gm", ["--refine", "margin"])):
        files[name] = tmp_path / f"{name}.npz"
        res = subprocess.run(base + extra + ["-o", str(files[name])], capture_output=True, text=True, cwd=ROOT,
                             timeout=900)
        assert res.returncode == 0, res.stderr
    qg, qgm = QuantizedModel.load(files["g"]), QuantizedModel.load(files["gm"])
    nearest = quantize_model(tiny, collect(tiny, calib, progress=False), "minmax", per_channel=True,
                             profile="qwidgets_asym")
    assert "gptq" in qgm.meta and sorted(qgm.meta["head_margin"]) == ["15", "22"]
    assert qgm.meta["eq"] == qg.meta["eq"] and qgm.scales == qg.scales and qgm.zero_points == qg.zero_points
    assert any(v[0] != v[1] for v in qgm.meta["eq"].values())         # EQ moved some ranges
    assert any(not np.array_equal(qg.layers[i].w_q, nearest.layers[i].w_q) for i in qg.layers)
    heads = {c: (a, k) for c, a, k in head_convs(tiny, qgm)}
    assert sorted(heads) == [15, 22]
    for i, lq in qgm.layers.items():
        assert np.array_equal(lq.w_q, qg.layers[i].w_q)
        moved = lq.b_q.astype(np.int64) - qg.layers[i].b_q.astype(np.int64)
        if i not in heads:
            assert not moved.any()
            continue
        a, k = heads[i]
        shift = (moved * lq.acc_scale).reshape(a, 5 + k)
        half = (0.5 * lq.acc_scale).reshape(a, 5 + k)
        rep = qgm.meta["head_margin"][str(i)]
        assert not moved.reshape(a, 5 + k)[:, :4].any()
        assert np.all(np.abs(shift[:, 4] - rep["objectness_shift"]) <= half[:, 4] * 1.000001)
        assert np.all(np.abs(shift[:, 5:] - rep["class_shift"]) <= half[:, 5:] * 1.000001)
        assert rep["k"] == MARGIN_K == 2.5 and rep["objectness_shift"] > 0     # the CLI's default k (round 13)
