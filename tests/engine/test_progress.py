"""Progress and Cancel of the long engine work the Explorer runs (engine/quant/progress.py): the mixed-precision
search and simulation vs device report each unit in order with a correct total, and a cancel between two
units raises Cancelled and leaves the model and quantized model exactly as they were (real yolov3-tiny)."""
from __future__ import annotations

import multiprocessing
import threading

import numpy as np
import pytest

from engine.errors import ArgumentError, Cancelled, EngineError
from engine.imaging.samples import sample
from engine.quant.device import sim_vs_device
from engine.quant.mixed import search
from engine.quant.progress import Steps, stop_hook
from engine.quant.sensitivity import sensitivity
from helpers import frozen_arrays, same_arrays


def _monotonic(calls: list[tuple[int, int, str]]) -> None:
    """done counts 0, 1, 2, ... and never passes the total; the last call is (n, n, "done")."""
    assert [c[0] for c in calls] == list(range(len(calls)))
    assert all(done <= total for done, total, _ in calls)
    assert calls[-1] == (len(calls) - 1, len(calls) - 1, "done")


def test_steps_report_before_each_unit_and_stop_on_the_hook():
    calls, stop = [], threading.Event()
    steps = Steps(3, lambda *c: calls.append(c), stop)
    steps.start("a")
    steps.start("b")
    stop.set()
    with pytest.raises(Cancelled, match="before c .2 of 3 steps done"):
        steps.start("c")
    assert calls == [(0, 3, "a"), (1, 3, "b")]
    steps = Steps(1, lambda *c: calls.append(c), lambda: False)
    steps.start("x")
    steps.start("y")               # more units than announced: the total grows rather than lying
    steps.finish()
    assert calls[2:] == [(0, 1, "x"), (1, 2, "y"), (2, 2, "done")]


def test_search_reports_every_run_with_a_correct_total(tiny, tiny_kl_pt):
    calls = []
    res = search(tiny, tiny_kl_pt, [sample("dog")], target=0.9, max_layers=2, on_progress=lambda *c: calls.append(c))
    n = sum(l.int8_weights for l in tiny.layers)
    _monotonic(calls)
    assert calls[0] == (0, 2 + n + 1, "FLOAT run on 1 image")          # if the start misses: n sensitivities, 1 greedy
    assert calls[1][2] == "all-int8 run on 1 image" and calls[2][2] == "sensitivity, layer 1 of 13: conv 0"
    assert calls[8][2] == "sensitivity, layer 7 of 13: conv 12"
    runs = 1 + 1 + len(res.sensitivity) + len(res.curve) - 1          # FLOAT, all-int8, sensitivities, greedy
    assert len(res.sensitivity) == n and len(res.curve) >= 2 and calls[-1][:2] == (runs, runs)
    # conv 0 comes with maxpool 1: the limit of 2 layers FLOAT is reached after one greedy run, as the text says
    assert res.curve[1].added_layers == [0, 1] and len(res.curve) == 2
    assert [c[2] for c in calls[2 + n:-1]] == [f"keeping FLOAT {k} of at most 1: conv {p.added}"
                                               for k, p in enumerate(res.curve[1:], 1)]


@pytest.fixture(scope="module")
def tiny224():
    """yolov3-tiny at 224x224 quantized per tensor with kl, no calibration rules (loses detections: a search
    with several greedy runs that meets its target early), and two photos: a real search in seconds."""
    import engine
    from engine.calib.collect import collect
    from engine.quant.qmodel import quantize_model
    from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS
    model = engine.load(TINY_CFG, weights=TINY_WEIGHTS, size=224)
    stats = collect(model, sorted(IMAGES.glob("*.jpg")), progress=False)
    return model, quantize_model(model, stats, "kl", per_channel=False, rules=(), clip_max=1), [sample("dog"), sample("horses")]


