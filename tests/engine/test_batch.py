"""Batched forward (FLOAT, and HYBRID / INT through the Executor): (N, 3, H, W) in, (N, C, H, W) per layer
out, image k bit-identical to a forward of image k alone."""
from __future__ import annotations

import numpy as np
import pytest

import engine
from helpers import CFG_DIR, CFG_FAMILIES, IMAGES, resized_cfg


def photo_batch(model: engine.Model) -> np.ndarray:
    xs = [model.preprocess(p).x for p in sorted(IMAGES.glob("*.jpg"))[:3]]
    return np.stack(xs)


def assert_batch_equals_singles(model: engine.Model, xb: np.ndarray) -> None:
    batch = model.forward(xb)
    assert len(batch) == len(model.layers)
    for k in range(xb.shape[0]):
        single = model.forward(xb[k])
        for i, (b, s) in enumerate(zip(batch, single)):
            assert b.shape == (xb.shape[0],) + s.shape, (i, b.shape, s.shape)
            assert np.array_equal(b[k], s), f"image {k}, layer {i} [{model.layers[i].kind}]: " \
                                            f"max |diff| {np.abs(b[k] - s).max():.3g}"


def test_yolov3_tiny_batch_equals_single_forwards_bit_for_bit(tiny):
    xb = photo_batch(tiny)
    assert_batch_equals_singles(tiny, xb)
    # images differ, so the batch axis really carries three different results
    out = tiny.forward(xb)[-1]
    assert not np.array_equal(out[0], out[1])


def test_random_yolov4_tiny_batch_equals_single_forwards(tmp_path):
    """yolov4-tiny: route groups (group_id), leaky convs on 3x3 and 1x1, two heads."""
    model = engine.load(resized_cfg(CFG_DIR / "yolov4-tiny.cfg", 224, tmp_path), random_weights=1)
    xb = np.random.default_rng(2).random((2,) + model.input_shape, dtype=np.float32)
    assert_batch_equals_singles(model, xb)


def test_batch_of_one_and_stop(tiny):
    x = photo_batch(tiny)[1]
    one = tiny.forward(x[None], stop=9)
    ref = tiny.forward(x, stop=9)
    assert len(one) == 10
    for a, b in zip(one, ref):
        assert a.shape == (1,) + b.shape and np.array_equal(a[0], b)
        assert not a.flags.writeable


@pytest.mark.parametrize("shape", [(0, 3, 416, 416), (2, 3, 416, 320), (2, 1, 3, 416, 416), (416, 416)])
def test_batch_of_a_wrong_shape_is_refused_with_the_expected_shape(tiny, shape):
    with pytest.raises(ValueError, match=r"expects \(3, 416, 416\).*or a batch \(N, 3, 416, 416\)"):
        tiny.forward(np.zeros(shape, np.float32))


def test_batch_on_two_kernel_threads_equals_single_forwards_on_one(tiny):
    """The batch runs whole images on the kernel threads (BLAS single-threaded in each): image k
    equals a forward of image k alone on 1 thread, for every layer, bit for bit."""
    from engine.kernels import threads
    from helpers import require
    require(bool(threads._kernel_blas()), "no BLAS found by threadpoolctl: thread count cannot be set")
    xb = np.concatenate([photo_batch(tiny), np.random.default_rng(3).random((2,) + tiny.input_shape,
                                                                           dtype=np.float32)])
    with threads.blas_limit(2):
        batch = tiny.forward(xb)
    with threads.blas_limit(1):
        for k in range(xb.shape[0]):
            for i, s in enumerate(tiny.forward(xb[k])):
                assert np.array_equal(batch[i][k], s), f"image {k}, layer {i}"


@pytest.mark.parametrize("profile", ["qwidgets", "qwidgets_asym"])
@pytest.mark.parametrize("mode", ["hybrid", "int"])
def test_executor_batch_on_two_kernel_threads_equals_single_runs_on_one(tiny, tiny_stats, mode, profile):
    """HYBRID / INT batches likewise: whole images on the kernel threads, image k of every layer's output
    equal to a run of image k alone on one thread, bit for bit (and on two threads the images really
    ran side by side)."""
    import threading
    from engine.kernels import threads
    from engine.quant.executor import Executor
    from engine.quant.qmodel import quantize_model
    qm = quantize_model(tiny, tiny_stats, "kl", per_channel=True, profile=profile)
    ex = Executor(tiny, qm, mode)
    xb = photo_batch(tiny)
    seen: set[str] = set()
    real = ex.run

    def spied(x, *a, **k):
        seen.add(threading.current_thread().name)
        return real(x, *a, **k)

    ex.run = spied
    with threads.blas_limit(2):
        batch = ex.forward(xb)
    assert len(seen) == 2 and len(batch) == len(tiny.layers)
    with threads.blas_limit(1):
        for k in range(xb.shape[0]):
            for i, s in enumerate(Executor(tiny, qm, mode).forward(xb[k])):
                assert batch[i].shape == (xb.shape[0],) + s.shape
                assert np.array_equal(batch[i][k], s), f"{mode} image {k}, layer {i}"


def test_batches_inside_the_parts_of_another_job_use_their_threads_buffers(tiny):
    """Two parts of a parallel job each run a FLOAT batch at once (nested: its images run inline in that
    part's thread): each must use its own thread's buffers, so both equal the batches run alone."""
    from engine.kernels import threads
    xb = photo_batch(tiny)
    pairs = [xb[:2], xb[1:]]
    want = [tiny.forward(b) for b in pairs]
    got: list = [None, None]

    def job(_part: int, j: int) -> None:
        got[j] = tiny.forward(pairs[j])

    with threads.blas_limit(2), threads.own_threads():
        for _ in range(3):
            threads.parallel_items(2, job)
            for g, w in zip(got, want):
                assert all(np.array_equal(a, b) for a, b in zip(g, w))


