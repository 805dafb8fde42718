"""ONNX float export: onnxruntime on the exported graph equals the engine's FLOAT outputs.

Tolerance: max|ort - ours| <= 1e-4 * max(1, max|ours|) per compared tensor (summation order of the
convolutions differs); pure data-movement layers (maxpool, reorg, route, upsample) must be exact.
Random-weight zoo models run at 288x288 (odd 9x9 grid, like 13x13 at 416; yolov2 at 160, 5x5) to keep
the tests quick.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import engine
from engine.errors import EngineError, UnsupportedError
from engine.model import from_cfg_text, normalise_random
from helpers import CFG_DIR, REFERENCE, ROOT, TINY_CFG, max_rel_diff, resized_cfg

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from engine.export import build_onnx, export_onnx  # noqa: E402

TOL = 1e-4


def run_ort(model_or_path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run an ONNX ModelProto or file on x ((C,H,W) or (N,C,H,W)); {output name: batch-0 (or full) array}."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    src = str(model_or_path) if isinstance(model_or_path, Path) else model_or_path.SerializeToString()
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    batched = x if x.ndim == 4 else x[None]
    res = sess.run(names, {"input": np.ascontiguousarray(batched, np.float32)})
    return {n: (r if x.ndim == 4 else r[0]) for n, r in zip(names, res)}


def compare(outs: list[np.ndarray], got: dict[str, np.ndarray]) -> dict[str, float]:
    """Check every exported `layer{i}` against the engine's outs[i]; returns {name: max rel diff}."""
    diffs = {}
    for name, y in got.items():
        ref = outs[int(name.removeprefix("layer"))]
        assert y.shape == ref.shape, f"{name}: onnx {y.shape}, engine {ref.shape}"
        # equal arrays first: a maxpool window lying wholly in the padding is -inf in both engines
        diffs[name] = 0.0 if np.array_equal(y, ref) else max_rel_diff(y, ref)
        assert diffs[name] <= TOL, f"{name}: max rel diff {diffs[name]:.2e} > {TOL}"
    return diffs


# --------------------------------------------------------------------------- real yolov3-tiny
@pytest.fixture(scope="module")
def tiny_dog(tiny):
    x = np.load(REFERENCE / "opencv-yolov3-tiny-dog.npz")["input"]
    return x, tiny.forward(x)


