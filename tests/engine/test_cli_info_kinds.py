"""`python -m engine info` on every kind of file it reads (cfg, engine model, quantized model, .weights),
and on files of no such kind: a one-line error that says what `info` reads (exit 2)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine.cli.main import main
from engine.quant.qmodel import QuantizedModel
from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS, cli

READS = "`info` reads a Darknet .cfg, a Darknet .weights file, an engine model .npz"


@pytest.fixture(scope="module")
def qfile(tmp_path_factory) -> str:
    """yolov3-tiny per channel, bias-corrected, calibrated at 160 on one photo, through the CLI."""
    out = tmp_path_factory.mktemp("q") / "tiny-q.npz"
    assert main(["quantize", str(TINY_CFG), "--weights", str(TINY_WEIGHTS), "--calib", str(IMAGES / "dog.jpg"),
                 "--size", "160", "--per-channel", "--refine", "bias", "--quiet", "-o", str(out)]) == 0
    return str(out)


def test_info_summarises_a_quantized_model_file(capsys, qfile):
    # it used to read the file as an engine model: "members 'layer0/w_q', ... no engine model file uses them"
    rc, out, err = cli(capsys, "info", qfile)
    assert rc == 0, err
    lines = dict(line.split(None, 1) if not line.startswith(("float layers", "source model", "int8 size"))
                 else (line[:14].strip(), line[14:]) for line in out.splitlines()[1:])
    assert out.splitlines()[0] == f"quantized model {qfile} (qwidgets-quantized-model/1)"
    assert lines["method"] == "minmax" and lines["profile"] == "qwidgets" and lines["weights"] == "per-channel"
    assert lines["refinements"] == "bias" and lines["float layers"] == "none"
    fingerprint = QuantizedModel.load(qfile).fingerprint
    assert lines["source model"] == f"yolov3-tiny, fingerprint {fingerprint}"
    assert lines["layers"] == "24 (13 with int8 weights), input 3x160x160"
    assert lines["calibration"] == "1 image"


def test_info_json_of_a_quantized_model_names_float_layers_and_refinements_in_order(capsys, qfile, tmp_path):
    qm = QuantizedModel.load(qfile)
    qm.float_layers = (15, 22)
    qm.meta = {**qm.meta, "gptq": {}, "head_margin": {}, "equalization": {}, "equalization_mode": "activations"}
    path = qm.save(tmp_path / "mixed.npz")
    rc, out, err = cli(capsys, "info", path, "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert set(s) == {"kind", "file", "format", "method", "settings", "profile", "per_channel", "refinements",
                      "float_layers", "model_name", "fingerprint", "layers", "int8_layers", "input_shape",
                      "calibration_images", "int8_bytes"}
    assert s["kind"] == "quantized" and s["method"] == "minmax" and s["per_channel"] is True
    assert s["refinements"] == ["cle_act", "gptq", "bias", "margin"]          # the order they ran in
    assert s["float_layers"] == [15, 22] and s["fingerprint"] == qm.fingerprint and s["model_name"] == "yolov3-tiny"
    assert s["layers"] == 24 and s["int8_layers"] == sorted(qm.layers) and s["input_shape"] == [3, 160, 160]
    assert s["calibration_images"] == 1 and s["int8_bytes"] == qm.int8_bytes()
    rc, out, _ = cli(capsys, "info", path)
    assert "refinements   cle_act, gptq, bias, margin" in out and "float layers  15, 22" in out


def test_info_refuses_size_for_a_quantized_model(capsys, qfile):
    rc, _, err = cli(capsys, "info", qfile, "--size", "320")
    assert rc == 2 and "--size applies to a cfg or an engine model file, not to a quantized model file" in err


def test_info_summarises_a_weights_file(capsys):
    rc, out, err = cli(capsys, "info", TINY_WEIGHTS, "--json")
    assert rc == 0, err
    assert json.loads(out) == {"kind": "weights", "file": str(TINY_WEIGHTS), "version": [0, 2, 0], "header_bytes": 20,
                               "seen": 32013312, "floats": 8858734}
    rc, out, _ = cli(capsys, "info", TINY_WEIGHTS)
    assert rc == 0 and "8,858,734 float32 values" in out and "version 0.2.0" in out


def _record_like(path):
    np.savez(path, format=np.frombuffer(b"qwidgets-run-record/1", np.uint8))


@pytest.mark.parametrize("name, make, fragment", [
    ("garbage.bin", lambda p: p.write_bytes(bytes(range(7, 250)) * 40), "not a text cfg file (byte"),
    ("photo.cfg", lambda p: p.write_bytes((IMAGES / "dog.jpg").read_bytes()[:5000]), "nor a Darknet .weights file"),
    ("odd.weights", lambda p: p.write_bytes(bytes(20) + b"\x00\x01\x02"), "are not a whole, non-zero number of float32"),
    ("dump.npz", lambda p: np.savez(p, layer0=np.zeros(3, np.float32)), "this is a `dump` output"),
    ("plain.npz", lambda p: np.savez(p, a=np.zeros(3, np.float32)), "it has no 'format' member (as `dump` outputs"),
    ("record.npz", _record_like, "a run record: open it with Session.open_record"),
    ("broken.npz", lambda p: p.write_bytes(b"PK\x03\x04" + bytes(60)), "cannot read .npz archive"),
    # np.savez with no arrays: a zip with no member starts with the end record, PK\x05\x06 (it was read as a
    # binary file: "header version 101010256.0.0 is not a Darknet weights header")
    ("empty.npz", lambda p: np.savez(p), "cannot read .npz archive: the archive is empty"),
    ("notes.txt", lambda p: p.write_text("hello\n"), "the file has no [section] line, so it is no Darknet cfg"),
])
def test_info_on_a_file_of_no_kind_it_reads_says_what_it_reads(capsys, tmp_path, name, make, fragment):
    path = tmp_path / name
    make(path)
    rc, out, err = cli(capsys, "info", path)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: ") and fragment in err and READS in err and "quantized model .npz" in err


def test_info_of_a_cfg_with_an_error_keeps_its_precise_message(capsys, tmp_path):
    bad = tmp_path / "bad.cfg"
    bad.write_text("[net]\nwidth=8\nheight=8\n[convolutional]\nfilters=2\nsize=3\nactivation=nope\n")
    rc, _, err = cli(capsys, "info", bad)
    assert rc == 2 and "nope" in err and READS not in err


@pytest.mark.parametrize("make, says", [
    (lambda p: p.write_bytes(TINY_WEIGHTS.read_bytes()[:20 + 4 * 1000]), "a Darknet .weights file (header version 0.2.0, 1,000 float32 values)"),
    (lambda p: p.write_bytes((IMAGES / "dog.jpg").read_bytes()), "a JPEG image"),
    (lambda p: p.write_text("[net]\nwidth=416\n"), "a text file with [section] lines (a Darknet .cfg)"),
    (lambda p: p.write_bytes(b""), "an empty file"),
])
def test_quantized_model_load_names_a_file_that_is_no_zip(tmp_path, make, says):
    # the Explorer's Open and Session users met "BadZipFile: File is not a zip file" (the CLI already named it)
    from engine.errors import WeightsError
    from engine.quant.qmodel import QuantizedModel
    p = tmp_path / "q.npz"
    make(p)
    with pytest.raises(WeightsError) as err:
        QuantizedModel.load(p)
    assert str(err.value) == (f"{p}: cannot read quantized model: this is {says} (a quantized model .npz is made "
                              "by `python -m engine quantize -o FILE` or QuantizedModel.save)")
