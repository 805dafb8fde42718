"""Every shared cfg loads with random weights of the exact file size and runs; shapes follow Darknet.

The expected shapes are recomputed here from Darknet's formulas (darknet-semantics.md B.4),
independently of the engine's layer code.
"""
from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.darknet.cfg import read_cfg
from helpers import CFG_DIR

ALL_CFGS = sorted(p.name for p in CFG_DIR.glob("*.cfg"))


def darknet_shapes(cfg_path):
    """Output shape of every layer by Darknet's formulas, from the raw cfg options."""
    cfg = read_cfg(cfg_path)
    opt = lambda s, k, d: s.options[k][0] if k in s.options else d  # noqa: E731
    c, h, w = int(opt(cfg.net, "channels", 3)), int(opt(cfg.net, "height", 0)), int(opt(cfg.net, "width", 0))
    shapes = []
    for i, s in enumerate(cfg.layers):
        if s.name == "convolutional":
            k, st = int(opt(s, "size", 1)), int(opt(s, "stride", 1))
            p = k // 2 if int(opt(s, "pad", 0)) else int(opt(s, "padding", 0))
            c, h, w = int(opt(s, "filters", 1)), (h + 2 * p - k) // st + 1, (w + 2 * p - k) // st + 1
        elif s.name == "maxpool":
            st = int(opt(s, "stride", 1))
            k = int(opt(s, "size", st))
            p = int(opt(s, "padding", k - 1))
            h, w = (h + p - k) // st + 1, (w + p - k) // st + 1
        elif s.name == "avgpool":
            h = w = 1
        elif s.name == "route":
            refs = [int(v) for v in opt(s, "layers", "").split(",") if v]
            idx = [i + r if r < 0 else r for r in refs]
            g = int(opt(s, "groups", 1))
            c = sum(shapes[j][0] // g for j in idx)
            h, w = shapes[idx[0]][1:]
        elif s.name == "upsample":
            st = int(opt(s, "stride", 2))
            h, w = h * st, w * st
        elif s.name == "reorg":
            st = int(opt(s, "stride", 1))
            c, h, w = c * st * st, h // st, w // st
        elif s.name == "connected":
            c, h, w = int(opt(s, "output", 1)), 1, 1
        elif s.name == "crop":
            h, w = int(opt(s, "crop_height", 1)), int(opt(s, "crop_width", 1))
        shapes.append((c, h, w))  # shortcut, yolo, region, softmax, dropout, detection, cost: unchanged
    return shapes


@pytest.mark.parametrize("name", ALL_CFGS)
def test_cfg_loads_with_exact_size_random_weights_and_runs(name, tmp_path):
    cfg = CFG_DIR / name
    model = engine.load(cfg, random_weights=0)
    assert [n.out_shape for n in model.graph] == darknet_shapes(cfg)
    weights = tmp_path / "r.weights"
    model.save_weights(weights)
    assert weights.stat().st_size == 20 + 4 * model.graph.total_params
    reloaded = engine.load(cfg, weights=weights)
    x = np.random.default_rng(1).random(model.input_shape, dtype=np.float32)
    outs = reloaded.forward(x)
    assert len(outs) == len(model.layers)
    for i, (y, node) in enumerate(zip(outs, model.graph)):
        assert y.shape == node.out_shape, f"{name} layer {i}"
        assert y.dtype == np.float32 and np.isfinite(y).all(), f"{name} layer {i} not finite"


def test_known_darknet_shapes():
    def shape(name, i):
        return engine.load(CFG_DIR / name, random_weights=0).graph.node(i).out_shape
    assert shape("yolov4-tiny.cfg", 3) == (32, 104, 104)          # route groups=2 group_id=1: second half
    assert shape("alexnet.cfg", 1) == (96, 27, 27)                # maxpool 3/2 padding=0: 55 -> 27
    assert shape("yolov2.cfg", 27) == (256, 19, 19)               # reorg stride 2 of 64x38x38
    assert shape("yolov3-tiny.cfg", 11) == (512, 13, 13)          # maxpool 2/1 keeps 13x13


def test_graph_exports_to_networkx():
    g = engine.load(CFG_DIR / "yolov3-tiny.cfg", random_weights=0).graph.to_networkx()
    assert g.number_of_nodes() == 25
    assert set(g.predecessors("20")) == {"19", "8"} and set(g.predecessors("17")) == {"13"}
    assert g.nodes["12"]["macs"] == 797_442_048
