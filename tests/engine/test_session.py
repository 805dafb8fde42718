"""Session: STEP == run, CROSS == a full run in the other precision, edits / undo / save, records."""
from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.session.edits import EditError
from engine.errors import EngineError
from engine.quant.executor import FLOAT, INT8, Executor
from engine.quant.qmodel import QuantizedModel
from engine.session import Session
from helpers import CFG_DIR, CFG_FAMILIES, IMAGES

MODES = ["float", "hybrid", "int"]


def outputs(session):
    return [session.output(i) for i in range(session.num_layers)]


def q_outputs(session):
    return [None if session.output_q(i) is None else (session.output_q(i).q, session.output_q(i).scale)
            for i in range(session.num_layers)]


@pytest.mark.parametrize("mode", MODES)
def test_stepping_equals_run_and_run_to_then_steps(tiny, tiny_q, mode):
    a = Session(tiny, tiny_q, mode, IMAGES / "dog.jpg")
    while not a.done:
        a.step()
    b = Session(tiny, tiny_q, mode, IMAGES / "dog.jpg")
    dets = b.run()
    c = Session(tiny, tiny_q, mode, IMAGES / "dog.jpg")
    c.run_to(13)
    while not c.done:
        c.step()
    for i, (ya, yb, yc) in enumerate(zip(outputs(a), outputs(b), outputs(c))):
        np.testing.assert_array_equal(ya, yb, err_msg=f"{mode} layer {i}")
        np.testing.assert_array_equal(ya, yc, err_msg=f"{mode} layer {i}")
    for qa, qb in zip(q_outputs(a), q_outputs(b)):
        assert (qa is None) == (qb is None)
        if qa is not None:
            np.testing.assert_array_equal(qa[0], qb[0])
            assert qa[1] == qb[1]
    assert [d.to_dict() for d in a.detections()] == [d.to_dict() for d in dets]
    if mode == "float":
        for y, ref in zip(outputs(a), tiny.forward(a.x)):
            np.testing.assert_array_equal(y, ref)


def test_run_to_backwards_restarts_and_matches(tiny, tiny_q):
    s = Session(tiny, tiny_q, "int", IMAGES / "person.jpg")
    s.run_to(20)
    y15 = s.output(15).copy()
    s.run_to(5)
    assert s.position == 5
    with pytest.raises(EngineError, match="layer 15 has not run yet"):
        s.output(15)
    s.run_to(15)
    np.testing.assert_array_equal(s.output(15), y15)


def assert_cross_equals_reference(s, i: int, mode: str) -> None:
    """CROSS at layer i == an Executor run whose policy differs from the session's only at layer i."""
    c = s.cross(i)
    if s.records[i].precision == INT8:   # reference: the same mode with only layer i kept FLOAT
        ref_mode, float_layers = mode, sorted(s.float_layers | {i})
    else:                                # reference: only layer i int8, everything before it as in this session
        ref_mode = "hybrid" if mode == "hybrid" else "int"
        float_layers = [j for j in range(s.num_layers) if j != i] if mode == "float" else \
            [j for j in range(s.num_layers) if j != i and s.records[j].precision == FLOAT] + \
            [j for j in range(i + 1, s.num_layers)]
    full, _ = Executor(s.model, s.qmodel, ref_mode, float_layers).run(s.x, stop=i)
    np.testing.assert_array_equal(c.y_other, full[i].float(), err_msg=f"{mode} layer {i}")
    assert c.diff is not None


@pytest.mark.parametrize("mode", ["float", "hybrid", "int"])
def test_cross_equals_full_run_in_the_other_precision(tiny, tiny_q, mode):
    s = Session(tiny, tiny_q, mode, IMAGES / "dog.jpg")
    s.run()
    capable = [i for i in range(s.num_layers) if Executor(tiny, tiny_q, "hybrid" if mode == "hybrid" else "int")
               .has_int_path(i)]
    crossed = 0
    for i in range(s.num_layers):
        this = s.records[i].precision
        if this == FLOAT and i not in capable:
            with pytest.raises(EngineError, match="no int8 path"):
                s.cross(i)
            continue
        assert_cross_equals_reference(s, i, mode)
        crossed += 1
    assert crossed >= 13


