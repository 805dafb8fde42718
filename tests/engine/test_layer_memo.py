"""LayerMemo: layer results shared between the methods of a comparison on one image.

Methods that quantize the weights alike (per channel, minmax / kl / mse) give yolov3-tiny's first layers
the same inputs (the image's fixed grid), so compare_batch takes those results from the memo: its rows
must still equal, value for value, a plain recomputation that shares nothing (test_compare_rows.plain_row),
the memo must really be used, and a key must miss when any parameter the result depends on differs.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from helpers import IMAGES
from test_compare_rows import assert_matches_plain

from engine.darknet.detect import detect_outputs
from engine.quant import layermemo
from engine.quant.executor import Executor, Value
from engine.quant.qmodel import quantize_model
from engine.scale import compare as compare_mod
from engine.scale.compare import compare_batch

METHODS = ("minmax", "kl", "mse")


@pytest.fixture(scope="module")
def qms(tiny, tiny_stats):
    return {m: quantize_model(tiny, tiny_stats, m, per_channel=True) for m in METHODS}


def test_shared_rows_equal_a_plain_recomputation_and_the_memo_is_used(tiny, qms, monkeypatch):
    memos: list[layermemo.LayerMemo] = []

    class Recorded(layermemo.LayerMemo):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            memos.append(self)

    monkeypatch.setattr(compare_mod, "LayerMemo", Recorded)
    photo = sorted(IMAGES.glob("*.jpg"))[1]
    row = compare_batch(tiny, tuple(qms.items()), "letterbox", "numpy", [photo])[0]
    assert len(memos) == 1 and memos[0].hits >= 10        # layers 0-3 of HYBRID and INT, their statistics
    pre = tiny.preprocess(photo)
    outs = tiny.forward(pre.x)
    assert row["float"] == detect_outputs(tiny, outs, pre)
    assert_matches_plain(row, tiny, qms, pre, outs)


def test_a_memo_hit_needs_equal_inputs_and_parameters(tiny, qms):
    x = tiny.preprocess(sorted(IMAGES.glob("*.jpg"))[0]).x
    memo = layermemo.LayerMemo()
    a = Executor(tiny, qms["minmax"], "int")
    b = Executor(tiny, qms["kl"], "int")
    va, ra = a.run(x, stop=4, memo=memo)
    hits = memo.hits
    vb, rb = b.run(x, stop=4, memo=memo)
    assert memo.hits > hits
    for i in range(5):
        same_grid = qms["minmax"].scales[str(i)] == qms["kl"].scales[str(i)]
        # taken from the memo exactly where every input and scale agrees; never otherwise
        assert (vb[i] is va[i]) == (same_grid and all(vb[s] is va[s] for s in tiny.layers[i].inputs if s >= 0)), i
        assert rb[i].stats == ra[i].stats or vb[i] is not va[i]
    assert any(vb[i] is not va[i] for i in range(5))             # the methods' grids part somewhere
    # another input (same shape) or another out scale: no hit, and the result is that of a fresh run
    x2 = np.ascontiguousarray(x[:, ::-1])
    v2, _ = a.run(x2, stop=0, memo=memo)
    assert v2[0] is not va[0] and np.array_equal(v2[0].q.q, a.run(x2, stop=0)[0][0].q.q)
    moved = copy.copy(qms["minmax"])
    moved.scales = {**moved.scales, "0": 0.5}
    v3, _ = Executor(tiny, moved, "int").run(x, stop=0, memo=memo)
    assert v3[0] is not va[0] and v3[0].q.scale == 0.5


def test_a_full_memo_stores_nothing_and_changes_nothing(tiny, qms):
    x = tiny.preprocess(sorted(IMAGES.glob("*.jpg"))[0]).x
    memo = layermemo.LayerMemo(budget=0)
    ex = Executor(tiny, qms["mse"], "hybrid")
    got, _ = ex.run(x, memo=memo)
    want, _ = ex.run(x)
    assert memo.used == 0 and memo.hits == 0
    for g, w in zip(got, want):
        assert np.array_equal(Value.float(g), Value.float(w))


def test_models_sharing_layer_objects_do_not_share_float_layers(tiny, qms):
    """A shallow copy (or a CLE twin) shares the layer objects but not the params: a layer kept FLOAT
    reads the params, so its result is never taken from the other model's run."""
    x = tiny.preprocess(sorted(IMAGES.glob("*.jpg"))[0]).x
    twin = tiny.shallow_copy()
    twin.set_param(0, "biases", tiny.params[0]["biases"] + 0.5)
    memo = layermemo.LayerMemo()
    a, _ = Executor(tiny, qms["minmax"], "int", float_layers=[0]).run(x, stop=0, memo=memo)
    b, _ = Executor(twin, qms["minmax"], "int", float_layers=[0]).run(x, stop=0, memo=memo)
    want, _ = Executor(twin, qms["minmax"], "int", float_layers=[0]).run(x, stop=0)
    assert b[0] is not a[0] and np.array_equal(b[0].f, want[0].f) and not np.array_equal(a[0].f, b[0].f)


def test_kept_accumulators_are_used_and_change_no_value(tiny, qms, monkeypatch):
    """yolov3-tiny's layer 2 reads layer 0's grid (the same for minmax, kl, mse) and writes each
    method's own grid: its accumulators are computed once per input (INT run, local run) and the
    other methods run only their epilogue on them; every row still equals the plain recomputation,
    and every INT layer value equals that of a run that keeps nothing."""
    from engine.quant import intops
    assert 2 in layermemo.acc_layers(tiny, list(qms.values()))
    assert 0 not in layermemo.acc_layers(tiny, list(qms.values()))     # same out grid too: the layer is shared
    kernels: list[tuple] = []
    real = intops.conv_int_unshared

    def counted(x_q, w_q, *a, **k):
        kernels.append((id(x_q), id(w_q)))
        return real(x_q, w_q, *a, **k)

    monkeypatch.setattr(intops, "conv_int_unshared", counted)
    photo = sorted(IMAGES.glob("*.jpg"))[2]
    pre = tiny.preprocess(photo)
    memo = layermemo.LayerMemo(share_acc=layermemo.acc_layers(tiny, list(qms.values())))
    runs = [Executor(tiny, qm, "int").run(pre.x, stop=4, memo=memo)[0] for qm in qms.values()]
    w2 = qms["minmax"].layers[2].w_q
    assert sum(w == id(w2) for _, w in kernels) == 1                 # layer 2's conv ran once for three methods
    assert len({runs[k][2].q.scale for k in range(3)}) == 3             # into three grids
    for qm, got in zip(qms.values(), runs):
        want, _ = Executor(tiny, qm, "int").run(pre.x, stop=4)
        for g, w in zip(got, want):
            assert np.array_equal(g.q.q, w.q.q) and g.q.scale == w.q.scale
    monkeypatch.undo()
    row = compare_batch(tiny, tuple(qms.items()), "letterbox", "numpy", [photo])[0]
    assert_matches_plain(row, tiny, qms, pre, tiny.forward(pre.x))
