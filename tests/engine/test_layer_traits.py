"""The kind traits the calibration rules and cross-layer equalization read (`keeps_scale`, `passes_sign`,
`commutes_channel_scale` on the layer classes) hold for what each layer computes: checked on the float
forward of one-layer networks with random inputs, for every layer type that claims them and for some
that must not."""
from __future__ import annotations

import numpy as np
import pytest

import engine

SECTIONS = {
    "maxpool": "[maxpool]\nsize=2\nstride=2\n",
    "maxpool 3/1": "[maxpool]\nsize=3\nstride=1\n",
    "dropout": "[dropout]\nprobability=.5\n",
    "upsample": "[upsample]\nstride=2\n",
    "upsample x0.5": "[upsample]\nstride=2\nscale=0.5\n",
    "reorg": "[reorg]\nstride=2\n",
    "reorg3d": "[reorg3d]\nstride=2\n",
    "route": "[route]\nlayers=-1\n",
    "avgpool": "[avgpool]\n",
    "shortcut": "[shortcut]\nfrom=-1\nactivation=linear\n",
    "conv": "[convolutional]\nfilters=4\nsize=1\nstride=1\npad=0\nactivation=leaky\n",
}


def one_layer(tmp_path, name: str):
    """Input -> conv 1x1 linear -> the layer under test; returns (model, the layer's index)."""
    head = "[net]\nwidth=8\nheight=8\nchannels=4\n\n[convolutional]\nfilters=4\nsize=1\nstride=1\npad=0\nactivation=linear\n\n"
    cfg = tmp_path / "t.cfg"
    cfg.write_text(head + SECTIONS[name])
    model = engine.load(cfg, random_weights=3)
    return model, len(model.layers) - 1


def run(model, index: int, x1: np.ndarray) -> np.ndarray:
    """The layer's float output when layer 0 outputs x1 (the first layer's output substituted)."""
    layer = model.layers[index]
    ins = [x1 for _ in layer.inputs]
    return layer.forward_float(ins, model.prepared(index), model.work_buffers())


@pytest.mark.parametrize("name", list(SECTIONS))
def test_traits_hold_for_what_the_layer_computes(tmp_path, name):
    model, i = one_layer(tmp_path, name)
    layer = model.layers[i]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 8)).astype(np.float32)
    y = run(model, i, x)
    pos = np.abs(x)
    if layer.passes_sign or layer.keeps_scale:
        # outputs are input values: a one-sided input stays one-sided, nothing new is made
        assert (run(model, i, pos) >= 0).all()
    if layer.keeps_scale:
        # INT runs it on its input's codes and grid: every output is one of the input's values
        assert np.isin(y, x).all(), f"{name}: outputs that are not input values under keeps_scale"
    if layer.commutes_channel_scale:
        s = rng.uniform(0.25, 4.0, 4).astype(np.float32).reshape(4, 1, 1)
        np.testing.assert_allclose(run(model, i, x * s), s * y, rtol=1e-6, err_msg=name)
    expected = {"maxpool", "maxpool 3/1", "dropout", "upsample", "reorg", "reorg3d"}
    assert layer.keeps_scale == (name in expected), name
    assert layer.passes_sign == (name in expected | {"route", "upsample x0.5"}), name
    assert layer.commutes_channel_scale == (name in {"maxpool", "maxpool 3/1", "dropout", "upsample",
                                                     "upsample x0.5"}), name


TRAITS = ("keeps_scale", "passes_sign", "commutes_channel_scale")


def unchecked_kinds() -> list[str]:
    """Registered layer types that claim a calibration trait (a property counts: it claims it for some cfgs) but
    have no one-layer network in SECTIONS, so the test above never runs their forward against the claim."""
    from engine.layers import LAYERS
    tried = {text.split("]", 1)[0].lstrip("[") for text in SECTIONS.values()}
    return sorted(kind for kind in LAYERS if kind not in tried
                  and any(getattr(LAYERS.get(kind), t) for t in TRAITS))


def test_every_layer_type_claiming_a_trait_is_checked_here(monkeypatch):
    # architecture.md's recipe says this file checks a new layer's traits against its forward; it did so only
    # for the kinds listed in SECTIONS, so a new [reorg]-like layer claiming commutes_channel_scale (wrong when
    # it moves channels: CLE would then rescale the wrong channels) passed silently
    assert unchecked_kinds() == [], ("add a one-layer section of each to SECTIONS at the top of this file, and its "
                                     "name to the expected trait sets of test_traits_hold_for_what_the_layer_computes")
    from engine.layers import LAYERS, Layer

    class Claims(Layer):
        kind = "claims"
        keeps_scale = True
    monkeypatch.setitem(LAYERS._items, "claims", Claims)
    assert unchecked_kinds() == ["claims"]
