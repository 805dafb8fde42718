"""Session.save_model / save_weights / save_quantized with overwrite=False never replace a file that
another kernel or process created after the existence check (no silent lost update)."""
from __future__ import annotations

import pytest

import engine
from engine.errors import EngineError
from engine.model import Model
from engine.quant.qmodel import QuantizedModel
from helpers import one_conv_session


@pytest.fixture
def session(tmp_path):
    return one_conv_session(tmp_path)


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


def test_an_exclusive_write_whose_link_was_made_but_reported_existing_succeeds(tmp_path, monkeypatch):
    """NFS: link(2) retried after its reply was lost fails with EEXIST though the first try made the link
    (the man page's warning). The write did happen: it is reported done, not "nothing was written", and the
    temp name is gone. A name taken by another file is still refused."""
    import os

    from engine import atomic
    real_link = os.link

    def link_then_eexist(src, dst):
        real_link(src, dst)
        raise FileExistsError(17, "File exists")
    monkeypatch.setattr(atomic.os, "link", link_then_eexist)
    target = tmp_path / "q.npz"
    assert atomic.atomic_write(target, b"ours", exclusive=True) == target
    assert target.read_bytes() == b"ours" and [p.name for p in tmp_path.iterdir()] == ["q.npz"]
    monkeypatch.setattr(atomic.os, "link", real_link)
    with pytest.raises(EngineError, match="refusing to replace it"):
        atomic.atomic_write(target, b"again", exclusive=True)
    assert target.read_bytes() == b"ours" and [p.name for p in tmp_path.iterdir()] == ["q.npz"]