@pytest.mark.parametrize("heads, names", [("raw", ["layer15", "layer22"]), ("activated", ["layer16", "layer23"])])
def test_yolov3_tiny_heads_match_float_outputs(tiny, tiny_dog, tmp_path, heads, names):
    x, outs = tiny_dog
    path = export_onnx(tiny, tmp_path / "tiny.onnx", heads=heads)
    got = run_ort(path, x)
    assert list(got) == names
    diffs = compare(outs, got)
    print(f"yolov3-tiny heads={heads}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))


def test_yolov3_tiny_nodes_are_named_per_layer_and_heads_described(tiny):
    proto = build_onnx(tiny)
    names = {n.name for n in proto.graph.node}
    assert {"layer0_conv", "layer0_leaky", "layer1_maxpool", "layer17_route", "layer19_resize",
            "layer20_concat", "layer15_conv"} <= names
    assert all(re.fullmatch(r"layer\d+_[a-z_]+\d*", n.name) for n in proto.graph.node)
    meta = {p.key: p.value for p in proto.metadata_props}
    heads = json.loads(meta["darknet_heads"])
    assert [(h["layer"], h["output"], h["mask"], h["activated"]) for h in heads] == [
        (16, "layer15", [3, 4, 5], False), (23, "layer22", [0, 1, 2], False)]
    assert heads[0]["anchors"][:4] == [10, 14, 23, 27]


# --------------------------------------------------------------------------- zoo cfgs, random weights
@pytest.fixture(scope="module")
def small_cfgs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cfg_resized")


# yolov2 (50M parameters) at 160 and without the second (raw) export: its cost is in the weights
@pytest.mark.parametrize("name, size, raw", [("yolov2-tiny", 288, True), ("yolov2", 160, False),
                                             ("yolov4-tiny", 288, True), ("yolov3-tiny-prn", 288, True),
                                             ("darknet19", 288, True)])
def test_zoo_model_every_layer_matches_float_outputs(name, size, raw, small_cfgs):
    model = engine.load(resized_cfg(CFG_DIR / f"{name}.cfg", size, small_cfgs), random_weights=0)
    x = np.random.default_rng(1).random(model.input_shape, dtype=np.float32)
    outs = model.forward(x)
    got = run_ort(build_onnx(model, heads="activated", all_outputs=True), x)
    assert len(got) == len(model.layers)
    diffs = compare(outs, got)
    heads = [int(i) for i in model.graph.output_ids]
    report = {f"layer{model.layers[i].inputs[0]}": diffs[f"layer{model.layers[i].inputs[0]}"] for i in heads
              if model.layers[i].kind in ("yolo", "region")}
    if raw:
        report = compare(outs, run_ort(build_onnx(model, heads="raw"), x))
    report.update({f"layer{i}": diffs[f"layer{i}"] for i in heads})
    print(f"{name}@{size} worst layer {max(diffs.values()):.2e}; heads " +
          ", ".join(f"{k} {v:.2e}" for k, v in report.items()))


# --------------------------------------------------------------------------- synthetic cfgs
def small_model(body: str, h: int, w: int, c: int = 3, seed: int = 0):
    model = from_cfg_text(f"[net]\nchannels={c}\nheight={h}\nwidth={w}\n{body}")
    normalise_random(model, seed)
    return model


def check_model(model, x=None, *, exact=False, **kw) -> dict[str, np.ndarray]:
    if x is None:
        x = np.random.default_rng(2).standard_normal(model.input_shape).astype(np.float32)
    outs = model.forward(x)
    got = run_ort(build_onnx(model, all_outputs=True, **kw), x)
    assert len(got) == sum(1 for l in model.layers if kw.get("heads") == "activated" or
                           l.kind not in ("yolo", "region", "detection"))
    compare(outs, got)
    if exact:
        for name, y in got.items():
            np.testing.assert_array_equal(y, outs[int(name[5:])], err_msg=name)
    return got


MAXPOOLS = """
[dropout]
[maxpool]
size=2
stride=2
[route]
layers=0
[maxpool]
size=2
stride=1
[route]
layers=0
[maxpool]
size=3
stride=2
padding=0
[route]
layers=0
[maxpool]
size=5
stride=1
[route]
layers=0
[maxpool]
size=2
stride=2
padding=4
[route]
layers=0
[maxpool]
size=3
stride=3
[route]
layers=0
[maxpool]
size=2
stride=3
padding=3
"""


def test_maxpool_darknet_padding_is_exact_on_negative_inputs():
    """Padded cells never win (-inf, not 0): all inputs are negative, odd and non-square sizes."""
    model = small_model(MAXPOOLS, 13, 15)
    x = -np.abs(np.random.default_rng(3).standard_normal(model.input_shape)).astype(np.float32) - 1
    check_model(model, x, exact=True)


DATA_MOVES = """
[dropout]
[reorg]
stride=2
[upsample]
stride=2
[reorg3d]
stride=2
[route]
layers=1,3
groups=2
group_id=1
[upsample]
stride=3
"""


def test_reorg_route_upsample_are_exact_permutations():
    """pj reorg (reinterpreting channel order), space-to-depth, route groups, nearest upsample."""
    model = small_model(DATA_MOVES, 6, 10, c=8)
    assert [l.out_shape for l in model.layers[1:]] == [(32, 3, 5), (32, 6, 10), (128, 3, 5), (80, 3, 5),
                                                       (80, 9, 15)]
    x = np.arange(np.prod(model.input_shape), dtype=np.float32).reshape(model.input_shape)
    check_model(model, x, exact=True)


ACTIVATIONS = ["leaky", "linear", "relu", "logistic", "mish", "swish", "relu6", "tanh", "elu", "selu",
               "relie", "ramp", "loggy", "hardtan"]


def test_every_engine_activation_has_an_onnx_form():
    from engine.export.onnx_ops import ACTS
    from engine.layers.activations import ACTIVATIONS as ENGINE_ACTIVATIONS
    assert sorted(ENGINE_ACTIVATIONS.names()) == sorted(ACTIVATIONS) == sorted(ACTS.names())


@pytest.mark.parametrize("opset", [17, 18])
def test_every_activation_grouped_and_strided_convs_match(opset):
    convs = "".join(f"[convolutional]\nbatch_normalize={k % 2}\nfilters=6\nsize={1 + 2 * (k % 2)}\npad=1\n"
                    f"groups={3 if k % 3 == 0 else 1}\nstride={2 if k == 4 else 1}\nactivation={a}\n"
                    for k, a in enumerate(ACTIVATIONS))
    route = "[route]\nlayers=-1,-3\ngroups=2\ngroup_id=1\n"
    model = small_model("[convolutional]\nfilters=6\nsize=3\npad=1\nactivation=leaky\n" + convs + route, 10, 12)
    check_model(model, opset=opset)
    ops = {n.op_type for n in build_onnx(model, opset=opset).graph.node}
    assert ("Mish" in ops) == (opset >= 18)


SHORTCUTS = """
[convolutional]
filters=8
size=3
pad=1
activation=leaky
[convolutional]
filters=4
size=3
stride=2
pad=1
activation=leaky
[shortcut]
from=0
activation=linear
[convolutional]
filters=16
size=1
activation=linear
[shortcut]
from=1
alpha=0.5
beta=2
activation=leaky
[upsample]
stride=2
scale=0.5
[shortcut]
from=1
activation=linear
[shortcut]
from=-3
activation=relu
"""


def test_shortcut_with_unequal_shapes_and_upsample_scale_match():
    """pj shortcut_cpu: larger `from` sampled every st pixels, smaller one scattered every `sample`."""
    model = small_model(SHORTCUTS, 14, 15)
    assert model.layers[2].in_shapes == ((4, 7, 8), (8, 14, 15))
    assert model.layers[6].in_shapes == ((16, 14, 16), (4, 7, 8))
    check_model(model)


CLASSIFIER = """
[crop]
crop_height=8
crop_width=8
[convolutional]
filters=8
size=3
pad=1
activation=leaky
[reorg3d]
stride=2
[reorg]
stride=2
[connected]
output=30
batch_normalize=1
activation=relu
[dropout]
probability=0.5
[softmax]
groups=3
temperature=2
[connected]
output=52
activation=linear
[detection]
side=2
num=2
classes=3
coords=4
softmax=1
"""


def test_crop_reorg_connected_softmax_detection_match():
    model = small_model(CLASSIFIER, 11, 12)
    check_model(model, heads="activated")


HEADS = """
[convolutional]
filters=21
size=1
activation=linear
[yolo]
mask=0,1,2
anchors=1,2,3,4,5,6
num=3
classes=2
scale_x_y=1.05
[route]
layers=0
[yolo]
mask=0,1,2
anchors=1,2,3,4,5,6
num=3
classes=2
new_coords=1
scale_x_y=2.0
[route]
layers=0
[region]
anchors=1,2,3,4,5,6
num=3
classes=2
softmax=1
[route]
layers=0
[region]
anchors=1,2,3,4,5,6
num=3
classes=2
softmax=0
"""


def test_activated_heads_match_yolo_and_region_layers():
    model = small_model(HEADS, 5, 7)
    got = check_model(model, heads="activated")
    assert {"layer1", "layer3", "layer5", "layer7"} <= set(got)
    raw = run_ort(build_onnx(model, heads="raw"), np.zeros(model.input_shape, np.float32))
    assert list(raw) == ["layer0", "layer2", "layer4", "layer6"]   # each head reads the layer before it


def test_dynamic_batch_runs_each_image_independently():
    model = small_model(SHORTCUTS, 14, 15)
    xs = np.random.default_rng(4).standard_normal((2, *model.input_shape)).astype(np.float32)
    got = run_ort(build_onnx(model, dynamic_batch=True), xs)["layer7"]
    for k in range(2):
        assert max_rel_diff(got[k], model.forward(xs[k])[7]) <= TOL


# --------------------------------------------------------------------------- errors, optional onnx
def test_layer_without_emitter_raises_unsupported_naming_the_layer(monkeypatch):
    from engine.export.onnx_ops import EMITTERS
    monkeypatch.delitem(EMITTERS._items, "upsample")
    model = small_model(SHORTCUTS, 14, 15)
    with pytest.raises(UnsupportedError, match=r"layer 5\).*\[upsample\] has no ONNX export"):
        build_onnx(model)


def test_bad_heads_and_opset_are_value_errors(tiny):
    with pytest.raises(ValueError, match="heads="):
        build_onnx(tiny, heads="decoded")
    with pytest.raises(ValueError, match="opset=11"):
        build_onnx(tiny, opset=11)


def test_missing_onnx_raises_engine_error_naming_the_extra(monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(EngineError, match=r"reference"):
        build_onnx(tiny)


def test_missing_onnxruntime_raises_engine_error_naming_what_needed_it(monkeypatch, tiny, tmp_path):
    # every ORT session of the engine comes from onnx_graph.ort_session: the message names the caller's purpose
    from engine.export.onnx_graph import ort_session
    from engine.export.onnx_int8 import run_ort as run_int8
    from engine.export.onnx_qdq import check_qdq
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(EngineError, match=r"^running an ONNX export needs onnxruntime \(pip install onnxruntime\)$"):
        run_int8(tmp_path / "absent.onnx", np.zeros((3, 2, 2), np.float32))
    with pytest.raises(EngineError, match=r"^checking an ONNX export needs onnxruntime"):
        check_qdq(tiny, SimpleNamespace(profile="qwidgets"), tmp_path / "absent.onnx", [])   # a profile it exports
    with pytest.raises(EngineError, match=r"^a check of the helper needs onnxruntime"):
        ort_session(b"", "a check of the helper")


def test_engine_and_export_import_without_onnx():
    code = ("import sys; sys.modules['onnx'] = None; sys.modules['onnxruntime'] = None\n"
            "import engine, engine.export, engine.cli.export\nprint('ok')")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_export_cli_writes_onnx_and_weights(tmp_path):
    import argparse
    from engine.cli.export import add_export_parser
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers(dest="command", required=True))
    cfg = tmp_path / "s.cfg"
    cfg.write_text(f"[net]\nchannels=3\nheight=14\nwidth=15\n{SHORTCUTS}")
    model = small_model(SHORTCUTS, 14, 15)
    model.save(tmp_path / "s.npz")
    for fmt, out in (("onnx", "s.onnx"), ("weights", "s.weights")):
        args = parser.parse_args(["export", str(tmp_path / "s.npz"), "--format", fmt, "-o", str(tmp_path / out)])
        assert args.func(args) == 0
    x = np.random.default_rng(5).standard_normal(model.input_shape).astype(np.float32)
    assert max_rel_diff(run_ort(tmp_path / "s.onnx", x)["layer7"], model.forward(x)[7]) <= TOL
    again = engine.load(cfg, weights=tmp_path / "s.weights")
    for p, q in zip(model.params, again.params):
        for k in p:
            np.testing.assert_array_equal(p[k], q[k])


def test_external_data_export_is_a_crash_safe_pair(tiny, tiny_dog, tmp_path, monkeypatch):
    """Models over ~1.8 GB keep their weights in a side file (forced here with a 1 kB limit): the
    pair loads in ORT with the engine's outputs, a re-export replaces both and removes the old side
    file, and a crash while writing the ONNX file leaves the old pair whole and nothing behind
    (tests/engine/test_export_external_pair.py: the other failures and kills)."""
    import engine.export.onnx_float as of
    monkeypatch.setattr(of, "EXTERNAL_DATA_BYTES", 1000)
    x, outs = tiny_dog
    path = tmp_path / "tiny.onnx"
    export_onnx(tiny, path)
    first = sorted(p.name for p in tmp_path.iterdir())
    assert len(first) == 2 and re.fullmatch(r"tiny\.onnx\.[0-9a-f]{8}\.data", first[1]), first
    assert path.stat().st_size < 1_000_000 < (tmp_path / first[1]).stat().st_size
    assert compare(outs, run_ort(path, x))["layer22"] <= TOL

    export_onnx(tiny, path)              # a re-export: a new side file, the old one gone
    second = sorted(p.name for p in tmp_path.iterdir())
    assert len(second) == 2 and second[1] != first[1]

    def crash_on_onnx(proto, f):
        raise KeyboardInterrupt("killed while writing the ONNX file")

    monkeypatch.setattr(of, "write_proto", crash_on_onnx)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(tiny, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == second     # no new side file, no temp file
    assert compare(outs, run_ort(path, x))["layer22"] <= TOL        # the old pair still runs


def test_external_data_export_never_deletes_a_foreign_file_the_old_onnx_names(tiny, tmp_path, monkeypatch):
    """A hostile old ONNX file naming another file as its side file must not make an export delete it."""
    import onnx
    import engine.export.onnx_float as of
    monkeypatch.setattr(of, "EXTERNAL_DATA_BYTES", 1000)
    victim = tmp_path / "precious.bin"
    victim.write_bytes(b"keep me")
    proto = build_onnx(tiny)
    t = proto.graph.initializer[0]
    from onnx.external_data_helper import set_external_data
    set_external_data(t, location="precious.bin", offset=0, length=4)
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    (tmp_path / "tiny.onnx").write_bytes(proto.SerializeToString())
    export_onnx(tiny, tmp_path / "tiny.onnx")
    assert victim.read_bytes() == b"keep me"


def test_export_cli_size_sets_the_input_shape(tmp_path):
    """`export --size 320x256` exports the network at that input size, equal to the engine's forward there."""
    import argparse
    import onnx
    from engine.cli.export import add_export_parser
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers(dest="command", required=True))
    cfg = TINY_CFG
    weights = cfg.with_suffix(".weights")
    out = tmp_path / "t320.onnx"
    args = parser.parse_args(["export", str(cfg), "--weights", str(weights), "--size", "320x256", "-o", str(out)])
    assert args.func(args) == 0
    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 256, 320]
    model = engine.load(cfg, weights=weights, size="320x256")
    x = model.preprocess(np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)).x
    assert compare(model.forward(x), run_ort(out, x))["layer22"] <= TOL