def test_continue_from_cross_changes_detections_consistently(tiny, tiny_q):
    s = Session(tiny, tiny_q, "float", IMAGES / "dog.jpg")
    s.run_to(12)
    this = s.continue_from("this")
    assert [d.to_dict() for d in this.detections] == [d.to_dict() for d in s.float_detections()]
    other = s.continue_from("other")
    assert len(other.values) == s.num_layers and s.position == 12  # the session itself did not move
    assert abs(len(other.detections) - len(this.detections)) <= 2


def test_zero_filter_changes_exactly_that_channel_and_undo_restores(tiny, tiny_q):
    s = Session(tiny, tiny_q, "float", IMAGES / "dog.jpg")
    s.run_to(8)
    before = s.output(8).copy()
    s.zero_filter(8, 5)
    r = s.rerun()
    after = s.output(8)
    changed = np.flatnonzero((before != after).any(axis=(1, 2)))
    assert changed.tolist() == [5]
    # a zero filter leaves only the folded bias, through leaky
    _, b = tiny.layers[8].fused(s.model.params[8])
    expected = max(b[5], 0.1 * b[5])
    np.testing.assert_allclose(after[5], expected, rtol=1e-6)
    assert r.changed == int((before != after).sum())
    undone = s.undo()
    # shown as a notebook cell's last value: the summary, not two weight arrays (6.8 kB of text)
    assert repr(undone).startswith("<Edit layer 8 float weights") and len(repr(undone)) < 200
    s.rerun()
    np.testing.assert_array_equal(s.output(8), before)
    s.redo()
    s.rerun()
    np.testing.assert_array_equal(s.output(8), after)
    assert tiny.params[8]["weights"][5].any(), "the caller's model must not be edited"


def test_int8_edit_and_rerun_in_int_mode(tiny, tiny_q):
    s = Session(tiny, tiny_q, "int", IMAGES / "dog.jpg")
    s.run_to(2)
    before = s.output_q(2).q.copy()
    original = int(tiny_q.layers[2].w_q[0, 0, 1, 1])
    assert original != 127
    s.edit_weights(2, (0, 0, 1, 1), 127)
    assert s.weights(2, "int8")["w_q"][0, 0, 1, 1] == 127
    result = s.rerun()
    after = s.output_q(2).q
    assert set(np.flatnonzero((before != after).any(axis=(1, 2)))) == {0}   # only filter 0's channel moved
    assert result.changed == int(np.count_nonzero(before != after)) > 0
    assert tiny_q.layers[2].w_q[0, 0, 1, 1] == original     # the session's copy is edited, not tiny_q
    s.undo()
    s.rerun()
    np.testing.assert_array_equal(s.output_q(2).q, before)


@pytest.mark.parametrize("call, match", [
    (lambda s: s.edit_weights(2, (0, 0, 0, 0), np.nan, target="float"), "finite"),
    (lambda s: s.edit_weights(2, (0, 0, 0, 0), 200, target="int8"), r"\[-127, 127\]"),
    (lambda s: s.edit_weights(2, (0, 0, 0, 0), 1.5, target="int8"), "whole numbers"),
    (lambda s: s.edit_weights(2, 0, np.zeros((2, 2)), target="float"), "do not fit"),
    (lambda s: s.edit_weights(2, (99, 0, 0, 0), 1.0, target="float"), "not valid for shape"),
    (lambda s: s.zero_filter(2, 32), "filter 32 does not exist"),
    (lambda s: s.prune(2, 1.5), "fraction"),
    (lambda s: s.set_scale("2", -1.0), "scale must be finite and > 0"),
    (lambda s: s.edit_weights(1, (0,), 1.0, target="float"), "no such parameter"),
    (lambda s: s.edit_weights(2, 0, np.nan, param="biases", target="int8"), "int32 values must be finite"),
    (lambda s: s.edit_weights(2, 0, 2.7, param="biases", target="int8"), "whole numbers"),
    (lambda s: s.edit_weights(2, 0, 1e20, param="biases", target="int8"), "below 2\\*\\*31"),
    (lambda s: s.edit_weights(2, 0, "x", param="biases", target="int8"), "must be integers"),
    (lambda s: s.set_scale("2", "abc"), "scale must be a number, got 'abc'"),
    (lambda s: s.set_threshold("2", None), "threshold must be a number"),
    (lambda s: s.scale_filter(2, 0, "x"), "scale factor must be a number"),
    (lambda s: s.scale_filter(2, 0, float("inf")), "scale factor must be finite"),
])
def test_bad_edits_are_refused_and_leave_no_trace(tiny, tiny_q, call, match):
    s = Session(tiny, tiny_q, "int", IMAGES / "dog.jpg")
    with pytest.raises(EditError, match=match):
        call(s)
    assert len(s.journal) == 0


