"""Session.save_model / save_weights / save_quantized with overwrite=False never replace a file that
another kernel or process created after the existence check (no silent lost update)."""
from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.calib.collect import collect
from engine.errors import EngineError
from engine.model import Model
from engine.quant.qmodel import QuantizedModel, quantize_model
from engine.session import Session

CFG = """[net]
width=8
height=8
channels=3

[convolutional]
filters=4
size=3
stride=1
pad=1
activation=leaky
"""


@pytest.fixture
def session(tmp_path):
    cfg = tmp_path / "t.cfg"
    cfg.write_text(CFG)
    m = engine.load(cfg, random_weights=0)
    x = np.random.default_rng(0).random(m.input_shape, dtype=np.float32)
    return Session(m, quantize_model(m, collect(m, [x], progress=False), "minmax"), "float", x)


@pytest.mark.parametrize("save, cls, method", [("save_model", Model, "to_arrays"),
                                               ("save_quantized", QuantizedModel, "to_arrays"),
                                               ("save_weights", None, None)])
def test_a_file_created_meanwhile_is_never_replaced(session, tmp_path, monkeypatch, save, cls, method):
    target = tmp_path / "custom.out"
    if cls is None:     # .weights: the other writer strikes while the file is being written
        import engine.darknet.weights as w
        real_header = w.WeightsHeader.pack

        def pack(self):
            target.write_bytes(b"theirs")
            return real_header(self)
        monkeypatch.setattr(w.WeightsHeader, "pack", pack)
    else:
        real = getattr(cls, method)

        def arrays(self):
            out = real(self)
            target.write_bytes(b"theirs")    # another kernel saved the same new name meanwhile
            return out
        monkeypatch.setattr(cls, method, arrays)
    with pytest.raises(EngineError, match="refusing to replace"):
        getattr(session, save)(target)
    assert target.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["custom.out", "t.cfg"]   # no temp file left


def test_overwrite_true_still_replaces(session, tmp_path):
    target = tmp_path / "m.npz"
    target.write_bytes(b"old")
    session.save_model(target, overwrite=True)
    assert engine.load(target).graph.total_params == session.model.graph.total_params
