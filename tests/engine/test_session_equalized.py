"""Per-layer statistics of a cross-layer-equalized quantized model (`quantize --refine cle`) on real
yolov3-tiny: its int8 tensors carry the equalization's channel scales, so each layer is compared with
the equalized FLOAT twin's output, not the plain model's. Inside the equalized chains the SQNR is then
close to the unequalized model's (it was 0.6 to 8 dB against the plain FLOAT outputs, for 15 to 27 dB),
the references equal the twin's own outputs, and the chain ends and heads keep the plain FLOAT outputs."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from engine.calib.collect import collect
from engine.quant.device import sim_vs_device
from engine.quant.executor import Executor
from engine.quant.qmodel import QuantizedModel, quantize_model
from engine.quant.refine.equalize import channel_factors
from engine.session.session import Session
from helpers import IMAGES, ROOT, TINY_CFG, TINY_WEIGHTS

DOG = IMAGES / "dog.jpg"


@pytest.fixture(scope="module")
def sessions(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("cle") / "q.npz"
    res = subprocess.run([sys.executable, "-m", "engine", "quantize", str(TINY_CFG), "--weights", str(TINY_WEIGHTS),
                          "--calib", str(DOG), "--refine", "cle", "--per-channel", "--quiet", "-o", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr
    cle = QuantizedModel.load(out)
    plain = quantize_model(tiny, collect(tiny, [DOG], progress=False), "minmax", per_channel=True)
    runs = {}
    for name, qm in (("plain", plain), ("cle", cle)):
        s = Session(tiny, qm, "int", image=DOG)
        s.run()
        runs[name] = s
    return runs


def _sqnr(s: Session, i: int, kind: str) -> float:
    st = s.fitness(i)[kind]
    return float("nan") if st is None else float(st.sqnr_db)


def test_per_layer_sqnr_inside_equalized_chains_is_sane(tiny, sessions):
    plain, cle = sessions["plain"], sessions["cle"]
    chain = sorted(channel_factors(tiny, cle.qmodel.meta["equalization"]))
    assert chain == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 17, 18, 19, 20, 21]
    for i, layer in enumerate(tiny.layers):
        for kind in ("propagated", "local"):
            a, b = _sqnr(plain, i, kind), _sqnr(cle, i, kind)
            if np.isnan(a):
                assert np.isnan(b) and (layer.kind == "yolo" or kind == "local"), (i, kind)
                continue
            assert b > 10 and b >= a - 6, (i, kind, a, b)          # not 0.6 dB for 25 dB as against plain FLOAT


def test_references_are_the_equalized_twins_outputs(tiny, sessions):
    cle = sessions["cle"]
    ref, plain = cle.float_reference(), tiny.forward(cle.pre.x)
    twin = Executor(tiny, cle.qmodel, "float").forward(cle.pre.x)      # the twin's own FLOAT run
    s12 = np.asarray(cle.qmodel.meta["equalization"]["12"]).reshape(-1, 1, 1)
    assert np.abs(s12 - 1).max() > 0.3
    for i in (0, 1, 12, 13, 20):
        assert np.abs(ref[i] - twin[i]).max() <= 1e-5 * np.abs(twin[i]).max(), i
        assert np.abs(ref[i] - plain[i]).max() > 0.1 * np.abs(plain[i]).max(), i     # really rescaled
    for i in (15, 16, 22, 23):                                         # heads and their inputs: plain FLOAT
        assert np.array_equal(ref[i], plain[i]), i
    assert cle.float_reference() is ref                               # kept, not recomputed per call
    assert [d.name for d in cle.float_detections()] == [d.name for d in tiny.detect(DOG)]


def test_device_table_uses_the_same_references(tiny, sessions):
    cle = sessions["cle"]
    table = sim_vs_device(tiny, cle.qmodel, cle.pre.x, device=False)
    assert min(r["local_sqnr"] for r in table.rows if r["precision"] != "float") > 15      # was -8.6 dB (layer 13)
    for row in table.rows:
        i = row["layer"]
        if tiny.layers[i].kind == "yolo":
            continue
        assert row["propagated_sqnr"] == pytest.approx(_sqnr(cle, i, "propagated"), abs=1e-3), i
        if row["precision"] != "float":
            assert row["local_sqnr"] == pytest.approx(_sqnr(cle, i, "local"), abs=1e-3), i