def test_search_total_counts_only_runs_that_run_and_the_bar_never_jumps(tiny224):
    # the total was every run possible (13 greedy runs): the bar sat at 18 / 28 and jumped to done at 19
    model, qmodel, images = tiny224
    calls = []
    res = search(model, qmodel, images, target=0.7, max_lost=1, on_progress=lambda *c: calls.append(c))
    n, greedy = len(res.sensitivity), len(res.curve) - 1
    runs = 2 + n + greedy
    _monotonic(calls)
    assert n == 13 and greedy == 4 and res.met                       # met long before every candidate was tried
    assert max(total for _, total, _ in calls) == runs               # never a run that did not run
    # FLOAT, the start, the sensitivities and the first greedy run: counted from the start (the start misses)
    assert [c[1] for c in calls[:3 + n]] == [3 + n] * (3 + n)
    # each further greedy run counted as it starts (the one before missed), the last one at runs - 1 of runs
    assert [c[:2] for c in calls[2 + n:]] == [(d, d + 1) for d in range(2 + n, runs)] + [(runs, runs)]
    fractions = [done / total for done, total, _ in calls]
    assert fractions == sorted(fractions)                            # the bar never goes backwards
    assert [c[2] for c in calls[2 + n:-1]] == [f"keeping FLOAT {k} of at most {n}: conv {p.added}"
                                               for k, p in enumerate(res.curve[1:], 1)]


def test_search_whose_start_meets_the_target_drops_the_runs_it_does_not_need(tiny224):
    model, qmodel, images = tiny224
    calls = []
    res = search(model, qmodel, images, target=0.3, max_lost=5, on_progress=lambda *c: calls.append(c))
    assert res.met and len(res.curve) == 1 and res.sensitivity == {}
    # unknowable before the start is scored (if it missed: 13 sensitivities and a greedy run), dropped right after
    assert calls == [(0, 16, "FLOAT run on 2 images"), (1, 16, "all-int8 run on 2 images"), (2, 2, "done")]
    calls = []
    res = search(model, qmodel, images, target=0.7, max_layers=0, on_progress=lambda *c: calls.append(c))
    assert len(res.sensitivity) == 13 and len(res.curve) == 1 and not res.met     # no layer may be kept FLOAT
    assert [c[:2] for c in calls] == [(d, 15) for d in range(15)] + [(15, 15)]


def test_search_cancelled_mid_way_raises_and_changes_nothing(tiny, tiny_kl_pt):
    before_m, before_q = frozen_arrays(tiny), frozen_arrays(tiny_kl_pt)
    float_layers, meta = tiny_kl_pt.float_layers, dict(tiny_kl_pt.meta)
    calls, stop = [], threading.Event()

    def on_progress(done, total, what):
        calls.append(what)
        if what.startswith("sensitivity, layer 7 "):
            stop.set()                                   # Cancel clicked while layer 7's run goes on
    with pytest.raises(Cancelled):
        search(tiny, tiny_kl_pt, [sample("dog")], target=0.9, on_progress=on_progress, cancel=stop)
    assert calls[-1] == "sensitivity, layer 7 of 13: conv 12"          # stopped before the next run
    assert same_arrays(before_m, frozen_arrays(tiny)) and same_arrays(before_q, frozen_arrays(tiny_kl_pt))
    assert tiny_kl_pt.float_layers == float_layers and tiny_kl_pt.meta == meta

    def raising(done, total, what):                      # a progress callback may cancel by raising
        if done == 3:
            raise Cancelled("stop")
    with pytest.raises(Cancelled):
        search(tiny, tiny_kl_pt, [sample("dog")], target=0.9, on_progress=raising)
    assert same_arrays(before_q, frozen_arrays(tiny_kl_pt))
    assert not issubclass(Cancelled, EngineError)        # an `except EngineError` never swallows a cancel


