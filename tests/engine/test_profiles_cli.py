"""CLI contract of device profiles: quantize --profile, export --format onnx-int8 [--all-outputs], and ORT's
layer<i> against `dump --mode int` on a real photo and an input array: 0 mismatched elements."""
from __future__ import annotations

import numpy as np
import pytest

from engine.quant.qmodel import QuantizedModel
from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS, cli, cli_error_line

MODEL = [str(TINY_CFG), "--weights", str(TINY_WEIGHTS)]
DOG = str(IMAGES / "dog.jpg")


def test_quantize_export_dump_agree_with_onnxruntime(capsys, tmp_path, tiny):
    pytest.importorskip("onnxruntime")
    q, onnx_path, x_path, d_path = (tmp_path / n for n in ("q.npz", "t.onnx", "x.npy", "d.npz"))
    rc, _, err = cli(capsys, "quantize", *MODEL, "--calib", IMAGES, "--method", "minmax", "--per-channel",
                      "--profile", "onnxruntime", "-o", q, "--quiet")
    assert rc == 0 and "[onnxruntime]" in err
    assert QuantizedModel.load(q).profile == "onnxruntime"
    rc, _, err = cli(capsys, "export", *MODEL, "--quantized", q, "--format", "onnx-int8", "--all-outputs",
                      "-o", onnx_path)
    assert rc == 0 and "profile onnxruntime" in err
    np.save(x_path, tiny.preprocess(sorted(IMAGES.glob("*.jpg"))[-1]).x)
    assert cli(capsys, "dump", *MODEL, "--mode", "int", "--quantized", q, "--input", x_path, "-o", d_path)[0] == 0
    from engine.export.onnx_int8 import run_ort
    got = run_ort(str(onnx_path), np.load(x_path))
    with np.load(d_path) as dump:
        assert len(got) == 22
        for name, y in got.items():
            assert y.dtype == dump[name].dtype == np.float32
            assert np.count_nonzero(y != dump[name]) == 0, name
    # the same model with int8 weights (for a VNNI device): same numbers where that kernel is exact
    import onnx
    from engine.quant.profiles.avx2_u8s8 import host_u8s8_kernel
    s8_path = tmp_path / "t8.onnx"
    rc, _, err = cli(capsys, "export", *MODEL, "--quantized", q, "--format", "onnx-int8", "--all-outputs",
                      "--int8-weights", "-o", s8_path)
    assert rc == 0 and "int8 weights" in err and ("not VNNI" in err) == (host_u8s8_kernel() != "vnni")
    proto = onnx.load(str(s8_path))
    inits = {t.name: t.data_type for t in proto.graph.initializer}
    assert {inits[n.input[3]] for n in proto.graph.node if n.op_type == "QLinearConv"} == {onnx.TensorProto.INT8}
    if host_u8s8_kernel() == "vnni":
        got = run_ort(str(s8_path), np.load(x_path))
        with np.load(d_path) as dump:
            assert all(np.array_equal(y, dump[name]) for name, y in got.items()) and len(got) == 22


@pytest.mark.parametrize("args, fragment", [
    (["quantize", *MODEL, "--calib", DOG, "--profile", "npu9", "-o", "q.npz", "--quiet"],
     "profile 'npu9': unknown device profile 'npu9'; known: "),
    (["export", *MODEL, "--format", "onnx-int8", "-o", "t.onnx"], "--format onnx-int8 needs --quantized Q"),
    (["export", *MODEL, "--int8-weights", "-o", "t.onnx"], "--int8-weights: only for --format onnx-int8"),
    # an option the export's format does not read: it wrote the FLOAT model as t.onnx and said nothing of the
    # quantized model it was given
    (["export", *MODEL, "--quantized", "q.npz", "-o", "t.onnx"],
     "--quantized q.npz: only for --format onnx-int8 (--format onnx writes the float model;"),
    (["export", *MODEL, "--format", "weights", "-q", "q.npz", "-o", "t.weights"],
     "--quantized q.npz: only for --format onnx-int8 (--format weights writes the float model;"),
    (["export", *MODEL, "--format", "weights", "--all-outputs", "--dynamic-batch", "-o", "t.weights"],
     "--all-outputs and --dynamic-batch: only for an ONNX export (--format weights writes the Darknet .weights file)"),
])
def test_profile_cli_errors_are_one_clear_line(capsys, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    line = cli_error_line(capsys, *args)
    assert fragment in line, line
    assert not any((tmp_path / name).exists() for name in ("q.npz", "t.onnx", "t.weights"))


def test_export_int8_of_a_qwidgets_model_is_refused(capsys, tmp_path):
    q = tmp_path / "q.npz"
    assert cli(capsys, "quantize", *MODEL, "--calib", DOG, "--method", "minmax", "-o", q, "--quiet")[0] == 0
    rc, _, err = cli(capsys, "export", *MODEL, "--quantized", q, "--format", "onnx-int8", "-o", tmp_path / "t.onnx")
    assert rc == 2 and "uses profile 'qwidgets': quantize with --profile onnxruntime" in err
    assert not (tmp_path / "t.onnx").exists()


