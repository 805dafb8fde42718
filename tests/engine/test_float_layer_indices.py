"""The FLOAT-kept layers of a mixed-precision run are checked once, by `float_layer_indices`, for every entry
point that takes them (compare, montecarlo, worst-images, report): sorted, once each, a missing layer refused
by name before any image is read."""
from __future__ import annotations

import pytest

import engine
from engine.quant.modes import float_layer_indices
from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS

MODEL = [TINY_CFG, "--weights", TINY_WEIGHTS, "--size", "224"]


class _Model:
    layers = [None] * 24


def test_kept_layers_sorted_once_each_and_a_missing_one_refused_with_the_models_range():
    assert float_layer_indices(_Model, [22, 15, 15, "0"]) == (0, 15, 22)
    assert float_layer_indices(_Model, ()) == ()
    with pytest.raises(ValueError, match=r"float_layers \[-1, 24\]: no such layers \(0\.\.23\)"):
        float_layer_indices(_Model, [24, 3, -1])


@pytest.fixture(scope="module")
def qmodel(tmp_path_factory):
    from engine.cli.main import main
    q = tmp_path_factory.mktemp("kept") / "q.npz"
    assert main([str(a) for a in ("quantize", *MODEL, "--calib", IMAGES / "dog.jpg", "--quiet", "-o", q)]) == 0
    return q


def test_the_python_entry_points_refuse_a_layer_the_model_does_not_have(qmodel):
    """The CLI refuses --float-layers 99 while parsing; a notebook calling the functions meets these checks."""
    from engine.quant.qmodel import QuantizedModel
    from engine.quant.report import size_speed_report
    from engine.scale.montecarlo import run_montecarlo
    model = engine.load(TINY_CFG, TINY_WEIGHTS, size=224)
    qm = QuantizedModel.load(qmodel)
    with pytest.raises(ValueError, match=r"float_layers \[99\]: no such layers \(0\.\.23\)"):
        run_montecarlo(model, qm, [IMAGES / "dog.jpg"], n_variants=1, float_layers=[99])
    with pytest.raises(ValueError, match=r"float_layers \[99\]: no such layers \(0\.\.23\)"):
        size_speed_report(model, qm, repeats=1, float_layers=[99])
