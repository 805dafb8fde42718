"""IdentityMemo and the layer panel's remembered results: reused only for the very same tensors, never
after the session replaced them (an edit), and the reuse changes no byte of what is shown."""
from __future__ import annotations

import gc

import numpy as np

import engine
from engine.imaging.samples import sample
from qwidgets._memo import IdentityMemo
from qwidgets._session_panel import SessionPanelData


def test_identity_memo_reuses_only_the_same_live_object():
    memo, calls = IdentityMemo(size=2), []

    def f(a):
        calls.append(1)
        return float(a.sum())
    a = np.arange(4.0)
    assert memo.get([a], "sum", lambda: f(a)) == 6.0 and memo.get([a], "sum", lambda: f(a)) == 6.0
    assert len(calls) == 1 and memo.hits == 1
    b = a.copy()                                  # equal values, another tensor: computed again
    assert memo.get([b], "sum", lambda: f(b)) == 6.0 and len(calls) == 2
    assert memo.get([a], "other", lambda: 1) == 1 and len(calls) == 2        # `extra` is part of the key
    old_id = id(a)
    del a
    gc.collect()
    c = np.zeros(4)                               # may reuse the freed id: the weak reference tells them apart
    assert memo.get([c], "sum", lambda: f(c)) == 0.0
    assert len(memo._d) <= 2 and (id(c) != old_id or len(calls) == 3)


def test_panel_revisit_reuses_results_and_an_edit_recomputes(tiny, tiny_q):
    s = engine.Session(tiny, tiny_q, mode="int", image=sample("dog"))
    s.run_to(4)
    panel = SessionPanelData(s)
    first = panel.data("3")
    misses = panel.memo.misses
    again = panel.data("3")
    assert panel.memo.misses == misses and panel.memo.hits > 0          # nothing recomputed
    assert again[1] == first[1] and again[2] == first[2]
    # a fresh panel (no memo) draws the very same bytes
    assert SessionPanelData(s).data("3")[1] == first[1]
    # Step: layer 4's input is layer 3's output, already counted and drawn
    panel.data("4")
    # an edit re-executes layers 2..4: new tensors, so nothing remembered matches (no invalidate() needed
    # for layer 3, which has no weights of its own)
    w = s.weights(2, "int8")["w_q"][0]
    s.edit_weights(2, (0, 0), np.clip(w[0] + 40, -127, 127), target="int8")
    s.rerun()
    after = panel.data("3")
    assert after[1]["hist_output"] != first[1]["hist_output"]
    assert after[2] != first[2]


def test_warm_ahead_gives_the_panel_a_cold_panel_draws_and_saves_its_float_work(tiny, tiny_q):
    s = engine.Session(tiny, tiny_q, mode="int", image=sample("dog"))
    s.run_to(3)
    warm, cold = SessionPanelData(s), SessionPanelData(s)
    for i in range(s.num_layers):
        warm.warm(str(i))
    ahead = warm.memo.misses
    # a visited layer (its run side is new), the next one a Step reaches, and a big layer never run
    for node in ("2", "4", "12"):
        hot, fresh = warm.data(node), cold.data(node)
        assert hot[1] == fresh[1] and hot[2] == fresh[2] and hot[0] == fresh[0], node
    assert (12, True, False, False) in warm._weights            # layer 12's 4.7 M weights: counted ahead
    # the FLOAT side (output picture, row, counts) came from the warm-up: fewer misses than the cold panel
    assert warm.memo.misses - ahead < cold.memo.misses
    # a rerun after an edit: results of the new tensors are computed, never the warmed old ones reused
    w = s.weights(2, "int8")["w_q"][0]
    s.edit_weights(2, (0, 0), np.clip(w[0] + 40, -127, 127), target="int8")
    s.rerun()
    warm.invalidate()
    for i in range(s.num_layers):
        warm.warm(str(i))
    assert warm.data("3")[1:] == SessionPanelData(s).data("3")[1:]