def test_connected_layer_is_the_same_bits_on_one_and_two_threads_and_in_a_batch(tmp_path):
    """[connected] (yolov1-tiny's 1470 outputs): its GEMV ran on BLAS's own threads, and a threaded OpenBLAS
    sgemv sums some rows in another order; so a forward on 2 threads differed from one on 1 thread and
    from the same image in a batch (whose images run single-threaded)."""
    from engine.kernels import threads
    from helpers import require
    require(bool(threads._kernel_blas()), "no BLAS found by threadpoolctl: thread count cannot be set")
    cfg = tmp_path / "fc.cfg"
    cfg.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n\n[convolutional]\nfilters=64\nsize=3\nstride=2\n"
                   "pad=1\nactivation=leaky\n\n[connected]\noutput=1470\nactivation=linear\n")
    model = engine.load(cfg, random_weights=0)
    xb = np.random.default_rng(0).random((3,) + model.input_shape, dtype=np.float32)
    with threads.blas_limit(1):
        one = [model.forward(x)[-1] for x in xb]
    with threads.blas_limit(2):
        two = [model.forward(x)[-1] for x in xb]
        batch = model.forward(xb)[-1]
    for k in range(3):
        assert np.array_equal(one[k], two[k]), f"image {k}: 1 vs 2 threads, max |diff| {np.abs(one[k] - two[k]).max():.3g}"
        assert np.array_equal(batch[k], two[k]), f"image {k}: batch vs single"


QUANT_PROFILES = ("qwidgets", "onnxruntime", "qwidgets_asym")


def assert_batch_and_threads_equal_singles(forward, xb: np.ndarray, what: str) -> list[list[np.ndarray]]:
    """forward(x) of each image on 1 kernel thread is the reference: each on 2 threads, the whole batch on 2
    (whole images side by side) and a batch of one must give the same bits, for every layer. Returns the
    1-thread outputs."""
    from engine.kernels import threads
    from helpers import require
    require(bool(threads._kernel_blas()), "no BLAS found by threadpoolctl: thread count cannot be set")
    with threads.blas_limit(1):
        one = [forward(x) for x in xb]
    with threads.blas_limit(2):
        two = [forward(x) for x in xb]
        batch = forward(xb)
        first = forward(xb[:1])
    assert len(batch) == len(one[0]) == len(first)
    for k in range(xb.shape[0]):
        for i, ref in enumerate(one[k]):
            where = f"{what}: image {k}, layer {i}"
            assert np.array_equal(two[k][i], ref), f"{where}, 2 threads vs 1: max |diff| {np.abs(two[k][i] - ref).max():.3g}"
            assert batch[i].shape == (xb.shape[0],) + ref.shape, where
            assert np.array_equal(batch[i][k], ref), f"{where}, batch vs single: max |diff| {np.abs(batch[i][k] - ref).max():.3g}"
            if k == 0:
                assert np.array_equal(first[i][0], ref), f"{where}, batch of one vs single"
    assert not np.array_equal(one[0][-1], one[2][-1]), f"{what}: a photo and noise gave the same output"
    return one


@pytest.mark.parametrize("family", CFG_FAMILIES)
def test_every_cfg_family_float_batch_and_two_threads_equal_single_forwards_on_one(cfg_family, family):
    """FLOAT on one cfg of each family of shipped layer types (helpers.CFG_FAMILIES): reorg, route groups,
    maxpool stride 1, SPP, upsample, shortcut, crop, dropout, connected, avgpool, softmax and every head."""
    model, xb, _ = cfg_family(family)
    assert_batch_and_threads_equal_singles(model.forward, xb, f"{family} float")


@pytest.mark.parametrize("profile", QUANT_PROFILES)
@pytest.mark.parametrize("family", CFG_FAMILIES)
def test_every_cfg_family_hybrid_and_int_batch_and_two_threads_equal_single_runs_on_one(cfg_family, family, profile):
    """HYBRID and INT (minmax per channel on two photos) under each profile, on the same cfgs."""
    from engine.quant.executor import Executor
    model, xb, qm = cfg_family(family, profile)
    ref = model.forward(xb[0])
    for mode in ("hybrid", "int"):
        one = assert_batch_and_threads_equal_singles(Executor(model, qm, mode).forward, xb, f"{family} {profile} {mode}")
        # int8 really ran: the quantized outputs are not the FLOAT ones
        assert any(not np.array_equal(y, r) for y, r in zip(one[0], ref)), f"{family} {profile} {mode}"


def test_cfg_families_hold_every_layer_type_of_the_shipped_cfgs(tmp_path):
    """The families above stand for every cfg we ship: each section kind of a shipped cfg is in one."""
    import re
    from helpers import family_cfg
    kinds = lambda text: set(re.findall(r"(?m)^\[(\w+)\]", text)) - {"net"}    # noqa: E731
    shipped = set().union(*(kinds(p.read_text()) for p in CFG_DIR.glob("*.cfg")))
    covered = set().union(*(kinds(family_cfg(name, tmp_path).read_text()) for name in CFG_FAMILIES))
    assert len(shipped) >= 14 and shipped <= covered, sorted(shipped - covered)
