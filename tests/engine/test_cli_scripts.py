"""What a script that drives `python -m engine` relies on: `--json` output that any JSON parser reads
(JSON has no NaN or Infinity)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import IMAGES, ROOT, TINY_CFG, TINY_WEIGHTS

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(*args):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=300)


def strict_json(text: str):
    """json.loads as a strict parser (JavaScript's JSON.parse, Go, serde) reads it: NaN/Infinity refused."""
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_compare_json_is_strict_json_with_null_for_undefined_numbers():
    # every `compare --json` on yolov3-tiny printed `"range_use": NaN` (the heads' convs have no int8 output
    # range) and `"int_local_sqnr": NaN` for the [yolo] layers: JSON.parse, Go and serde refuse the whole output
    res = run("compare", TINY_CFG, "--weights", TINY_WEIGHTS, "--calib", IMAGES / "dog.jpg", "--images",
              IMAGES / "dog.jpg", "--methods", "minmax", "--quiet", "--json")
    assert res.returncode == 0, res.stderr
    data = strict_json(res.stdout)
    assert set(data) == {"ranking", "best", "images", "methods"}
    layers = data["methods"][0]["layers"]
    assert layers[16]["kind"] == "yolo" and layers[16]["int_local_sqnr"] is None
    assert layers[15]["range_use"] is None
    assert isinstance(layers[0]["range_use"], float) and 0 < layers[0]["range_use"] <= 1


def test_jsonable_turns_a_float32_nan_into_null():
    # NumPy float32 is no Python float: its NaN passed the NaN check and came out as NaN after .item()
    import numpy as np
    from engine.scale.montecarlo import jsonable
    assert jsonable({"a": np.float32("nan"), "b": [np.float32(2.5), np.float64("inf")], "c": np.int64(3)}) == \
        {"a": None, "b": [2.5, None], "c": 3}
