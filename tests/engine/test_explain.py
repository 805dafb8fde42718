"""Detection diff and 'why was it lost' (engine/quant/explain.py) on yolov3-tiny quantized with kl per tensor,
which loses detections on the shared photos. Fixes are checked with the detect CLI, recoveries with an
independent full INT run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine.cli.main import main
from engine.darknet.detect import detect_outputs
from engine.quant.executor import Executor
from engine.quant.explain import Explainer, is_back, loss, match_detections
from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS


def iou_np(a: dict, b: dict) -> float:
    a = np.array([a["x1"], a["y1"], a["x2"], a["y2"]])
    b = np.array([b["x1"], b["y1"], b["x2"], b["y2"]])
    wh = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None)
    inter = wh.prod()
    return float(inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter))


@pytest.fixture(scope="module")
def horses(tiny, tiny_kl_pt):
    pre = tiny.preprocess(IMAGES / "horses.jpg", "letterbox")
    e = Explainer(tiny, tiny_kl_pt, "int", pre)
    return e, e.explain_all()


@pytest.fixture(scope="module")
def kl_file(tiny_kl_pt, tmp_path_factory):
    return str(tiny_kl_pt.save(tmp_path_factory.mktemp("q") / "tiny_kl_pt.npz"))


def test_match_statuses_follow_iou_and_class():
    from engine.darknet.detect import Detection

    def det(c, x1, score=0.5):
        return Detection(c, f"c{c}", score, score, 0, 0, 0, 0, x1, 0.0, x1 + 10.0, 10.0)
    f = [det(0, 0), det(0, 100), det(1, 200), det(2, 300, 0.4)]
    r = [det(0, 0.2), det(0, 103), det(2, 300), det(5, 500)]      # IoU 0.96, 0.54, -, same box other class
    d = match_detections(f, r)
    assert [m.status for m in d.matches] == ["matched", "shifted", "lost", "matched"]
    assert d.matches[1].iou == pytest.approx(7 / 13) and d.matches[2].other is None
    assert [o.class_id for o in d.extra] == [5] and d.counts() == {"matched": 2, "shifted": 1, "lost": 1, "extra": 1}


def test_fix_of_a_lost_detection_needs_a_box_of_its_own_not_its_neighbours(monkeypatch):
    # issue 14 QA (docs/quantization.md, round 13): dog:r4-7 of random_variants seed 4. FLOAT keeps two trucks
    # (.2607, .2525) whose boxes overlap at IoU .35; INT flips an NMS tie and keeps one box between them,
    # at IoU >= .5 with both. The pairing gives it to the first truck and calls the second lost, yet the
    # second passed `is_back` in that very run, so the first culprit tried was returned as its "fix" (and
    # "verified") whether or not it brought a box back. Here layer 3 alone leaves the run as it was.
    from types import SimpleNamespace

    import engine.quant.explain as explain
    from engine.darknet.detect import Detection

    def det(x1, score):
        return Detection(7, "truck", score, score, 0, 0, 0, 0, x1, 0.0, x1 + 10.0, 10.0)
    first, second = det(0.0, 0.2607), det(6.0, 0.2525)      # IoU 4 / 16 = .25: both stand in FLOAT
    between = det(3.0, 0.347)                                # IoU 7 / 13 = .54 with each
    runs = {(): [between], (3,): [between], (5,): [between], (3, 5): [det(0.1, 0.30), det(6.1, 0.27)]}

    class Run:                                               # a full run with these layers FLOAT: its detections
        def __init__(self, model, qmodel, mode, layers):
            self.layers = tuple(sorted(layers))

        def forward(self, x):
            return self.layers
    monkeypatch.setattr(explain, "Executor", Run)
    monkeypatch.setattr(explain, "detect_outputs", lambda model, outs, pre, thresh, nms: runs[outs])
    e = Explainer.__new__(Explainer)
    e.model = e.qmodel = None
    e.mode, e.pre, e.thresh, e.nms, e.base = "int", SimpleNamespace(x=None), 0.25, 0.45, frozenset()
    e.float_dets, e.dets = [first, second], [between]
    e._runs = {frozenset(k): (v, v) for k, v in runs.items()}
    lost = e.diff().matches[1]
    assert lost.status == "lost" and lost.det == second and is_back(second, [between])
    assert e.fix(lost, [(3, 0.9), (5, 0.4)]) == [3, 5]      # was [3]
    assert e.fix(lost, [(3, 0.9)]) is None                   # was [3]: layer 3 alone does not bring it back
    shifted = e.diff().matches[0]                            # a shifted one: a same-class box at IoU >= .5
    assert shifted.status == "shifted" and e.fix(shifted, [(3, 0.9), (5, 0.4)]) == [3]
    assert not explain.brings_back(lost, e.float_dets, [between])
    assert explain.brings_back(lost, e.float_dets, runs[(3, 5)])


def test_a_lost_detection_reports_the_iou_of_a_box_another_detection_took():
    # mosaic2-1 of second_variants (best configuration, round 13): `explain` printed "bicycle 0.28: lost
    # (IoU 0.00)" while INT had a bicycle box at IoU .73 over it, paired with another FLOAT bicycle
    from engine.darknet.detect import Detection

    def det(x1, score):
        return Detection(1, "bicycle", score, score, 0, 0, 0, 0, x1, 0.0, x1 + 10.0, 10.0)
    d = match_detections([det(0.0, 0.42), det(6.0, 0.28)], [det(3.0, 0.44)])
    assert [m.status for m in d.matches] == ["shifted", "lost"]
    assert d.matches[1].iou == pytest.approx(7 / 13) and d.matches[1].other is None
    assert match_detections([det(0.0, 0.42)], [det(20.0, 0.5)]).matches[0].iou == 0.0


def test_culprits_are_ranked_and_recovery_is_true_to_a_full_run(tiny, tiny_kl_pt, horses):
    e, (explanations, _extra) = horses
    explained = [x for x in explanations if x.match.status != "matched"]
    assert any(x.match.status == "lost" for x in explained)
    for x in explained:
        recs = [r for _, r in x.ranking]
        assert recs == sorted(recs, reverse=True) and len(recs) == len(e.candidates)
    x = max(explained, key=lambda x: x.ranking[0][1])
    layer, rec = x.culprits[0]
    assert rec > 0.05
    # independent: the whole network again with that one layer FLOAT (no reuse of the INT prefix)
    outs = Executor(tiny, tiny_kl_pt, "int", [layer]).forward(e.pre.x)
    base = Executor(tiny, tiny_kl_pt, "int").forward(e.pre.x)
    d = x.match.det
    low = [detect_outputs(tiny, o, e.pre, 0.01, 0.45) for o in (base, outs)]
    assert rec == pytest.approx((loss(d, low[0]) - loss(d, low[1])) / loss(d, low[0]), abs=1e-12)


def test_fix_brings_the_detection_back_in_the_detect_cli(horses, kl_file, capsys):
    e, (explanations, _extra) = horses
    fixed = [x for x in explanations if x.match.status in ("lost", "shifted") and x.fix]
    assert any(x.match.status == "lost" for x in fixed)
    for x in fixed:
        assert set(x.fix) <= set(e.candidates) and len(x.fix) <= 6
        rc = main(["detect", str(TINY_CFG), "--weights", str(TINY_WEIGHTS), "--quantized", kl_file, "--mode", "int",
                   "--float-layers", ",".join(map(str, x.fix)), "--json", str(IMAGES / "horses.jpg")])
        assert rc == 0
        dets = json.loads(capsys.readouterr().out)["images"]["horses.jpg"]["detections"]
        d = x.match.det.to_dict()
        assert any(o["class_id"] == d["class_id"] and iou_np(o, d) >= 0.5 for o in dets), (x.fix, d)


def test_explain_cli_contract_and_its_fixes_hold_in_detect(kl_file, capsys):
    """The issue's contract, key for key; every fix it prints brings its detection back in `detect`."""
    rc = main(["explain", str(TINY_CFG), "--weights", str(TINY_WEIGHTS), "--quantized", kl_file,
               "--image", str(IMAGES / "dog.jpg"), "--mode", "int", "--top", "3", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"image", "detections", "extra"} and doc["image"] == "dog.jpg"
    keys = {"class_id", "name", "score", "x1", "y1", "x2", "y2", "status", "iou", "int_score", "culprits", "fix"}
    assert doc["detections"] and all(set(d) == keys for d in doc["detections"])
    statuses = {d["status"] for d in doc["detections"]}
    assert statuses <= {"matched", "shifted", "lost"} and "lost" in statuses
    for d in doc["detections"]:
        if d["status"] == "matched":
            assert d["culprits"] == [] and d["fix"] is None and d["iou"] >= 0.9
            continue
        assert 1 <= len(d["culprits"]) <= 3 and set(d["culprits"][0]) == {"layer", "recovery"}
        recs = [c["recovery"] for c in d["culprits"]]
        assert recs == sorted(recs, reverse=True)
        assert (d["int_score"] is None) == (d["status"] == "lost")
    fixed = [d for d in doc["detections"] if d["fix"]]
    assert fixed
    for d in fixed:
        assert main(["detect", str(TINY_CFG), "--weights", str(TINY_WEIGHTS), "--quantized", kl_file, "--mode",
                     "int", "--float-layers", ",".join(map(str, d["fix"])), "--json", str(IMAGES / "dog.jpg")]) == 0
        found = json.loads(capsys.readouterr().out)["images"]["dog.jpg"]["detections"]
        assert any(o["class_id"] == d["class_id"] and iou_np(o, d) >= 0.5 for o in found), d


def test_session_explain_one_detection_and_bad_arguments(tiny, tiny_kl_pt, horses):
    import engine
    from engine.errors import EngineError
    s = engine.Session(tiny, tiny_kl_pt, "int", image=IMAGES / "horses.jpg")
    s.run()
    diff = s.detection_diff()
    e, (explanations, _extra) = horses
    assert [m.status for m in diff.matches] == [x.match.status for x in explanations]
    k = next(i for i, m in enumerate(diff.matches) if m.status == "lost")
    seen = []
    x = s.explain(k, on_progress=lambda done, total: seen.append((done, total)))
    assert x.culprits == explanations[k].culprits and x.fix == explanations[k].fix
    assert seen[-1][0] == seen[-1][1] == len(x.ranking) == len(e.candidates)
    with pytest.raises(EngineError, match="detections 0..6"):
        s.explain(99)
    s.set_mode("float")
    with pytest.raises(EngineError, match="INT or HYBRID"):
        s.explain(0)


def test_layers_that_recover_nothing_are_not_listed_as_culprits(tiny, horses, kl_file, capsys):
    # `explain --top 5` listed "culprits 0 (0%), 1 (0%), 2 (0%), 3 (0%), 4 (0%)" for the lost cows of the horses
    # photo (no single layer recovers any of them) and maxpools at 0% among the top culprits elsewhere
    e, (explanations, _extra) = horses
    args = ["explain", str(TINY_CFG), "--weights", str(TINY_WEIGHTS), "--quantized", kl_file,
            "--image", str(IMAGES / "horses.jpg"), "--top", "5"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == len(explanations) and not any("(0%)" in line or "(-" in line for line in lines), lines
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert all(c["recovery"] > 0 for d in doc["detections"] for c in d["culprits"])
    explained = [x for x in explanations if x.match.status != "matched"]
    for x in explained:
        assert x.culprits == [(i, r) for i, r in x.ranking if r > 0]
        assert sorted(x.no_effect + [i for i, _ in x.culprits]) == sorted(e.candidates)
    spread = [x for x in explained if not x.culprits]
    assert spread and all(x.fix for x in spread)          # nothing to blame alone, yet the fix set brings them back
    assert any(tiny.layers[i].kind == "maxpool" for x in explained for i in x.no_effect)
    for d, x in zip(doc["detections"], explanations):
        assert [(c["layer"], c["recovery"]) for c in d["culprits"]] == x.culprits[:5]
    for line, x in zip(lines, explanations):
        if x.match.status == "matched":
            assert "culprits" not in line and "recovers" not in line
        elif x.culprits:
            assert f"; culprits {x.culprits[0][0]} (" in line and f"; fix: keep {x.fix} FLOAT" in line
        else:
            assert f"; no single layer recovers any of it (the error is spread); fix: keep {x.fix} FLOAT" in line


def test_explain_cli_refuses_a_missing_image(kl_file, capsys):
    rc = main(["explain", str(TINY_CFG), "--weights", str(TINY_WEIGHTS), "--quantized", kl_file,
               "--image", "/nonexistent/x.jpg", "--json"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "/nonexistent/x.jpg" in err and "Traceback" not in err


def test_head_errors_split_each_anchor_into_its_parts(tiny, tiny_kl_pt):
    """x/y, w/h, objectness and class SQNR per anchor, checked against a direct float64 computation."""
    from engine.quant.heads import PARTS, head_errors
    pre = tiny.preprocess(IMAGES / "horses.jpg", "letterbox")
    ref = tiny.forward(pre.x)
    run = Executor(tiny, tiny_kl_pt, "int").forward(pre.x)
    rows = head_errors(tiny, ref, run)
    heads = [i for i, layer in enumerate(tiny.layers) if layer.kind == "yolo"]
    assert sorted({r.layer for r in rows}) == heads and len(rows) == len(heads) * 3 * len(PARTS)
    slot2 = tiny.layers[heads[1]].mask[2]
    r = next(r for r in rows if r.layer == heads[1] and r.part == "objectness" and r.anchor == slot2)
    a = 2 * (85) + 4                                     # anchor slot 2 of the head, channel 4 = objectness
    f, q = ref[heads[1]][a].astype(np.float64), run[heads[1]][a].astype(np.float64)
    assert r.sqnr_db == pytest.approx(10 * np.log10((f * f).sum() / ((q - f) ** 2).sum()), rel=1e-9)
    assert r.anchor_wh == tuple(float(v) for v in tiny.layers[heads[1]].anchors[2 * r.anchor:2 * r.anchor + 2])


def test_rank_images_puts_the_worst_agreement_first(tiny, tiny_kl_pt):
    from engine.quant.worst_images import rank_images
    images = sorted(IMAGES.glob("*.jpg"))
    rows = rank_images(tiny, tiny_kl_pt, "int", images)
    assert [r.map50 for r in rows] == sorted(r.map50 for r in rows) and len(rows) == len(images)
    by_name = {r.name: r for r in rows}
    assert by_name["scream.jpg"].n_float == 0 and by_name["scream.jpg"].map50 == 1.0
    # independent count for one image: FLOAT boxes with no same-class INT box at IoU >= 0.5 are lost
    pre = tiny.preprocess(IMAGES / "horses.jpg", "letterbox")
    f = [d.to_dict() for d in detect_outputs(tiny, tiny.forward(pre.x), pre, 0.25, 0.45)]
    q = [d.to_dict() for d in detect_outputs(tiny, Executor(tiny, tiny_kl_pt, "int").forward(pre.x), pre, 0.25, 0.45)]
    lost = sum(not any(o["class_id"] == d["class_id"] and iou_np(o, d) >= 0.5 for o in q) for d in f)
    assert by_name["horses.jpg"].lost == lost and by_name["horses.jpg"].n_float == len(f)


def test_rank_images_on_a_backend_in_batches_equals_one_pass(tiny, tiny_kl_pt):
    """engine.scale.worst.rank_images on a backend, in batches of 2 (each task numbers its batch from 0): the
    rows of one pass in this process, every image at its own place in the list; progress once per batch."""
    from engine.quant.worst_images import rank_images
    from engine.scale.backends import InProcess
    from engine.scale.worst import rank_images as rank_on
    images = sorted(IMAGES.glob("*.jpg"))[:3] + [str(IMAGES / "dog.jpg")]    # the dog twice: one name, two places
    ticks = []
    rows = rank_on(tiny, tiny_kl_pt, "int", images, backend=InProcess(), batch_size=2,
                   on_progress=lambda done, total: ticks.append((done, total)))
    assert [r.to_dict() for r in rows] == [r.to_dict() for r in rank_images(tiny, tiny_kl_pt, "int", images)]
    assert sorted(r.index for r in rows) == [0, 1, 2, 3] and ticks == [(2, 4), (4, 4)]
    dogs = [r for r in rows if r.name == "dog.jpg"]
    assert sorted(r.index for r in dogs) == [0, 3]
    assert {**dogs[0].to_dict(), "index": 0} == {**dogs[1].to_dict(), "index": 0}
