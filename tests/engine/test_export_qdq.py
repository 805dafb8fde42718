"""int8 QDQ ONNX export with our scales: exact int8/int32 parameters, onnxruntime close to HYBRID / INT."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from helpers import IMAGES  # noqa: E402

from engine.export.onnx_qdq import build_qdq, check_qdq, export_qdq, int_output_scales  # noqa: E402
from engine.quant.executor import Executor  # noqa: E402

PHOTO = sorted(IMAGES.glob("*.jpg"))[0]


def _ops(proto, op: str) -> list:
    return [n for n in proto.graph.node if n.op_type == op]


def test_qdq_graph_carries_our_int8_weights_int32_biases_and_scales(tiny, tiny_q):
    import onnx.numpy_helper as nh
    proto = build_qdq(tiny, tiny_q, mode="hybrid")
    inits = {t.name: nh.to_array(t) for t in proto.graph.initializer}
    convs = [i for i, l in enumerate(tiny.layers) if l.kind == "convolutional"]
    assert len(_ops(proto, "QuantizeLinear")) == len(convs)          # one per conv input, nothing else
    for i in convs:
        lq = tiny_q.layers[i]
        w, b = inits[f"layer{i}_weights"], inits[f"layer{i}_biases"]
        assert w.dtype == np.int8 and np.array_equal(w, lq.w_q)
        assert b.dtype == np.int32 and np.array_equal(b, lq.b_q)
        np.testing.assert_allclose(inits[f"layer{i}_weights_scale"], lq.w_scale.astype(np.float32))
    proto_int = build_qdq(tiny, tiny_q, mode="int")
    n_requant = sum(1 for s, l in zip(int_output_scales(tiny, tiny_q, Executor(tiny, tiny_q, "int")).values(),
                                      tiny.layers) if s is not None and l.kind in ("convolutional", "route"))
    assert len(_ops(proto_int, "QuantizeLinear")) == len(convs) + n_requant
    assert [o.name for o in proto_int.graph.output] == ["layer15", "layer22"]


def test_int_output_scales_follow_the_int_executor(tiny, tiny_q):
    ex = Executor(tiny, tiny_q, "int")
    values, _ = ex.run(tiny.preprocess(PHOTO).x)
    scales = int_output_scales(tiny, tiny_q, ex)
    for i, v in enumerate(values):
        assert (v.q.scale if v.q is not None else None) == scales[i], f"layer {i}"


@pytest.mark.parametrize("mode", ["hybrid", "int"])
def test_qdq_export_runs_in_onnxruntime_close_to_our_outputs(tiny, tiny_q, tmp_path, mode):
    path = export_qdq(tiny, tiny_q, tmp_path / f"tiny-{mode}.onnx", mode=mode, all_outputs=True)
    diffs = check_qdq(tiny, tiny_q, path, [PHOTO], mode)
    # layer 0 has no quantized input history: HYBRID equals ours to float32 rounding, INT to one step
    if mode == "hybrid":
        assert diffs["layer0"]["max_abs"] < 1e-4
    else:
        assert diffs["layer0"]["steps"] <= 1.0 + 1e-5
    # the heads: rounding-tie flips propagate (module docstring), bounded well below the signal
    for head in ("layer15", "layer22"):
        assert diffs[head]["max_rel"] < 0.08, (head, diffs[head])
        assert diffs[head]["mean_abs"] < 0.15, (head, diffs[head])
        if mode == "int":
            assert diffs[head]["steps"] <= 8, (head, diffs[head])


@pytest.mark.parametrize("profile, hint", [("onnxruntime", "--format onnx-int8"),
                                           ("qwidgets_asym", "no ONNX export runs the arithmetic"),
                                           ("yolo2_light", "no ONNX export runs the arithmetic")])
def test_qdq_export_refuses_other_profiles_instead_of_other_grids(tiny, tiny_stats, profile, hint):
    # a QDQ graph holds symmetric int8 grids: an `onnxruntime` model (uint8 + zero points, pre-activation
    # grids) came out 79 and 118 output steps off its own INT heads on yolov3-tiny at 160 px, silently
    from engine.errors import EngineError
    from engine.quant.qmodel import quantize_model
    qm = quantize_model(tiny, tiny_stats, "minmax", profile=profile)
    message = rf"QDQ export holds the 'qwidgets' profile's .*profile '{profile}'.*{hint}"
    for mode in ("int", "hybrid"):
        with pytest.raises(EngineError, match=message):
            build_qdq(tiny, qm, mode=mode)
    with pytest.raises(EngineError, match=f"profile '{profile}'"):
        check_qdq(tiny, qm, "unused.onnx", [PHOTO])
