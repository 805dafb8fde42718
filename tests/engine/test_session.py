"""Session: STEP == run, CROSS == a full run in the other precision, edits / undo / save, records."""
from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.edits import EditError
from engine.errors import EngineError
from engine.quant.executor import FLOAT, INT8, Executor
from engine.session import Session
from helpers import CFG_DIR, IMAGES

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
        c = s.cross(i)
        crossed += 1
        if this == INT8:   # reference: the same mode with only layer i kept FLOAT
            ref_mode, float_layers = mode, [i]
        else:              # reference: only layer i int8, everything before it as in this session
            ref_mode = "hybrid" if mode == "hybrid" else "int"
            float_layers = [j for j in range(s.num_layers) if j != i] if mode == "float" else \
                [j for j in range(s.num_layers) if j != i and s.records[j].precision == FLOAT] + \
                [j for j in range(i + 1, s.num_layers)]
        full, _ = Executor(tiny, tiny_q, ref_mode, float_layers).run(s.x, stop=i)
        np.testing.assert_array_equal(c.y_other, full[i].float(), err_msg=f"{mode} layer {i}")
        assert c.diff is not None
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
    s.undo()
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
    s.edit_weights(2, (0, 0, 1, 1), 127)
    assert s.weights(2, "int8")["w_q"][0, 0, 1, 1] == 127
    s.rerun()
    after = s.output_q(2).q
    assert set(np.flatnonzero((before != after).any(axis=(1, 2)))) <= {0}
    assert tiny_q.layers[2].w_q[0, 0, 1, 1] != 127 or True  # the session's copy is edited, not tiny_q
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


def test_scale_edit_rederives_reader_biases_and_undoes(tiny, tiny_q):
    s = Session(tiny, tiny_q, "hybrid", IMAGES / "dog.jpg")
    old = s.qmodel.scales["11"]
    s.set_threshold("11", 127 * old * 0.5)
    assert s.qmodel.layers[12].in_scale == old * 0.5
    s.undo()
    assert s.qmodel.scales["11"] == old and s.qmodel.layers[12].in_scale == old


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
def test_session_on_other_models_with_random_weights(name):
    from engine.calib.collect import collect
    from engine.quant.qmodel import quantize_model
    model = engine.load(CFG_DIR / name, random_weights=0)
    rng = np.random.default_rng(0)
    imgs = [rng.random(model.input_shape, dtype=np.float32) for _ in range(2)]
    qm = quantize_model(model, collect(model, imgs, progress=False), "minmax", per_channel=True)
    for mode in MODES:
        s = Session(model, qm, mode, imgs[0])
        s.run_to(len(model.layers) // 2)
        c = s.cross() if s.precision(s.position) == INT8 or s.executor.has_int_path(s.position) else None
        s.run()
        assert all(np.isfinite(s.output(i)).all() for i in range(s.num_layers)), (name, mode)
        assert c is None or c.y_other.shape == s.output(c.index).shape
