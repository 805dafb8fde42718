"""compare's runs report progress unit by unit (qa8: the Quantization tab sat on "comparing 2 methods ..." with a
frozen bar for ~50 s, the engine reporting only once per finished method): per image its FLOAT reference, then
every method in HYBRID and INT, the total known up front, the text naming the method, the mode and the image;
a cancel hook stops the runs between units."""
from __future__ import annotations

import threading

import pytest

import engine
from engine.calib.collect import collect
from engine.errors import Cancelled
from engine.scale.compare import compare, run_units
from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS

PHOTOS = sorted(IMAGES.glob("*.jpg"))[:2]


@pytest.fixture(scope="module")
def small():
    """yolov3-tiny at 224 x 224 and its statistics on two photos (a compare of seconds)."""
    model = engine.load(TINY_CFG, weights=TINY_WEIGHTS, size=224)
    return model, collect(model, PHOTOS, progress=False)


def test_compare_reports_every_image_of_every_method_with_an_honest_total(small):
    model, stats = small
    calls = []
    table = compare(model, stats, PHOTOS, ["kl", "minmax"], progress=False,
                    on_run=lambda done, total, what: calls.append((done, total, what)))
    assert sorted(r.method for r in table.results) == ["kl", "minmax"]
    n = run_units(2, 2)
    assert n == 10                                        # 2 images x (FLOAT + 2 methods x HYBRID, INT)
    assert [c[1] for c in calls] == [n] * (n + 1)          # the total known at the first call, never revised
    assert [c[0] for c in calls] == list(range(n + 1))     # one call per unit, then (n, n, "done")
    assert calls[-1][2] == "done"
    expected = {f"{unit}, image {k} of 2" for k in (1, 2)
                for unit in ("FLOAT", "kl: HYBRID", "kl: INT", "minmax: HYBRID", "minmax: INT")}
    assert {c[2] for c in calls[:-1]} == expected           # each unit named once: method, mode and image
    for k in (1, 2):                                        # an image's units in the order they run
        mine = [c[2].split(",")[0] for c in calls if c[2].endswith(f"image {k} of 2")]
        assert mine == ["FLOAT", "kl: HYBRID", "kl: INT", "minmax: HYBRID", "minmax: INT"], mine


def test_compare_stops_between_units_when_cancel_is_set(small):
    model, stats = small
    stop, calls = threading.Event(), []

    def on_run(done, total, what):
        calls.append(done)
        if done == 2:
            stop.set()                  # Cancel clicked while the third unit starts

    with pytest.raises(Cancelled):
        compare(model, stats, PHOTOS, ["kl", "minmax"], progress=False, on_run=on_run, cancel=stop)
    # the unit reported when Cancel came runs; no unit after it starts (the other image thread may have one
    # unit under way already, never more)
    assert max(calls) <= 3 and len(calls) <= 4, calls


def test_compare_cli_bar_counts_the_runs(small, capsys):
    model, stats = small
    compare(model, stats, PHOTOS[:1], ["kl"], progress=True)
    err = capsys.readouterr().err
    assert "comparing" in err and "3/3" in err, err         # FLOAT, kl HYBRID, kl INT on the one image