def test_prune_and_save_customized_model_reproduces_outputs(tiny, tiny_q, tmp_path):
    s = Session(tiny, tiny_q, "float", IMAGES / "horses.jpg")
    s.prune(12, 0.5)
    w = s.weights(12)["weights"]
    assert abs((w == 0).mean() - 0.5) < 1e-3
    s.run()
    path = s.save_model(tmp_path / "pruned.npz")
    with pytest.raises(EngineError, match="exists"):
        s.save_model(path)
    reloaded = engine.load(path)
    for i, y in enumerate(reloaded.forward(s.x)):
        np.testing.assert_array_equal(y, s.output(i), err_msg=f"layer {i}")


def test_save_weights_refuses_the_original_and_reloads_the_edit(tiny, tmp_path):
    from helpers import TINY_CFG, TINY_WEIGHTS
    s = Session(tiny, None, "float", IMAGES / "dog.jpg")
    s.zero_filter(13, 7)
    for original in (TINY_WEIGHTS, s.original.cfg.file):
        with pytest.raises(EngineError, match="original model"):
            s.save_weights(original)
    path = s.save_weights(tmp_path / "edited.weights")
    assert path.stat().st_size == TINY_WEIGHTS.stat().st_size
    s.run()
    for i, y in enumerate(engine.load(TINY_CFG, weights=path).forward(s.x)):
        np.testing.assert_array_equal(y, s.output(i), err_msg=f"layer {i}")


def test_scale_edit_rederives_reader_biases_and_undoes(tiny, tiny_q):
    s = Session(tiny, tiny_q, "hybrid", IMAGES / "dog.jpg")
    old = s.qmodel.scales["11"]
    s.set_threshold("11", 127 * old * 0.5)
    assert s.qmodel.layers[12].in_scale == old * 0.5
    s.undo()
    assert s.qmodel.scales["11"] == old and s.qmodel.layers[12].in_scale == old


def test_scale_edit_moves_the_grid_a_maxpool_shares_with_its_producer(tiny, tiny_q):
    """INT runs maxpool 5 on conv 4's codes and grid: editing either tensor's scale edits both, so HYBRID (which
    reads maxpool 5's stored scale at conv 6) and the saved file agree with INT; the run equals a quantized model
    rescaled on the whole group, and undo restores both."""
    from engine.quant.qmodel import rescaled
    s = Session(tiny, tiny_q, "hybrid", IMAGES / "dog.jpg")
    old4, old5 = s.qmodel.scales["4"], s.qmodel.scales["5"]
    new = old4 * 0.75
    twin = rescaled(tiny, s.qmodel, {"4": new, "5": new})
    e = s.set_scale("5", new)
    assert s.qmodel.scales["4"] == s.qmodel.scales["5"] == new
    assert s.qmodel.layers[6].in_scale == new and e.layer == "4" and "shared by 4, 5" in e.description
    s.run()
    values, _ = Executor(tiny, twin, "hybrid").run(s.pre.x)
    for i in range(s.num_layers):
        np.testing.assert_array_equal(s.output(i), values[i].float(), err_msg=f"layer {i}")
    s.undo()
    assert (s.qmodel.scales["4"], s.qmodel.scales["5"]) == (old4, old5) and s.qmodel.layers[6].in_scale == old5


def test_callbacks_fire(tiny, tiny_q):
    s = Session(tiny, tiny_q, "int", IMAGES / "dog.jpg")
    seen = []
    s.on_step(lambda r: seen.append(("step", r.index)))
    s.on_edit(lambda e: seen.append(("edit", e.layer)))
    s.on_reset(lambda _: seen.append(("reset",)))
    s.step()
    s.zero_filter(0, 1)
    s.reset()
    assert seen == [("step", 0), ("edit", 0), ("reset",)]


