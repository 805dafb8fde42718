"""The ONNX Runtime backend on batches (engine/export/ort_backend.py): a (N, 3, H, W) input gives
(N, C, H, W) outputs whose image k is a batch-of-one run of image k bit for bit, FLOAT and INT, heads
only or every layer, on 1 and 2 threads; against the NumPy engine FLOAT stays within 1e-4 relative and
INT identical; batch evaluation feeds ORT `run.batch` images per call with the per-image results of the
NumPy engine."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from helpers import IMAGES  # noqa: E402

from engine.export import ort_backend  # noqa: E402
from engine.export.ort_backend import forward_each, forward_on  # noqa: E402
from engine.kernels.threads import blas_limit  # noqa: E402
from engine.quant.executor import Executor  # noqa: E402

PHOTOS = sorted(IMAGES.glob("*.jpg"))
HEADS = (15, 16, 22, 23)          # the raw head convs and the [yolo] layers of yolov3-tiny


@pytest.mark.parametrize("mode", ["float", "int"])
@pytest.mark.parametrize("all_outputs", [False, True])
def test_image_k_of_a_batch_is_a_batch_of_one_run(tiny, tiny_ort, photo_inputs, mode, all_outputs):
    xb = np.stack([p.x for p in photo_inputs])
    layers = range(len(tiny.layers)) if all_outputs else HEADS
    by_threads = {}
    for threads in (1, 2):
        with blas_limit(threads):
            run = forward_on("onnxruntime", tiny, tiny_ort if mode == "int" else None, mode, all_outputs=all_outputs)
            batch = by_threads[threads] = run(xb)
            for i in layers:
                assert batch[i].shape == (len(photo_inputs), *tiny.layers[i].out_shape) and batch[i].dtype == np.float32
            for k, pre in enumerate(photo_inputs):
                one = run(pre.x)
                view = batch.image(k)
                for i in layers:
                    assert one[i].shape == tiny.layers[i].out_shape
                    assert np.array_equal(batch[i][k], one[i]) and np.array_equal(view[i], one[i]), (threads, k, i)
    assert all(np.array_equal(by_threads[1][i], by_threads[2][i]) for i in layers)    # whatever the thread count
    if mode == "int":                                # the NumPy executor's batched forward, identical
        ours = Executor(tiny, tiny_ort, "int").forward(xb)
        for i in layers:
            assert np.array_equal(batch[i], ours[i]), i
    else:
        ours = tiny.forward(xb)
        worst = max(float(np.abs(batch[i] - ours[i]).max() / np.abs(ours[i]).max()) for i in layers)
        assert 0 < worst < 1e-4                      # two computations, within 1e-4 relative


@pytest.mark.parametrize("mode", ["float", "int"])
def test_two_threads_run_a_batch_image_by_image_side_by_side(tiny, tiny_ort, photo_inputs, mode, monkeypatch):
    """With 2 engine threads a batch goes to `run_split`: two Python threads, each one image at a time on a
    single-threaded session, writing image k of the outputs; 5, 3 and 2 images give every image's bits of a
    batch-of-one run, in order; with 1 thread (and for one image) no split."""
    qm = tiny_ort if mode == "int" else None
    splits = []
    real = ort_backend.run_split

    def spy(sess, names, shapes, xb, workers):
        splits.append((len(xb), workers, sess.get_session_options().intra_op_num_threads))
        return real(sess, names, shapes, xb, workers)
    monkeypatch.setattr(ort_backend, "run_split", spy)
    xs = np.stack([p.x for p in photo_inputs])
    with blas_limit(2):
        run = forward_on("onnxruntime", tiny, qm, mode)
        ones = [run(x) for x in xs]
        assert splits == []                              # one image: the 2-thread session, no split
        for lo, hi in ((0, 5), (0, 3), (3, 5)):
            batch = run(xs[lo:hi])
            assert splits[-1] == (hi - lo, 2, 1)
            for k in range(lo, hi):
                for i in HEADS:
                    assert np.array_equal(batch[i][k - lo], ones[k][i]), (k, i)
    assert len({float(ones[k][15].sum()) for k in range(5)}) == 5        # five different images
    with blas_limit(1):
        one_thread = forward_on("onnxruntime", tiny, qm, mode)(xs)
    assert len(splits) == 3                              # 1 thread: one run of the whole batch
    assert all(np.array_equal(one_thread[i][3:], batch[i]) for i in HEADS)


def test_forward_each_feeds_run_batch_images_per_call(tiny, photo_inputs, monkeypatch):
    run = forward_on("onnxruntime", tiny, None, "float")
    assert run.batch == ort_backend.BATCH            # yolov3-tiny's head inputs: 8 images are ~3 MB
    per_image = 4 * sum(int(np.prod(tiny.layers[i].out_shape)) for i in range(len(tiny.layers))
                        if not tiny.layers[i].is_head)
    monkeypatch.setattr(ort_backend, "BATCH_BYTES", 2 * per_image + 1)
    kept = forward_on("onnxruntime", tiny, None, "float", all_outputs=True)
    assert kept.batch == 2                           # every layer kept: the batch's outputs fit BATCH_BYTES
    calls = []

    def recorded(x):
        calls.append(x.shape)
        return kept(x)
    recorded.batch = kept.batch
    xs = [p.x for p in photo_inputs]
    got = list(forward_each(recorded, xs))
    assert calls == [(2, 3, 416, 416), (2, 3, 416, 416), (3, 416, 416)]
    for outs, x in zip(got, xs):
        one = kept(x)
        assert all(np.array_equal(outs[i], one[i]) for i in range(len(tiny.layers)))
    numpy_calls = []
    list(forward_each(lambda x: numpy_calls.append(x.shape), xs[:2]))       # no batch: one image at a time
    assert numpy_calls == [(3, 416, 416)] * 2
    with pytest.raises(ValueError, match=r"\(N, 3, 416, 416\) with N >= 1"):
        run(np.zeros((2, 3, 208, 208), np.float32))


def test_batched_monte_carlo_and_evaluate_equal_numpy(tiny, tiny_ort):
    """10 variants in one in-process batch: ORT runs them as 8 + 2; FLOAT and INT per variant as NumPy."""
    from engine.scale.backends import InProcess
    from engine.scale.evaluate import evaluate
    from engine.scale.montecarlo import run_montecarlo
    res = {b: run_montecarlo(tiny, tiny_ort, PHOTOS, n_variants=10, modes=("int",), seed=5, backend=b)
           for b in ("numpy", "onnxruntime")}
    rows_np, rows_ort = res["numpy"].rows, res["onnxruntime"].rows
    assert len(rows_ort) == 10 and sum(r["float_dets"] for r in rows_ort) > 10
    assert [r["float_dets"] for r in rows_np] == [r["float_dets"] for r in rows_ort]
    for x, y in zip(rows_np, rows_ort):       # INT identical; its FLOAT truth within 1e-4: IoUs differ by ~1e-7
        assert {k: x["int"][k] for k in ("matched", "missed", "extra")} == \
               {k: y["int"][k] for k in ("matched", "missed", "extra")}
        assert x["int"]["map50"] == pytest.approx(y["int"]["map50"], abs=1e-6)
        assert x["int"]["mean_iou"] == pytest.approx(y["int"]["mean_iou"], abs=1e-5, nan_ok=True)
    images = PHOTOS * 3                                                         # 12 images: a batch of 8 and 4
    a = evaluate(tiny, tiny_ort, images, ("int",), InProcess())
    b = evaluate(tiny, tiny_ort, images, ("int",), InProcess(runtime="onnxruntime"))
    assert a.detections["int"] == b.detections["int"] and sum(map(len, b.detections["int"])) > 30
    assert [len(d) for d in a.detections["float"]] == [len(d) for d in b.detections["float"]]


@pytest.mark.parametrize("mode", ["float", "int"])
def test_a_static_batch_graph_gives_the_batches_bits_a_partial_last_batch_included(tiny, tiny_ort, photo_inputs, mode):
    """The backend keeps a symbolic batch axis (benchmarks/bench_ort_sessions.py: a static one measured no
    faster). The bits do not depend on it: the static graph `export` writes by default (batch 1), run by
    ORT with its default options (all cores, intra-op spinning on), gives for every image the bits of the
    backend's batches, 11 images fed by `forward_each` as 8 + a last partial batch of 3 (2 threads:
    `run_split` on the single-threaded symbolic session)."""
    from engine.export.onnx_float import build_onnx
    from engine.export.onnx_int8 import build_int8, run_ort
    qm = tiny_ort if mode == "int" else None
    proto = build_onnx(tiny, heads="raw") if mode == "float" else build_int8(tiny, qm, heads="raw")
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 416, 416]
    xs = [p.x for p in photo_inputs] * 2 + [photo_inputs[0].x]           # 11 inputs; input k is photo k % 5
    calls = []
    with blas_limit(2):
        run = forward_on("onnxruntime", tiny, qm, mode)

        def recorded(x):
            calls.append(len(x))
            return run(x)
        recorded.batch = run.batch
        got = list(forward_each(recorded, xs))
    assert calls == [8, 3]
    static = [run_ort(proto, x) for x in xs[:5]]
    assert sorted(static[0]) == ["layer15", "layer22"]                   # the raw head convs
    for k, outs in enumerate(got):
        for name, y in static[k % 5].items():
            assert np.array_equal(outs[int(name[5:])], y), (k, name)
    assert not np.array_equal(static[0]["layer15"], static[1]["layer15"])


def test_backend_sessions_do_not_spin(tiny, tiny_ort):
    """Spinning intra-op threads measured slower on this shared host (bench_ort_sessions.py: 0.83-0.99x the
    speed of the same layout without, 10-28% more CPU per image) and would burn a core behind an idle
    notebook kernel: every session the backend builds, 1 or 2 threads, FLOAT or INT, has it off."""
    ort_backend.clear_sessions()
    for qm, mode in ((None, "float"), (tiny_ort, "int")):
        for threads in (1, 2):
            opts = ort_backend.session(tiny, qm, mode, threads=threads)[0].get_session_options()
            assert opts.intra_op_num_threads == threads
            assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
