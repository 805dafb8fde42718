"""`--float-layers` that could not mean what was typed is refused with one line, not dropped: with --mode float
(the default) `detect`/`dump` ignored it, so `detect M img --float-layers 15` looked like a mixed-precision run; and
`--float-layers ,` named no layer and replaced the quantized model's own FLOAT layers with none."""
from __future__ import annotations

import pytest

from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS, cli

MODEL = (TINY_CFG, "--weights", TINY_WEIGHTS, "--size", "160")
DOG = IMAGES / "dog.jpg"


@pytest.mark.parametrize("command", ["detect", "dump"])
def test_float_layers_with_mode_float_is_refused(capsys, tmp_path, command):
    out_args = (DOG,) if command == "detect" else ("--image", DOG, "-o", tmp_path / "d.npz")
    rc, out, err = cli(capsys, command, *MODEL, *out_args, "--float-layers", "15")
    assert rc == 2 and out == ""
    assert err == ("error: --float-layers 15 given with --mode float (every layer runs FLOAT): pass --mode hybrid or "
                   "--mode int with --quantized QMODEL\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [",", " , ,"])
def test_float_layers_naming_no_layer_is_refused(capsys, tmp_path, value):
    rc, out, err = cli(capsys, "detect", *MODEL, DOG, "--mode", "int", "-q", tmp_path / "q.npz",
                       "--float-layers", value)
    assert rc == 2 and out == ""
    assert err == f"error: --float-layers {value!r}: expected comma-separated layer indices, e.g. 15,22\n"