def test_sim_vs_device_reports_each_layer_and_cancel_changes_nothing(tiny, tiny_q):
    x = tiny.preprocess(sample("dog")).x
    calls = []
    table = sim_vs_device(tiny, tiny_q, x, on_progress=lambda *c: calls.append(c))
    n = len(tiny.layers)
    _monotonic(calls)
    assert [c[1] for c in calls] == [3 + n] * len(calls)            # exact from the start
    assert [c[2] for c in calls[:4]] == [f"FLOAT run of {n} layers", f"INT run of {n} layers",
                                         "runtime run (profile qwidgets)", f"layer 1 of {n}: conv 0"]
    assert calls[9][2] == f"layer 7 of {n}: conv 6" and calls[-2][2] == f"layer {n} of {n}: yolo {n - 1}"
    assert len(table.rows) == n
    calls = []
    sim_vs_device(tiny, tiny_q, x, float_layers=[0], on_progress=lambda *c: calls.append(c))
    assert calls[0][1] == 2 + n and calls[2][2] == f"layer 1 of {n}: conv 0"     # no runtime run to try
    before_m, before_q = frozen_arrays(tiny), frozen_arrays(tiny_q)
    calls, stop = [], threading.Event()

    def on_progress(*c) -> None:
        calls.append(c)
        if c[2].startswith("layer 2 of"):
            stop.set()                       # Cancel clicked while layer 2's row is computed
    with pytest.raises(Cancelled, match=f"before layer 3 of {n}: conv 2"):
        sim_vs_device(tiny, tiny_q, x, on_progress=on_progress, cancel=stop)
    assert [c[0] for c in calls] == [0, 1, 2, 3, 4]
    assert same_arrays(before_m, frozen_arrays(tiny)) and same_arrays(before_q, frozen_arrays(tiny_q))


class _Flag:
    """Not an Event, but has is_set(): what a Manager's Event proxy or a home-made flag looks like."""

    def __init__(self) -> None:
        self.value = False

    def is_set(self) -> bool:
        return self.value


@pytest.mark.parametrize("make", [threading.Event, multiprocessing.Event, _Flag], ids=["threading", "mp", "is_set"])
def test_any_object_with_is_set_is_taken_as_an_event(make):
    # a multiprocessing.Event was called as a function: TypeError at the first unit
    stop = make()
    assert stop_hook(stop)() is False
    steps = Steps(3, None, stop)
    steps.start("a")
    if isinstance(stop, _Flag):
        stop.value = True
    else:
        stop.set()
    with pytest.raises(Cancelled, match="before b"):
        steps.start("b")


@pytest.mark.parametrize("bad", [True, "stop", 1, object()], ids=["bool", "str", "int", "object"])
def test_a_cancel_that_is_no_event_nor_callable_is_refused_before_any_work(tiny, tiny_q, bad):
    with pytest.raises(ArgumentError, match="expected None, an event .*is_set.* or a callable"):
        stop_hook(bad)
    calls = []
    with pytest.raises(ArgumentError, match=r"cancel="):
        search(tiny, tiny_q, [sample("dog")], on_progress=lambda *c: calls.append(c), cancel=bad)
    with pytest.raises(ArgumentError, match=r"cancel="):
        sim_vs_device(tiny, tiny_q, tiny.preprocess(sample("dog")).x, on_progress=lambda *c: calls.append(c),
                      cancel=bad)
    with pytest.raises(ArgumentError, match=r"cancel="):
        sensitivity(object(), cancel=bad)             # refused before the session is even looked at
    assert calls == []                                # not one unit started


def test_sim_vs_device_takes_a_multiprocessing_event(tiny, tiny_q):
    stop = multiprocessing.Event()
    stop.set()
    with pytest.raises(Cancelled, match="before FLOAT run"):
        sim_vs_device(tiny, tiny_q, tiny.preprocess(sample("dog")).x, cancel=stop)


@pytest.mark.parametrize("run", ["FLOAT run", "INT run"])
def test_sim_vs_device_cancel_is_asked_between_the_layers_of_a_run(tiny, tiny_q, run):
    # Cancel waited for a whole FLOAT or INT run of the network (one step): it stopped before the next step
    x = tiny.preprocess(sample("dog")).x
    before_m, before_q = frozen_arrays(tiny), frozen_arrays(tiny_q)
    calls, stop = [], threading.Event()

    def on_progress(done, total, what):
        calls.append(what)
        if what.startswith(run):
            stop.set()                         # Cancel clicked as the run starts: honoured after its first layer
    with pytest.raises(Cancelled, match=rf"between layers \(1 of {len(tiny.layers)} run\)"):
        sim_vs_device(tiny, tiny_q, x, on_progress=on_progress, cancel=stop)
    assert calls[-1].startswith(run)
    assert same_arrays(before_m, frozen_arrays(tiny)) and same_arrays(before_q, frozen_arrays(tiny_q))


