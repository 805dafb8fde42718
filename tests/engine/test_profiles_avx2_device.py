"""`avx2_u8s8` against the device it models, ONNX Runtime on AVX2 without VNNI (tests/avx2_ort.py: natively,
or emulated on a VNNI host), layer by layer, on small random-weight models with what yolov3-tiny lacks:
grouped convs (pairs of u8 x s8 products saturate within each group's GEMM), depthwise convs (MLAS's
depthwise kernel: exact), channel multipliers, odd sizes, stride 2, maxpool 2/1, upsample (also with scale=), a route of
two grids. The `onnxruntime` profile's exports of the same models run on the same device (its u8 x u8
kernel sums exactly there too), and `ort_reduce_range`'s (7-bit weights: no pair can saturate)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import engine  # noqa: E402
from avx2_ort import run_on_avx2  # noqa: E402
from helpers import IMAGES  # noqa: E402

from engine.calib.collect import collect  # noqa: E402
from engine.export.onnx_int8 import build_int8  # noqa: E402
from engine.quant.executor import Executor  # noqa: E402
from engine.quant.profiles import get_profile  # noqa: E402
from engine.quant.profiles.avx2_u8s8 import host_u8s8_kernel, pair_saturation_correction  # noqa: E402
from engine.quant.qmodel import quantize_model  # noqa: E402

PHOTOS = sorted(IMAGES.glob("*.jpg"))
NET = "[net]\nwidth={w}\nheight={h}\nchannels=3\n\n"


def conv(filters, size, stride, groups=1, act="leaky"):
    return (f"[convolutional]\nbatch_normalize=1\nfilters={filters}\nsize={size}\nstride={stride}\npad=1\n"
            f"groups={groups}\nactivation={act}\n\n")


YOLO = "[yolo]\nmask=0,1,2\nanchors=10,14,  23,27,  37,58\nclasses=1\nnum=3\n\n"
CFGS = {     # name: (cfg, grouped layers whose QLinearConv pairs saturate on this input)
    "depthwise": (NET.format(w=33, h=31) + conv(16, 3, 1) + conv(16, 3, 1, 16) + conv(16, 1, 1), ()),
    "groups2": (NET.format(w=33, h=31) + conv(16, 3, 1) + conv(16, 3, 1, 2) + conv(8, 3, 2, 2, "linear"), (2,)),
    "odd_groups": (NET.format(w=29, h=35) + conv(12, 3, 1) + conv(12, 3, 2, 4) + "[maxpool]\nsize=2\nstride=1\n\n"
                   + conv(6, 3, 1, 2), (3,)),
    "multiplier": (NET.format(w=32, h=32) + conv(8, 3, 1) + conv(16, 3, 1, 8) + "[upsample]\nstride=2\n\n"
                   + conv(8, 1, 1, 4), (1, 3)),
    "stride2": (NET.format(w=35, h=33) + conv(16, 3, 2) + conv(8, 3, 2) + conv(8, 1, 2, act="linear"), ()),
    "grouped_head": (NET.format(w=64, h=64) + conv(4, 3, 2) + conv(18, 3, 1, 2, "linear").replace(
        "batch_normalize=1", "batch_normalize=0") + YOLO, ()),       # the head conv: ConvInteger, exact
    "upsample_scale": (NET.format(w=32, h=32) + conv(8, 3, 1) + conv(8, 3, 2) + "[upsample]\nstride=2\nscale=0.5\n\n"
                       + "[route]\nlayers=-1,0\n\n" + conv(8, 3, 1, 2), (4,)),
    "route": (NET.format(w=32, h=32) + conv(8, 3, 1) + conv(8, 3, 1, 2) + "[route]\nlayers=-1,-2\n\n"
              + conv(8, 3, 1, 2), (3,)),
}
PROFILES = ("avx2_u8s8", "onnxruntime", "ort_reduce_range")


@pytest.fixture(scope="module")
def device_runs(tmp_path_factory):
    """Per (model, profile): the model, its quantized model, the input, our INT outputs, and ORT's on the device
    with and without graph optimization. Percentile 90 clips a tenth of each tensor to code 255, so that
    pairs of large codes times large weights (the ones that leave int16) occur in every layer."""
    tmp = tmp_path_factory.mktemp("avx2")
    cases, jobs = {}, []
    for name, (text, _) in CFGS.items():
        (tmp / f"{name}.cfg").write_text(text)
        model = engine.load(str(tmp / f"{name}.cfg"), random_weights=3)
        stats = collect(model, PHOTOS[:2], progress=False)
        x = model.preprocess(PHOTOS[2]).x
        for prof in PROFILES:
            qm = quantize_model(model, stats, "percentile", per_channel=True, percentile=90, profile=prof)
            proto = build_int8(model, qm, all_outputs=True)
            values, _ = Executor(model, qm, "int").run(x)
            cases[name, prof] = (model, qm, proto, values)
            for optimize in (True, False):
                jobs.append((f"{name}/{prof}/{optimize}", proto.SerializeToString(),
                             {"input": np.ascontiguousarray(x[None], np.float32)}, optimize))
    return cases, run_on_avx2(jobs, tmp)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", CFGS)
def test_every_layer_equals_ort_on_avx2_without_vnni(device_runs, name, profile):
    cases, ort = device_runs
    model, _, proto, values = cases[name, profile]
    kinds = {n.op_type for n in proto.graph.node}
    assert "QLinearConv" in kinds and (name not in ("route", "upsample_scale") or "QLinearConcat" in kinds)
    for optimize in (True, False):
        got = ort[f"{name}/{profile}/{optimize}"]
        assert sorted(got) == sorted(f"layer{l.index}" for l in model.layers if l.kind != "yolo")
        bad = {n: int(np.count_nonzero(values[int(n[5:])].float() != y[0])) for n, y in got.items()}
        assert not any(bad.values()), (optimize, bad)


@pytest.mark.parametrize("name", CFGS)
def test_grouped_convs_saturate_per_group_and_depthwise_stays_exact(device_runs, name):
    """The cases above are not vacuous: the grouped convs listed in CFGS have pairs that leave int16 on this
    input (the exact sums, which the profile computed for every grouped conv before, differ from the device's),
    while the depthwise conv and the grouped head conv would have some if MLAS paired their products, and the
    device's sums are exact."""
    cases, _ = device_runs
    model, qm, _, values = cases[name, "avx2_u8s8"]
    prof = get_profile("avx2_u8s8")
    ex = Executor(model, qm, "int")
    for layer in model.layers:
        if layer.kind != "convolutional" or layer.groups == 1:
            continue
        x, lq = values[layer.inputs[0]].q, qm.layers[layer.index]
        corr = prof.grouped_correction(layer, x, lq)
        if ex.int32_out(layer.index):     # a head conv is a ConvInteger: exact, although QLinearConv's pairs would
            assert corr is not None and np.count_nonzero(corr) > 0     # saturate (and the device agrees with us)
            continue
        assert (corr is not None and np.count_nonzero(corr) > 0) == (layer.index in CFGS[name][1]), layer.index
        if lq.w_q.shape[1] == 1 and lq.w_q.shape[0] == layer.groups:         # depthwise: never paired
            paired = sum(np.count_nonzero(c) for g in range(layer.groups) if (c := pair_saturation_correction(
                x.q[g:g + 1], x.zero_point, lq.w_q[g:g + 1], layer.stride, layer.padding)) is not None)
            assert corr is None and paired > 0


@pytest.mark.parametrize("name", CFGS)
def test_onnxruntime_profile_equals_this_hosts_ort_on_odd_shapes(name, tmp_path):
    """The `onnxruntime` profile (uint8 weights: exact on every x86 kernel) on this host's own ORT too."""
    from engine.export.onnx_int8 import run_ort
    (tmp_path / f"{name}.cfg").write_text(CFGS[name][0])
    model = engine.load(str(tmp_path / f"{name}.cfg"), random_weights=3)
    qm = quantize_model(model, collect(model, PHOTOS[:2], progress=False), "percentile", per_channel=True,
                        percentile=90, profile="onnxruntime")
    x = model.preprocess(PHOTOS[2]).x
    ours = Executor(model, qm, "int").forward(x)
    for signed in (False, True) if host_u8s8_kernel() == "vnni" else (False,):    # --int8-weights: VNNI's exact
        got = run_ort(build_int8(model, qm, all_outputs=True, signed_weights=signed), x)            # u8 x s8 kernel
        assert len(got) == sum(l.kind != "yolo" for l in model.layers)
        assert not any(np.count_nonzero(ours[int(n[5:])] != y) for n, y in got.items()), signed


def test_yolov3_tiny_equals_ort_on_avx2_without_vnni(tiny, tiny_stats, tmp_path):
    """The profile's headline claim (measured on the former AVX2 host until stop 26), on the device again:
    the official weights, where 8-bit pairs saturate on many layers."""
    qm = quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="avx2_u8s8")
    exact = quantize_model(tiny, tiny_stats, "minmax", per_channel=True, profile="onnxruntime")
    x = tiny.preprocess(PHOTOS[0]).x
    ours = Executor(tiny, qm, "int").forward(x)
    assert np.count_nonzero(ours[2] != Executor(tiny, exact, "int").forward(x)[2]) > 100     # saturation is real
    feeds = {"input": np.ascontiguousarray(x[None], np.float32)}
    got = run_on_avx2([("tiny", build_int8(tiny, qm, all_outputs=True).SerializeToString(), feeds, True)],
                      tmp_path)["tiny"]
    assert len(got) == sum(l.kind != "yolo" for l in tiny.layers)
    bad = {n: int(np.count_nonzero(ours[int(n[5:])] != y[0])) for n, y in got.items()}
    assert not any(bad.values()), bad


def test_ungrouped_stride2_convs_on_odd_sizes_saturate(device_runs):
    """The stride-2 case is not vacuous either: its convs' int8-weight pairs saturate (the avx2_u8s8 run differs
    from the onnxruntime profile's exact sums on the same grids and weights) and still equal the device."""
    cases, _ = device_runs
    sat, exact = cases["stride2", "avx2_u8s8"][3], cases["stride2", "onnxruntime"][3]
    assert all(np.count_nonzero(sat[i].q.q != exact[i].q.q) > 0 for i in (0, 1)), "no saturation"
