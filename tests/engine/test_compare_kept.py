"""Session.compare_methods takes its FLOAT reference from the calibration pass over the same images
(engine.scale.compare.KeptForwards): one FLOAT forward per image instead of two, the same table."""
from __future__ import annotations

import json

from helpers import IMAGES

from engine.scale import compare as compare_mod
from engine.session import Session


def _table(tiny, monkeypatch, max_bytes: int) -> tuple[str, int]:
    calls = [0]
    real = type(tiny).forward

    def counted(self, x, *a, **k):           # the session runs its own copy of the model
        calls[0] += 1
        return real(self, x, *a, **k)

    class Budget(compare_mod.KeptForwards):
        def __init__(self):
            super().__init__(max_bytes=max_bytes)

    monkeypatch.setattr(type(tiny), "forward", counted)
    monkeypatch.setattr(compare_mod, "KeptForwards", Budget)
    photos = sorted(IMAGES.glob("*.jpg"))[:2]
    table = Session(tiny).compare_methods(photos, ["minmax", "kl"])
    monkeypatch.undo()
    return json.dumps(table.to_dict(), default=float, sort_keys=True), calls[0]


def test_compare_reuses_the_calibration_forwards_and_gives_the_same_table(tiny, monkeypatch):
    kept, n_kept = _table(tiny, monkeypatch, 1 << 30)
    plain, n_plain = _table(tiny, monkeypatch, 0)          # nothing kept: FLOAT runs again per image
    one, n_one = _table(tiny, monkeypatch, 40 << 20)       # room for one image's outputs only
    assert (n_kept, n_one, n_plain) == (2, 3, 4)
    assert kept == plain == one
