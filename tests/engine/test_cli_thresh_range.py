"""--thresh 1 is refused by the parser, naming the option, as --thresh 2 is: it passed the parser's [0, 1] and then
stopped every command after loading the model with "error: thresh=1.0: expected 0 <= thresh < 1" (the Python
API's words; no option named)."""
from __future__ import annotations

import pytest

from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS, cli

MODEL = [TINY_CFG, "--weights", TINY_WEIGHTS]
DOG = IMAGES / "dog.jpg"


@pytest.mark.parametrize("argv", [
    ["detect", *MODEL, DOG],
    ["explain", *MODEL, "-q", "q.npz", "--image", DOG],
    ["montecarlo", *MODEL, "-q", "q.npz", "--images", DOG],
    ["worst-images", *MODEL, "-q", "q.npz", "--images", DOG],
])
@pytest.mark.parametrize("value", ["1", "1.0"])
def test_a_threshold_of_one_is_refused_naming_the_option(capsys, argv, value):
    rc, out, err = cli(capsys, *argv, "--thresh", value)
    assert rc == 2 and out == ""
    assert err.splitlines()[-1].endswith(f"error: argument --thresh: '{value}': expected a finite threshold in [0, 1)")


def test_a_threshold_just_below_one_still_runs(capsys):
    rc, out, err = cli(capsys, "detect", *MODEL, DOG, "--thresh", "0.999")
    assert rc == 0, err
    assert out == "dog.jpg: 0 detections\n"