def test_record_round_trip_restores_state_and_results(tiny, tiny_q, tmp_path):
    s = Session(tiny, tiny_q, "int", IMAGES / "person.jpg", float_layers=[15, 22])
    s.zero_filter(4, 2)
    s.run()
    path = s.save_record(tmp_path / "run.npz")
    back = Session.open_record(path)
    assert back.mode == "int" and back.float_layers == {15, 22} and back.done
    assert back.history == s.edits()
    assert s.image_name == back.image_name == "person.jpg"
    np.testing.assert_array_equal(np.asarray(back.image), np.asarray(s.image))    # the original, lossless
    for i in range(s.num_layers):
        np.testing.assert_array_equal(back.output(i), s.output(i))
    assert [d.to_dict() for d in back.detections()] == back.saved["detections"]


def test_sensitivity_sweep_ranks_and_can_be_cancelled(tiny, tiny_q):
    import threading
    s = Session(tiny, tiny_q, "hybrid", IMAGES / "dog.jpg")
    table = s.sensitivity(progress=False)
    assert sorted(r.index for r in table.rows) == [l.index for l in tiny.layers if l.kind == "convolutional"]
    assert [r.rank for r in table.rows] == list(range(1, len(table.rows) + 1))
    ev = threading.Event()
    ev.set()
    assert s.sensitivity(progress=False, cancel=ev).cancelled