def test_explorer_warms_in_the_background_only_while_the_user_is_idle(tiny, tiny_q, monkeypatch):
    import asyncio
    import time

    import qwidgets.explorer as explorer_module
    from qwidgets import Explorer
    from qwidgets._sync import _held, _last_active
    monkeypatch.setattr(explorer_module, "WARM_IDLE", 0.3)

    async def run():
        ex = Explorer(engine.Session(tiny, tiny_q, "int"), background=True)
        data, pieces = ex._panel_data, []
        for name in ("warm", "thresholds"):
            f = getattr(data, name)
            # a piece of the warm-up runs outside every handler (the panel's own calls run inside one)
            monkeypatch.setattr(data, name, lambda *a, f=f, **k: (
                ex.session in _held or pieces.append(time.monotonic()), f(*a, **k))[1])
        ex.controls.step_button.click()
        # when the click's handler ended (the idle time counts from there): a time taken here, after the
        # followers' updates, could be later than a piece started WARM_IDLE after that end (CI: preempted)
        clicks = [_last_active[ex.session]]
        while len(pieces) < 10:
            await asyncio.sleep(0.02)
        ex.controls.step_button.click()            # mid-way: the warm-up pauses again
        clicks.append(_last_active[ex.session])
        convs = [i for i, layer in enumerate(tiny.layers) if layer.kind == "convolutional"]
        for _ in range(3000):
            if all((i, True, False, False) in data._weights for i in convs):
                break
            await asyncio.sleep(0.02)
        ex.close()
        return ex, data, pieces, clicks, convs

    ex, data, pieces, clicks, convs = asyncio.run(run())
    assert all((i, True, False, False) in data._weights for i in convs)
    for t in clicks:
        assert not [p for p in pieces if t < p < t + 0.3], "a warm-up piece ran right after a click"
    assert min(pieces) >= clicks[0] + 0.3
    # what the warm-up left behind draws the same panel as a cold one
    assert data.data("12")[1:] == SessionPanelData(ex.session).data("12")[1:]


def test_an_int8_edit_forgets_only_its_layer_and_the_panel_stays_equal_to_a_cold_one(tiny, tiny_q):
    s = engine.Session(tiny, tiny_q, mode="int", image=sample("dog"))
    s.run_to(4)
    panel = SessionPanelData(s)
    for node in ("2", "3", "4", "12"):
        panel.data(node)
    kept12, old2 = panel._weights[(12, True, False, False)], panel._weights[(2, True, False, False)]
    w = s.weights(2, "int8")["w_q"][0]
    edit = s.edit_weights(2, (0, 0), np.clip(w[0] + 40, -127, 127), target="int8")
    s.rerun()
    panel.invalidate([edit])
    for node in ("2", "3", "4", "12"):
        assert panel.data(node)[1:] == SessionPanelData(s).data(node)[1:], node
    assert panel._weights[(12, True, False, False)] is kept12               # another layer: kept
    assert panel._weights[(2, True, False, False)] != old2                  # the edited layer: drawn again
    # a FLOAT edit changes the FLOAT reference: everything is recomputed, and equal to a cold panel again
    fw = s.weights(4, "float")["weights"][0]
    edit = s.edit_weights(4, (0, 0), fw[0] * 3, target="float")
    s.rerun()
    panel.invalidate([edit])
    for node in ("3", "4", "12"):
        assert panel.data(node)[1:] == SessionPanelData(s).data(node)[1:], node


def test_warm_ahead_covers_every_float_input_picture_row_and_counts(tiny, tiny_q, monkeypatch):
    """After the warm-up a FLOAT panel computes nothing from tensors but its histogram picture: input and
    output pictures, rows and counts were ready, a route's or shortcut's joined inputs too."""
    s = engine.Session(tiny, tiny_q, mode="float", image=sample("dog"))
    warm = SessionPanelData(s)
    for i in range(s.num_layers):
        warm.warm(str(i))
    computed: list = []
    get = warm.memo.get
    monkeypatch.setattr(warm.memo, "get", lambda tokens, extra, compute: get(
        tokens, extra, lambda: (computed.append(extra), compute())[1]))
    joined = [i for i in range(s.num_layers) if len(tiny.layers[i].inputs) > 1]
    assert joined
    for node in ["0", "5", str(s.num_layers - 1), *map(str, joined)]:
        computed.clear()
        data = warm.data(node)
        assert [e for e in computed if not (isinstance(e, tuple) and e[0] == "hist png")] == [], node
        assert data[1:] == SessionPanelData(s).data(node)[1:], node
