"""`auto` (per-tensor method chosen by the error at the heads) and the accuracy-aware mixed-precision
search, on real yolov3-tiny and the shared photos; the CLI options that expose them."""
from __future__ import annotations

import subprocess
import sys

import pytest

from engine.calib import make
from engine.calib.auto import CANDIDATES
from engine.quant.autoquant import head_error, quantize
from engine.calib.collect import quantizable_ids
from engine.errors import EngineError
from engine.quant.executor import head_feeders
from engine.quant.mixed import search
from engine.quant.qmodel import QuantizedModel, quantize_model
from engine.quant.scoring import Scorer
from helpers import IMAGES, ROOT, TINY_CFG, TINY_WEIGHTS

DOG, HORSES = IMAGES / "dog.jpg", IMAGES / "horses.jpg"


def test_auto_picks_per_tensor_and_never_does_worse_than_its_start(tiny, tiny_stats):
    qm = quantize(tiny, tiny_stats, "auto", per_channel=True, images=[DOG], candidates="minmax,kl,mse",
                        probe_images=1)
    choice = qm.meta["auto"]
    assert set(choice) == set(quantizable_ids(tiny)) and set(choice.values()) <= {"minmax", "kl", "mse"}
    x = tiny.preprocess(DOG).x
    feeders = sorted(head_feeders(tiny))
    outs = tiny.forward(x)
    ref = [{i: outs[i] for i in feeders}]
    start = quantize_model(tiny, tiny_stats, "minmax", per_channel=True)
    assert head_error(tiny, qm, [x], ref, feeders) <= head_error(tiny, start, [x], ref, feeders)
    for nid, m in choice.items():                      # each tensor carries its chosen method's threshold
        assert qm.thresholds[nid] == quantize_model(tiny, tiny_stats, m, per_channel=True).thresholds[nid]
    assert qm.method == "auto" and qm.describe().startswith("auto(")
    with pytest.raises(EngineError, match="images="):
        quantize(tiny, tiny_stats, "auto")
    with pytest.raises(EngineError, match="autoquant"):
        quantize_model(tiny, tiny_stats, "auto")
    with pytest.raises(EngineError, match="auto candidates"):
        quantize(tiny, tiny_stats, "auto", images=[DOG], candidates="minmax,nope")
    assert tuple(make("auto").candidates) == CANDIDATES


def test_auto_probes_its_images_resized_as_the_calibration_was(tiny, tiny_stats, monkeypatch):
    """compare / quantize --resize stretch calibrate on stretched images: auto's probes are stretched too (they
    were letterboxed whatever the resize, so the head errors it ranks were another input's)."""
    import engine.quant.autoquant as aq
    seen, real = [], aq.network_input
    monkeypatch.setattr(aq, "network_input", lambda m, x, resize="letterbox": seen.append(resize) or real(m, x, resize))
    quantize(tiny, tiny_stats, "auto", per_channel=True, images=[DOG], candidates="minmax,mse", probe_images=1,
             resize="stretch")
    assert seen == ["stretch"]


@pytest.fixture(scope="module")
def bad_q(tiny, tiny_stats):
    """|x| KL per tensor without the calibration rules: loses detections, so there is something to fix."""
    return quantize_model(tiny, tiny_stats, "kl", rules=(), clip_max=1)


def test_mixed_search_meets_its_target_with_few_float_layers(tiny, bad_q, tmp_path):
    scorer = Scorer(tiny, [DOG, HORSES])
    base = scorer.score(bad_q, "int")
    assert base.map50_95 < 0.4
    res = search(tiny, bad_q, scorer, target=0.6, max_lost=5)
    assert res.met and 0 < len(res.curve) - 1 < 13
    assert res.curve[0].added is None and res.curve[0].map50_95 == base.map50_95
    assert [p.layers_float for p in res.curve] == list(range(len(res.curve)))
    final = scorer.score(bad_q, "int", res.float_layers)            # the curve's last point, re-measured
    assert (final.map50_95, final.missed) == (res.curve[-1].map50_95, res.curve[-1].lost)
    assert final.map50_95 >= 0.6 and final.missed <= 5
    assert all(p.map50_95 < 0.6 or p.lost > 5 for p in res.curve[:-1])   # it stopped at the first success
    first = res.curve[1].added
    assert res.sensitivity[first] == max(res.sensitivity.values())
    out = res.apply(bad_q)
    out.save(tmp_path / "m.npz")
    back = QuantizedModel.load(tmp_path / "m.npz")
    assert back.float_layers == res.float_layers and back.meta["mixed_precision"]["met"] is True
    with pytest.raises(EngineError, match="target"):
        search(tiny, bad_q, scorer, target=1.5)


