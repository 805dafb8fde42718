"""A mode named twice (`montecarlo --modes int,int`, `run_montecarlo(modes=("int", "int"))`) is one mode: the
report printed the same INT summary twice and the JSON's "modes" listed int twice beside one "summary" entry."""
from __future__ import annotations

import json

import pytest

from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS, cli

MODEL = [TINY_CFG, "--weights", TINY_WEIGHTS, "--size", "224"]
DOG = IMAGES / "dog.jpg"


@pytest.fixture(scope="module")
def qmodel(tmp_path_factory):
    from engine.cli.main import main
    q = tmp_path_factory.mktemp("mc_modes") / "q.npz"
    assert main([str(a) for a in ("quantize", *MODEL, "--calib", DOG, "--quiet", "-o", q)]) == 0
    return q


def test_a_mode_given_twice_is_run_and_reported_once(capsys, qmodel):
    rc, out, err = cli(capsys, "montecarlo", *MODEL, "-q", qmodel, "--images", DOG, "--variants", "1",
                       "--modes", "int,hybrid,int", "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["modes"] == ["int", "hybrid"] and list(data["summary"]) == ["int", "hybrid"]
    assert set(data["variants"][0]) >= {"int", "hybrid"}
    rc, out, err = cli(capsys, "montecarlo", *MODEL, "-q", qmodel, "--images", DOG, "--variants", "1",
                       "--modes", "int,int")
    assert rc == 0, err
    assert [line.split()[0] for line in out.splitlines() if "mAP50 mean" in line] == ["int"]
