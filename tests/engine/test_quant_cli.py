"""CLI contract of the quantization commands: quantize, compare --json, detect/dump --mode int|hybrid
--quantized, and their one-line error messages (exit code 2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from engine.cli.main import main
from engine.quant.executor import Executor
from engine.quant.qmodel import QuantizedModel
from helpers import IMAGES, ROOT, TINY_CFG, TINY_WEIGHTS, cli, cli_error_line

MODEL = [str(TINY_CFG), "--weights", str(TINY_WEIGHTS)]
DOG = str(IMAGES / "dog.jpg")


@pytest.fixture(scope="module")
def qfile(tmp_path_factory) -> str:
    """A per-channel minmax model calibrated on the shared images folder, made through the CLI."""
    out = tmp_path_factory.mktemp("q") / "tiny-minmax.npz"
    assert main(["quantize", *MODEL, "--calib", str(IMAGES), "--method", "minmax", "--per-channel", "-o", str(out),
                 "--quiet"]) == 0
    return str(out)


def test_quantize_writes_a_loadable_model(qfile, tiny):
    qm = QuantizedModel.load(qfile)
    assert qm.method == "minmax" and qm.per_channel and qm.stats.images == 4       # dog, horses, person, scream
    assert sorted(qm.layers) == [l.index for l in tiny.layers if l.kind == "convolutional"]
    assert qm.fingerprint and qm.cfg_text == tiny.cfg.text


def test_quantize_kl_with_one_file_and_settings(capsys, tmp_path):
    out = tmp_path / "kl.npz"
    rc, _, err = cli(capsys, "quantize", *MODEL, "--calib", DOG, "--method", "kl", "--per-channel", "-o", out, "--quiet")
    assert rc == 0, err
    assert f"wrote {out}: kl per-channel, calibrated on 1 image;" in err and "smaller" in err
    qm = QuantizedModel.load(out)
    assert qm.method == "kl" and qm.stats.images == 1
    out2 = tmp_path / "p.npz"
    rc, _, err = cli(capsys, "quantize", *MODEL, "--calib", DOG, "--method", "percentile", "--settings",
                     '{"percentile": 99.9}', "-o", out2, "--quiet")
    assert rc == 0, err
    assert QuantizedModel.load(out2).settings == {"percentile": 99.9} and "percentile(percentile=99.9)" in err


def test_compare_json_contract(capsys):
    rc, out, err = cli(capsys, "compare", *MODEL, "--calib", DOG, "--images", DOG, "--methods", "minmax,log2",
                       "--per-channel", "--json", "--quiet")
    assert rc == 0, err
    d = json.loads(out)
    assert set(d) == {"ranking", "best", "images", "methods"}
    assert sorted(d["ranking"]) == ["log2", "minmax"] and d["best"] == d["ranking"][0] and d["images"] == ["dog.jpg"]
    for m in d["methods"]:
        assert set(m) == {"method", "per_channel", "mean_int_sqnr_db", "agreement", "size", "layers"}
        assert m["per_channel"] is True and set(m["agreement"]) == {"hybrid", "int"}
        for a in m["agreement"].values():
            assert set(a) == {"map50", "map50_95", "per_class", "matched", "missed", "extra", "mean_iou"}
            assert a["matched"] + a["missed"] == 6                               # dog.jpg: 6 FLOAT detections
        assert set(m["size"]) == {"float_bytes", "int8_bytes", "compression_pct"}
        assert 70 < m["size"]["compression_pct"] < 76
        assert len(m["layers"]) == 24
        assert set(m["layers"][0]) == {"layer", "kind", "hybrid_sqnr", "int_sqnr", "int_local_sqnr", "saturation",
                                       "range_use"}
    rc, out, _ = cli(capsys, "compare", *MODEL, "--calib", DOG, "--images", DOG, "--methods", "minmax", "--quiet")
    assert rc == 0 and "most fit to FLOAT: minmax" in out and "INT propagated SQNR" in out


def test_detect_int_json_matches_the_executor(capsys, qfile, tiny):
    rc, out, err = cli(capsys, "detect", *MODEL, DOG, "--mode", "int", "--quantized", qfile, "--json")
    assert rc == 0, err
    dets = json.loads(out)["images"]["dog.jpg"]["detections"]
    from engine.darknet.detect import detect_outputs
    pre = tiny.preprocess(DOG)
    expect = detect_outputs(tiny, Executor(tiny, QuantizedModel.load(qfile), "int").forward(pre.x), pre)
    assert [d["class_id"] for d in dets] == [d.class_id for d in expect]
    assert [d["score"] for d in dets] == pytest.approx([d.score for d in expect], abs=1e-6)
    assert sorted(d["name"] for d in dets) == sorted(d.name for d in tiny.detect(DOG))   # same objects as FLOAT


def test_dump_hybrid_equals_executor_bit_for_bit(capsys, qfile, tiny, tmp_path):
    out = tmp_path / "dump.npz"
    rc, _, err = cli(capsys, "dump", *MODEL, "--mode", "hybrid", "--quantized", qfile, "--image", DOG, "-o", out)
    assert rc == 0, err
    ref = Executor(tiny, QuantizedModel.load(qfile), "hybrid").forward(tiny.preprocess(DOG).x)
    with np.load(out) as z:
        assert sorted(z.files, key=lambda k: int(k[5:])) == [f"layer{i}" for i in range(24)]
        for i, y in enumerate(ref):
            assert np.array_equal(z[f"layer{i}"], y), i
    # mixed precision from the command line: float heads
    out2 = tmp_path / "dump2.npz"
    rc, _, err = cli(capsys, "dump", *MODEL, "--mode", "int", "--quantized", qfile, "--float-layers", "15,22",
                     "--image", DOG, "-o", out2)
    assert rc == 0, err
    ref2 = Executor(tiny, QuantizedModel.load(qfile), "int", [15, 22]).forward(tiny.preprocess(DOG).x)
    with np.load(out2) as z:
        assert np.array_equal(z["layer15"], ref2[15]) and np.array_equal(z["layer22"], ref2[22])


@pytest.mark.parametrize("args, fragment", [
    (["detect", *MODEL, DOG, "--mode", "int"], "--mode int needs --quantized QMODEL"),
    (["dump", *MODEL, "--mode", "hybrid", "--image", DOG, "-o", "x.npz"], "--mode hybrid needs --quantized"),
    (["detect", *MODEL, DOG, "--quantized", "q.npz"], "--quantized given with --mode float"),
    (["detect", *MODEL, DOG, "--mode", "int", "--quantized", "/nonexistent/q.npz"], "cannot read quantized model"),
    (["quantize", *MODEL, "--calib", "/nonexistent/dir", "-o", "q.npz", "--quiet"], "no such calibration image"),
    (["quantize", *MODEL, "--calib", DOG, "--method", "nope", "-o", "q.npz", "--quiet"], "nope"),
    (["compare", *MODEL, "--calib", DOG, "--images", DOG, "--methods", "minmax,bogus", "--quiet"],
     "--methods: unknown bogus; known:"),
])
def test_quant_cli_errors_are_one_clear_line(capsys, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    line = cli_error_line(capsys, *args)
    assert fragment in line, line
    assert not (tmp_path / "q.npz").exists()


@pytest.mark.parametrize("method, settings, fragment", [
    ("log2", '{"rule": "window", "bits": 2.5}', "log2 bits=2.5: expected an integer in [1, 32]"),
    ("log2", '{"rule": "window", "bits": 0}', "log2 bits=0: expected an integer in [1, 32]"),
    ("kl", '{"stride": 0}', "kl stride=0: expected an integer in [1, 2048]"),
    ("kl", '{"stride": -4}', "kl stride=-4: expected an integer in [1, 2048]"),
    ("auto", '{"probe_images": -5}', "auto probe_images=-5: expected an integer in [1, 1000000]"),
    ("percentile", '{"percentile": true}', "percentile=True: expected a number in (0, 100]"),
    ("aciq", '{"bits": 7.5}', "aciq bits=7.5: expected an integer in [2, 8]"),
])
def test_out_of_range_method_settings_are_refused_before_calibrating(capsys, tmp_path, monkeypatch, method, settings,
                                                                    fragment):
    from engine.calib import make
    from engine.errors import ArgumentError
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(capsys, "quantize", *MODEL, "--calib", DOG, "--method", method, "--settings", settings,
                       "-o", "q.npz", "--quiet")
    assert rc == 2 and out == "" and err == f"error: --settings: {fragment}\n", err
    assert not (tmp_path / "q.npz").exists()
    with pytest.raises(ArgumentError) as info:                     # the API call says the same
        make(method, **json.loads(settings))
    assert str(info.value) == fragment


def test_in_range_method_settings_are_kept():
    from engine.calib import make
    assert make("kl", stride=4).stride == 4 and make("log2", rule="window", bits=3.0).bits == 3
    assert make("auto", probe_images=1).probe_images == 1 and make("percentile", percentile=50).percentile == 50
    assert make("aciq", bits=4).settings == {"bits": 4}


def test_quantized_model_of_another_cfg_is_refused(capsys, qfile, tmp_path):
    other = QuantizedModel.load(qfile)
    # a consistent file for another cfg (same shapes, another activation): its own arrays check out on
    # load, then pairing it with the model is refused (a cfg with other filters is refused on load already)
    other.cfg_text = other.cfg_text.replace("activation=leaky", "activation=relu", 1)
    assert other.cfg_text != QuantizedModel.load(qfile).cfg_text
    bad = other.save(tmp_path / "other.npz")
    rc, _, err = cli(capsys, "detect", *MODEL, DOG, "--mode", "int", "--quantized", bad)
    assert rc == 2 and "was made for a different cfg than 'yolov3-tiny'" in err, err
    rc, _, err = cli(capsys, "detect", *MODEL, DOG, "--mode", "int", "--quantized", qfile, "--float-layers", "99")
    assert rc == 2 and "--float-layers '99': [99] are not layers of this model (0..23)" in err, err


def test_python_dash_m_engine_quantize_end_to_end(tmp_path):
    out = tmp_path / "q.npz"
    res = subprocess.run([sys.executable, "-m", "engine", "quantize", *MODEL, "--calib", DOG, "--method", "log2",
                          "-o", str(out), "--quiet"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert QuantizedModel.load(out).method == "log2" and res.stdout == ""


@pytest.mark.parametrize("choice", [["--method", "yolo2_light"], ["--profile", "yolo2_light"]])
def test_per_channel_where_weights_stay_per_tensor_is_a_warning(capsys, tmp_path, choice):
    # it wrote a per-tensor model for --per-channel without a word before the "wrote" line
    q = tmp_path / "q.npz"
    rc, _, err = cli(capsys, "quantize", TINY_CFG, "--weights", TINY_WEIGHTS, "--size", "160", "--calib", DOG,
                     "--per-channel", *choice, "--quiet", "-o", q)
    assert rc == 0, err
    by = "method yolo2_light" if choice[0] == "--method" else "profile yolo2_light"
    assert err.splitlines()[0] == (f"warning: --per-channel: {by} quantizes weights per tensor (yolo2_light's exact "
                                   "rule); the quantized model will be per-tensor")
    assert QuantizedModel.load(q).per_channel is False
    rc, _, err = cli(capsys, "quantize", TINY_CFG, "--weights", TINY_WEIGHTS, "--size", "160", "--calib", DOG,
                     "--per-channel", "--quiet", "-o", q)
    assert rc == 0 and "warning" not in err and QuantizedModel.load(q).per_channel is True