@pytest.mark.parametrize("name", ["yolov2.cfg", "yolov3.cfg", "yolov4-tiny.cfg"])
def test_session_on_other_models_with_random_weights(name, tmp_path):
    from engine.calib.collect import collect
    from engine.quant.qmodel import quantize_model
    from helpers import resized_cfg
    model = engine.load(resized_cfg(CFG_DIR / name, 256, tmp_path), random_weights=0)   # 256: CI time
    rng = np.random.default_rng(0)
    imgs = [rng.random(model.input_shape, dtype=np.float32) for _ in range(2)]
    qm = quantize_model(model, collect(model, imgs, progress=False), "minmax", per_channel=True)
    convs = [l.index for l in model.layers if l.kind == "convolutional"]
    probes = sorted({convs[0], len(model.layers) // 2, convs[-1]})
    for mode in MODES:
        s = Session(model, qm, mode, imgs[0])
        ref, _ = Executor(model, qm, mode).run(imgs[0])      # STEP == the executor's whole run, bit for bit
        s.run_to(probes[0])
        for i in probes:
            s.run_to(i)
            if s.precision(i) == INT8 or s.executor.has_int_path(i, "hybrid" if mode == "hybrid" else "int"):
                assert_cross_equals_reference(s, i, mode)
        s.run()
        for i in range(s.num_layers):
            assert np.isfinite(s.output(i)).all(), (name, mode, i)
            np.testing.assert_array_equal(s.output(i), ref[i].float(), err_msg=f"{name} {mode} layer {i}")


def test_int32_bias_edit_is_exact_and_undoes(tiny, tiny_q):
    s = Session(tiny, tiny_q, "int", IMAGES / "dog.jpg")
    b = s.weights(2, "int8")["b_q"]
    s.edit_weights(2, 3, 12345.0, param="biases", target="int8")        # a whole float is accepted exactly
    assert s.weights(2, "int8")["b_q"][3] == 12345 and s.weights(2, "int8")["b_q"].dtype == np.int32
    s.undo()
    np.testing.assert_array_equal(s.weights(2, "int8")["b_q"], b)


@pytest.mark.parametrize("mode", MODES)
def test_edit_of_an_earlier_layer_reaches_later_outputs_on_run(tiny, tiny_q, mode):
    """Kept outputs that predate an edit are re-executed before anything builds on them."""
    s = Session(tiny, tiny_q, mode, IMAGES / "dog.jpg")
    s.run_to(8)
    s.zero_filter(4, 3)                       # layer 4 ran with the old weights
    assert s.stale_from == 4
    s.run()
    assert s.stale_from is None
    fresh = Session(s.model, s.qmodel, mode, IMAGES / "dog.jpg")   # the edited model, run from scratch
    fresh.run()
    for i in range(s.num_layers):
        np.testing.assert_array_equal(s.output(i), fresh.output(i), err_msg=f"{mode} layer {i}")
    assert [d.to_dict() for d in s.detections()] == [d.to_dict() for d in fresh.detections()]


def test_rerun_after_an_earlier_edit_reexecutes_the_layers_in_between(tiny, tiny_q):
    s = Session(tiny, tiny_q, "int", IMAGES / "dog.jpg")
    s.run_to(6)
    before = s.output(6).copy()
    s.zero_filter(2, 0)
    result = s.rerun()
    assert s.stale_from is None and result.index == 6 and result.changed > 0
    fresh = Session(s.model, s.qmodel, "int", IMAGES / "dog.jpg")
    fresh.run_to(6)
    np.testing.assert_array_equal(s.output(6), fresh.output(6))
    np.testing.assert_array_equal(result.before, before)
    s.undo()                                  # undo makes the kept outputs stale again
    assert s.stale_from == 2
    s.rerun()
    np.testing.assert_array_equal(s.output(6), before)


def test_edit_after_the_position_leaves_kept_outputs_valid(tiny, tiny_q):
    s = Session(tiny, tiny_q, "int", IMAGES / "dog.jpg")
    s.run_to(3)
    s.zero_filter(8, 0)
    assert s.stale_from is None
    s.set_scale("2", s.qmodel.scales["2"] * 2)    # layer 2 requantizes into this scale: stale from 2
    assert s.stale_from == 2


def test_record_of_an_edited_session_replays_what_it_stores(tiny, tiny_q, tmp_path):
    s = Session(tiny, tiny_q, "hybrid", IMAGES / "dog.jpg")
    s.run()
    s.prune(12, 0.3)                          # after a full run: every kept output from 12 on is stale
    path = s.save_record(tmp_path / "edited.npz")
    back = Session.open_record(path)
    for i in range(s.num_layers):
        np.testing.assert_array_equal(back.output(i), s.output(i), err_msg=f"layer {i}")
    assert back.saved["stats"][20]["max"] == s.summary(20).to_dict()["max"]


def test_switching_quantized_model_keeps_float_edits_undoable_and_guards_int8_edits(tiny, tiny_q, tiny_stats):
    from engine.quant.qmodel import quantize_model
    other = quantize_model(tiny, tiny_stats, "percentile", per_channel=True)
    s = Session(tiny, tiny_q, "int", IMAGES / "dog.jpg")
    s.zero_filter(6, 1, target="float")       # float edit: carried over, re-derived in the new model
    s.edit_weights(2, (0, 0, 0, 0), 5, target="int8")
    with pytest.raises(EngineError, match="1 int8/scale edit"):
        s.set_quantized(other)
    assert s.qmodel.method == tiny_q.method and len(s.journal) == 2    # nothing switched
    assert s.set_quantized(other, drop_edits=True) == 1
    assert s.qmodel.method == "percentile" and [e.target for e in s.journal.done] == ["float"]
    assert not s.qmodel.layers[6].w_q[1].any()                   # the zeroed filter, in the new scheme
    assert s.qmodel.layers[2].w_q[0, 0, 0, 0] == other.layers[2].w_q[0, 0, 0, 0]
    s.undo()                                  # restores the *new* model's own layer 6, bit for bit
    np.testing.assert_array_equal(s.qmodel.layers[6].w_q, other.layers[6].w_q)
    assert s.qmodel.layers[6].in_scale == other.layers[6].in_scale
    s.run()
    fresh = Session(tiny, other, "int", IMAGES / "dog.jpg")
    fresh.run()
    for i in range(s.num_layers):
        np.testing.assert_array_equal(s.output(i), fresh.output(i), err_msg=f"layer {i}")
    s.redo()
    assert not s.qmodel.layers[6].w_q[1].any()


def test_calibration_stats_follow_float_edits(tiny, tiny_q):
    from engine.calib.collect import collect
    s = Session(tiny, tiny_q, "int", IMAGES / "dog.jpg")
    images = [IMAGES / "dog.jpg"]
    seen = []
    a = s.calibration_stats(images, key="dog", on_image=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 1)] and s.calibration_stats(images, key="dog") is a       # cached
    s.scale_filter(0, 0, 2.0, target="float")
    b = s.calibration_stats(images, key="dog")
    assert b is not a
    ref = collect(s.model, images, progress=False)
    np.testing.assert_array_equal(b.hists["0"].counts, ref.hists["0"].counts)
    assert not np.array_equal(a.hists["0"].counts, b.hists["0"].counts)    # a's histogram is of the old weights


def test_set_model_opens_another_model_on_the_same_image(tiny, tiny_q, tmp_path):
    from engine.errors import EditsWouldBeLost
    from helpers import TINY_CFG, TINY_WEIGHTS, resized_cfg
    s = Session(tiny, tiny_q, "int", IMAGES / "horses.jpg")
    s.zero_filter(2, 0)
    with pytest.raises(EditsWouldBeLost) as err:
        s.set_model(TINY_CFG)
    assert (err.value.applied, err.value.undone) == (1, 0) and len(s.journal) == 1 and s.mode == "int"
    small = engine.load(resized_cfg(TINY_CFG, 320, tmp_path), weights=TINY_WEIGHTS)
    assert s.set_model(small, drop_edits=True) == 1
    assert s.mode == "float" and s.qmodel is None and len(s.journal) == 0 and s.x.shape == (3, 320, 320)
    assert s.image_name == "horses.jpg"
    fresh = Session(small, None, "float", IMAGES / "horses.jpg")
    assert [d.to_dict() for d in s.run()] == [d.to_dict() for d in fresh.run()]
    other = tiny_q.copy()
    other.cfg_text = other.cfg_text.replace("activation=leaky", "activation=relu", 1)
    with pytest.raises(EngineError, match="different cfg"):      # another network: refused
        s.set_model(tiny, other)
    assert s.model.input_shape == (3, 320, 320) and s.qmodel is None   # and nothing changed
    s.set_model(small, tiny_q)           # calibrated at 416, deployed at 320: same int8 weights and scales
    assert s.qmodel.method == tiny_q.method and s.mode == "float" and s.x.shape == (3, 320, 320)
    s.set_mode("int")
    int_dets = s.run()
    assert {d.name for d in int_dets} == {d.name for d in fresh.run()}        # horses at 320, INT as FLOAT


def test_refresh_event_and_fused_weights(tiny, tiny_q):
    s = Session(tiny, tiny_q, "hybrid", IMAGES / "dog.jpg")
    seen = []
    s.on_refresh(seen.append)
    s.run_to(5)
    s.scale_filter(2, 1, 0.5, target="float")
    s.step()                                   # refreshes 2..5 first, then runs 6
    assert seen == [2] and s.position == 6
    fused = s.weights(2, "fused")
    w, b = tiny.layers[2].fused(s.model.params[2])
    np.testing.assert_array_equal(fused["weights"], w)
    np.testing.assert_array_equal(fused["biases"], b)
    with pytest.raises(EngineError, match=r"layer 1 \[maxpool\] has no weights"):
        s.weights(1, "fused")


def test_inspection_apis_against_independent_computations(tiny, tiny_q):
    """layer_info / summary / histogram / inputs / weights / fitness / thresholds of an INT session,
    each recomputed here from first principles (NumPy on the kept tensors, the graph, the files)."""
    from engine.calib import CALIBRATORS, make
    s = Session(tiny, tiny_q, "int", IMAGES / "dog.jpg")
    s.run_to(12)
    info = s.layer_info(12)
    lq = tiny_q.layers[12]
    assert (info["kind"], info["inputs"], info["out_shape"]) == ("convolutional", ["11"], [1024, 13, 13])   # graph node ids
    assert info["macs"] == 1024 * 512 * 9 * 13 * 13 and info["params"] == 1024 * 512 * 9 + 4 * 1024
    assert info["in_scale"] == lq.in_scale == tiny_q.scales["11"] and info["out_scale"] == tiny_q.scales["12"]
    assert info["precision"] == INT8 and info["per_channel"] and info["record"]["total"] == 1024 * 13 * 13
    q = s.output_q(12)
    y = (q.q.astype(np.float32) * np.float32(q.scale)).astype(np.float64)     # real = q * scale, in float32
    np.testing.assert_array_equal(s.output(12), y.astype(np.float32))
    summ = s.summary(12)
    assert (summ.min, summ.max) == (float(y.min()), float(y.max())) and abs(summ.mean - y.mean()) < 1e-9
    assert summ.range_use == np.abs(q.q.astype(int)).max() / 127 and summ.zeros == float((q.q == 0).mean())
    counts, edges = s.histogram(12, bins=32)
    ref_counts, ref_edges = np.histogram(s.output(12), bins=32, range=(y.min(), y.max()))
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_allclose(edges, ref_edges)
    log_counts, log_edges = s.histogram(12, bins=32, log2=True)
    assert log_counts.sum() == y.size and np.all(np.log2(log_edges) == np.round(np.log2(log_edges)))
    np.testing.assert_array_equal(s.inputs(12)[0], s.output(11))
    w = s.weights(12, "int8")
    np.testing.assert_array_equal(w["w_q"], lq.w_q)
    w["w_q"][0] = 0                                        # a copy: the session's weights are untouched
    assert s.weights(12, "int8")["w_q"][0].any()
    fit = s.fitness(12)
    ref = tiny.forward(s.x)[12].astype(np.float64)
    e = s.output(12).astype(np.float64) - ref
    assert abs(fit["propagated"].sqnr_db - 10 * np.log10((ref ** 2).sum() / (e ** 2).sum())) < 1e-9
    assert abs(fit["propagated"].max_abs - np.abs(e).max()) < 1e-12
    assert fit["local"].sqnr_db > fit["propagated"].sqnr_db       # alone on FLOAT inputs: less error
    th = s.thresholds("12", raw=True)                      # each method on the tensor's own histogram
    assert set(th) == set(CALIBRATORS.names()) - {"auto"}
    for name, t in th.items():
        assert t == make(name).threshold(tiny_q.stats.hists["12"])
    assert th["minmax"] == tiny_q.stats.hists["12"].amax
    assert s.thresholds(12, raw=True) == th
    assert set(s.thresholds(12)) == set(th)                # under the rules: tests/engine/test_thresholds_in_use.py
    from engine.errors import ArgumentError
    for bad in (99, -1, 2.5, True, "99"):
        with pytest.raises(ArgumentError, match="layer"):
            s.thresholds(bad)


def test_continue_from_equals_an_executor_run_with_that_layer_crossed(tiny, tiny_q):
    s = Session(tiny, tiny_q, "int", IMAGES / "dog.jpg")
    s.run_to(8)
    other = s.continue_from("other")
    ref, _ = Executor(tiny, tiny_q, "int", float_layers=[8]).run(s.x)      # layer 8 FLOAT, the rest INT
    for i in range(s.num_layers):
        np.testing.assert_array_equal(other.values[i].float(), ref[i].float(), err_msg=f"layer {i}")
    this = s.continue_from("this")
    assert [d.to_dict() for d in this.detections] == [d.to_dict() for d in Session(tiny, tiny_q, "int",
                                                                                IMAGES / "dog.jpg").run()]
    assert s.position == 8


def test_set_model_calls_a_loader_only_when_the_switch_is_allowed(tiny, tiny_q):
    from engine.errors import EditsWouldBeLost
    calls = []

    def loader():
        calls.append(1)
        return tiny
    s = Session(tiny, tiny_q, "float", IMAGES / "dog.jpg")
    s.zero_filter(0, 0)
    with pytest.raises(EditsWouldBeLost):
        s.set_model(loader)
    assert calls == []                       # a refused switch reads nothing
    assert s.set_model(loader, drop_edits=True) == 1 and calls == [1]


def test_a_record_never_replaces_a_file_the_session_was_read_from(tiny, tiny_q, tmp_path):
    model_file, q_file = tiny.save(tmp_path / "m.npz"), tiny_q.save(tmp_path / "q.npz")
    m, qm = engine.load(model_file), QuantizedModel.load(q_file)
    assert qm.source == str(q_file)
    s = Session(m, qm, "int", IMAGES / "dog.jpg")
    for target in (model_file, q_file, tmp_path / "." / "q.npz"):
        before = target.read_bytes()
        with pytest.raises(EngineError, match="models were read from"):
            s.save_record(target)
        assert target.read_bytes() == before
    s.save_record(tmp_path / "run.npz")
    s.save_record(tmp_path / "run.npz")               # an older record is replaced, as before
    assert Session.open_record(tmp_path / "run.npz").mode == "int"


def test_a_record_opened_from_a_file_saves_back_over_it(tiny, tiny_q, tmp_path):
    s = Session(tiny, tiny_q, "int", IMAGES / "dog.jpg")
    s.run_to(5)
    rec = s.save_record(tmp_path / "run.npz")
    back = Session.open_record(rec)
    back.step()
    back.save_record(rec)                               # its model's source is the record: still a record
    assert Session.open_record(rec).position == 6


def test_dequantized_weights_are_w_q_times_the_filters_scale(tiny, tiny_q):
    s = Session(tiny, tiny_q, "int")
    q, d = s.weights(2, "int8"), s.weights(2, "dequantized")
    scale = np.float32(q["w_scale"]).astype(np.float64).reshape(-1, 1, 1, 1)      # per filter, computed here
    np.testing.assert_array_equal(d["weights"], (q["w_q"].astype(np.float64) * scale).astype(np.float32))
    np.testing.assert_array_equal(d["w_scale"], q["w_scale"])
    d["weights"][:] = 0                                              # a copy, like every kind
    assert s.weights(2, "dequantized")["weights"].any()
    with pytest.raises(EngineError, match="layer 1 \\[maxpool\\] has no int8 weights"):
        s.weights(1, "dequantized")


@pytest.mark.parametrize("profile", ["qwidgets", "onnxruntime", "qwidgets_asym"])
@pytest.mark.parametrize("family", CFG_FAMILIES)
def test_session_run_equals_executor_run_on_every_cfg_family_and_profile(cfg_family, family, profile):
    """Session.run() in each mode == Executor.run() on one cfg of each shipped layer family
    (helpers.CFG_FAMILIES), minmax per channel under each profile: every output, its int8 codes and
    scale, and every layer's record, bit for bit."""
    model, xb, qm = cfg_family(family, profile)
    for mode in MODES:
        ref, recs = Executor(model, qm, mode).run(xb[0])
        s = Session(model, qm, mode, xb[0])
        s.run()
        assert s.num_layers == len(ref) == len(model.layers)
        for i, (v, r) in enumerate(zip(ref, recs)):
            where = f"{family} {profile} {mode} layer {i} [{model.layers[i].kind}]"
            np.testing.assert_array_equal(s.output(i), v.float(), err_msg=where)
            q = s.output_q(i)
            assert (q is None) == (v.q is None), where
            if q is not None:
                np.testing.assert_array_equal(q.q, v.q.q, err_msg=where)
                assert (q.scale, q.zero_point) == (v.q.scale, v.q.zero_point), where
            assert s.records[i].precision == r.precision, where
            assert repr(s.records[i].stats) == repr(r.stats), where
        if mode == "int":
            assert sum(r.precision == INT8 for r in recs) >= 3, f"{family} {profile}: INT ran int8 somewhere"


def test_a_float_edit_of_a_log2_models_first_layer_keeps_its_zero_sum_rounding(tiny, tiny_stats):
    """Round 13: log2 rounds the first layer's weights so each filter's errors sum to about zero; an edit
    re-derives the layer's int8 weights, and it used nearest rounding, so zeroing filter 5 quietly re-rounded the
    other 15 the former way (sums of up to 4.6 steps)."""
    from engine.quant.qmodel import quantize_model
    qm = quantize_model(tiny, tiny_stats, "log2", per_channel=True)
    s = Session(tiny, qm, "int", IMAGES / "dog.jpg")
    s.zero_filter(0, 5, target="float")         # the float weights, then the layer's int8 weights re-derived
    after = s.qmodel.layers[0]
    keep = np.arange(16) != 5
    np.testing.assert_array_equal(after.w_q[keep], qm.layers[0].w_q[keep])
    assert not after.w_q[5].any()


def test_a_float_edit_of_a_log2_file_from_before_round_13_keeps_its_nearest_rounding(tiny, tiny_stats):
    """A log2 file saved before round 13 rounded conv 0 to nearest and records no `first_weights` (settings keep
    non-defaults only), so the method's rule read from it says zero_sum: zeroing filter 5 re-rounded the other 15
    filters the new way, an edit of one filter changing every filter's codes. The rounding the codes show wins."""
    from engine.quant.qmodel import quantize_model
    qm = quantize_model(tiny, tiny_stats, "log2", per_channel=True, first_weights="nearest")
    assert qm.settings.pop("first_weights") == "nearest"        # as such a file holds its settings
    s = Session(tiny, qm, "int", IMAGES / "dog.jpg")
    s.zero_filter(0, 5, target="float")
    after = s.qmodel.layers[0]
    keep = np.arange(16) != 5
    np.testing.assert_array_equal(after.w_q[keep], qm.layers[0].w_q[keep])
    assert not after.w_q[5].any()