def test_cli_quantize_auto_prints_its_choice_and_mixed_options(tmp_path):
    out = tmp_path / "q.npz"
    res = subprocess.run([sys.executable, "-m", "engine", "quantize", str(TINY_CFG), "--weights", str(TINY_WEIGHTS),
                          "--calib", str(DOG), "--method", "auto", "--settings", '{"candidates": "minmax,kl"}',
                          "--per-channel", "--quiet", "-o", str(out)], capture_output=True, text=True, cwd=ROOT,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    assert "auto chose: " in res.stderr and QuantizedModel.load(out).meta["auto"]["0"] in ("minmax", "kl")
    res = subprocess.run([sys.executable, "-m", "engine", "quantize", str(TINY_CFG), "--weights", str(TINY_WEIGHTS),
                          "--calib", str(DOG), "--target-map", "0.9", "-o", str(out)], capture_output=True,
                         text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 2 and "--target-map and --val go together" in res.stderr
    res = subprocess.run([sys.executable, "-m", "engine", "quantize", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert "default: minmax" in " ".join(res.stdout.split())


def test_cli_target_map_table_counts_the_layers_it_lists(tmp_path, capsys):
    # a step keeps a conv and the maxpool after it FLOAT: the table's only count was the steps ("FLOAT layers"
    # 1, 2, 3) while the list under it named more layers ([0, 1, 2, 3, 15])
    import re
    from engine.cli.main import main
    out = tmp_path / "m.npz"
    assert main(["quantize", str(TINY_CFG), "--weights", str(TINY_WEIGHTS), "--calib", str(IMAGES), "--method", "kl",
                 "--settings", '{"clip_max": 1}', "--no-rules", "--quiet", "--target-map", "0.9", "--val", str(DOG), "-o", str(out)]) == 0
    lines = capsys.readouterr().err.splitlines()
    head = next(k for k, line in enumerate(lines) if line.split()[:3] == ["weight", "layers", "FLOAT"])
    assert "all layers FLOAT" in lines[head] and lines[head].endswith("layers added")
    rows = [line.split(None, 6) for line in lines[head + 1:] if re.match(r"\s+\d", line)]
    final = next(line for line in lines if line.startswith("target mAP@[.5:.95] >= 0.9"))
    listed = [int(i) for i in re.search(r"float_layers = \[([\d, ]*)\]", final).group(1).split(",")]
    assert final.endswith(f"({len(listed)} layers)")
    curve = QuantizedModel.load(out).meta["mixed_precision"]["curve"]
    assert len(rows) == len(curve) >= 2 and rows[0][6] == "-"
    counted, seen = 0, []
    for row, p in zip(rows, curve):
        assert set(p) >= {"layers_float", "added", "map50_95", "map50", "lost", "extra"}        # the old keys stay
        assert int(row[0]) == p["layers_float"] and int(row[1]) == p["float_count"] == counted + len(p["added_layers"])
        names = row[6].split(", ") if p["added"] is not None else []
        assert [int(n.split()[-1]) for n in names] == p["added_layers"] and p["added"] in p["added_layers"] + [None]
        counted, seen = p["float_count"], seen + p["added_layers"]
    assert counted == len(listed) and sorted(seen) == listed
    assert any(n.startswith("maxpool") for row in rows for n in row[6].split(", "))   # the case the count missed