def test_executor_run_and_forward_ask_cancel_between_layers(tiny, tiny_q):
    from engine.quant.executor import Executor
    x = tiny.preprocess(sample("dog")).x
    n, asked = len(tiny.layers), []

    def cancel() -> bool:
        asked.append(1)
        return len(asked) == 5
    with pytest.raises(Cancelled, match=rf"between layers \(5 of {n} run\)"):
        Executor(tiny, tiny_q, "int").run(x, cancel=cancel)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled, match=rf"between layers \(1 of {n} run\)"):
        Executor(tiny).forward(np.stack([x, x]), cancel=stop)     # a batch: each image's layers
    never = Executor(tiny, tiny_q, "int").run(x, cancel=threading.Event())[0]      # an event never set: every layer
    plain = Executor(tiny, tiny_q, "int").run(x)[0]
    assert len(never) == n and all(np.array_equal(a.float(), b.float()) for a, b in zip(never, plain))
    with pytest.raises(ArgumentError, match=r"cancel="):
        Executor(tiny).run(x, cancel="stop")


def _after_first_image_of(unit: str):
    """(on_progress, cancel): cancel answers False once the unit `unit` has started (its first image), then True."""
    state = {"started": False, "asked": 0}

    def on_progress(done, total, what):
        state["started"] = state["started"] or what.startswith(unit)

    def cancel() -> bool:
        if not state["started"]:
            return False
        state["asked"] += 1
        return state["asked"] > 1
    return on_progress, cancel


@pytest.mark.parametrize("unit", ["all-int8 run", "sensitivity, layer 1 "])
def test_search_cancel_is_asked_between_the_images_of_a_run(tiny, tiny_kl_pt, unit):
    # Cancel waited for a whole scored run over the image set (one unit)
    before_m, before_q = frozen_arrays(tiny), frozen_arrays(tiny_kl_pt)
    float_layers, meta = tiny_kl_pt.float_layers, dict(tiny_kl_pt.meta)
    on_progress, cancel = _after_first_image_of(unit)
    images = [sample("dog"), sample("horses"), sample("person")]
    with pytest.raises(Cancelled, match=r"between images \([01] of 3 started\)"):
        search(tiny, tiny_kl_pt, images, target=0.99, on_progress=on_progress, cancel=cancel)
    assert same_arrays(before_m, frozen_arrays(tiny)) and same_arrays(before_q, frozen_arrays(tiny_kl_pt))
    assert tiny_kl_pt.float_layers == float_layers and tiny_kl_pt.meta == meta


def test_scorer_cancel_is_asked_between_onnxruntime_batches(tiny, tiny_ort, monkeypatch):
    from engine.export import ort_backend
    from engine.quant.scoring import Scorer
    images = [sample("dog"), sample("horses"), sample("person")]
    scorer = Scorer(tiny, images, backend="onnxruntime")
    before_q = frozen_arrays(tiny_ort)
    monkeypatch.setattr(ort_backend, "BATCH", 1)             # one image per ORT batch: 3 batches
    asked = []

    def cancel() -> bool:
        asked.append(1)
        return len(asked) > 1                                # after the first batch
    with pytest.raises(Cancelled, match=r"between images \(1 of 3 started\)"):
        scorer.score(tiny_ort, "int", cancel=cancel)
    assert len(asked) == 2 and same_arrays(before_q, frozen_arrays(tiny_ort))
    stop = multiprocessing.Event()
    assert scorer.score(tiny_ort, "int", cancel=stop).map50 >= 0  # an event never set: the whole run
