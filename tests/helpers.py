"""Shared test helpers: paths to ../shared, OpenCV per-layer reference outputs, detection matching."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QW_SHARED", ROOT.parent / "shared"))
MODELS = Path(os.environ.get("QW_MODEL_DIR", SHARED / "models"))
CFG_DIR = SHARED / "models" / "cfg"
IMAGES = SHARED / "images"
REFERENCE = SHARED / "reference"
TINY_CFG = SHARED / "models" / "yolov3-tiny.cfg"
TINY_WEIGHTS = MODELS / "yolov3-tiny.weights"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ACTIVATION_PREFIXES = ("leaky", "mish", "relu", "logistic", "swish", "tanh", "elu", "selu", "relu6")


def darknet_detections() -> dict:
    return json.loads((REFERENCE / "darknet-yolov3-tiny-detections.json").read_text())["images"]


def opencv_layer_outputs(cfg: Path, weights: Path, x: np.ndarray) -> dict[int, np.ndarray]:
    """Run OpenCV's Darknet importer and return {darknet layer index: output (C,H,W) or flat}.

    OpenCV splits a Darknet layer into ops named `<op>_<i>`; activation ops carry the index of the
    next layer (leaky_1 belongs to layer 0). The last op of each Darknet layer is its output.
    """
    import cv2
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    owner: dict[int, str] = {}
    for name in net.getLayerNames():
        m = re.fullmatch(r"([a-z]+)_(\d+)", name)
        if not m or m.group(1) in ("permute", "yolo", "detection", "region"):
            continue
        idx = int(m.group(2)) - (1 if m.group(1) in ACTIVATION_PREFIXES else 0)
        owner[idx] = name
    net.setInput(x[None].astype(np.float32))
    names = list(owner.values())
    blobs = [np.asarray(b)[0] for b in net.forward(names)]
    for k, name in enumerate(names):
        # OpenCV recycles the buffer of an output that only a later [route] reads when several outputs
        # are requested at once, and returns zeros for it; asking for that one output alone is reliable.
        if not np.count_nonzero(blobs[k]):     # not .any(): a recycled buffer's NaN warned 'invalid value in reduce'
            net.setInput(x[None].astype(np.float32))
            blobs[k] = np.asarray(net.forward(name))[0]
    return dict(zip(owner.keys(), blobs))


def max_rel_diff(y: np.ndarray, ref: np.ndarray) -> float:
    """max|y - ref| / max(1, max|ref|): the tolerance measure used by the golden tests.

    Any inf or NaN on either side gives inf: NaN would make every `<= TOL` / `> TOL` check answer
    False, and a `> TOL` guard would then pass silently (OpenCV's recycled buffers can hold inf)."""
    if not (np.isfinite(y).all() and np.isfinite(ref).all()):
        return float("inf")
    return float(np.abs(y.astype(np.float64).reshape(-1) - ref.reshape(-1)).max() / max(1.0, float(np.abs(ref).max())))


def iou_xyxy(a: dict, b: dict) -> float:
    ix = max(0.0, min(a["x2"], b["x2"]) - max(a["x1"], b["x1"]))
    iy = max(0.0, min(a["y2"], b["y2"]) - max(a["y1"], b["y1"]))
    inter = ix * iy
    area = lambda d: (d["x2"] - d["x1"]) * (d["y2"] - d["y1"])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def match_detections(ours: list[dict], ref: list[dict], min_iou: float) -> list[tuple[dict, dict | None]]:
    """Greedy one-to-one matching of reference detections to ours by class and IoU."""
    free = list(ours)
    pairs = []
    for r in sorted(ref, key=lambda d: -d["score"]):
        cands = [(iou_xyxy(o, r), k) for k, o in enumerate(free) if o["class_id"] == r["class_id"]]
        best = max(cands, default=(0.0, -1))
        if best[0] >= min_iou:
            pairs.append((r, free.pop(best[1])))
        else:
            pairs.append((r, None))
    return pairs


def resized_cfg(src: Path, size: int, folder: Path) -> Path:
    """A copy of `src` with [net] width/height set to `size` (engine.darknet.cfg.with_input_size)."""
    from engine.darknet.cfg import with_input_size
    out = folder / src.name
    out.write_text(with_input_size(src.read_text(), size, size))
    return out


# One cfg per family of layer types the shipped cfgs hold: name -> (cfg in CFG_DIR, (width, height), slim).
# Small inputs, and with slim > 1 a fraction of the filters, keep a forward of each well under a second;
# the layer types, their order and the graph are the cfg's own.
CFG_FAMILIES = {
    "yolov2-tiny": ("yolov2-tiny.cfg", (96, 96), 1),            # [maxpool] size=2 stride=1, [region]
    "yolov2": ("yolov2.cfg", (160, 96), 8),                     # [reorg], [route] of two, [region]; not square
    "yolov3-tiny-prn": ("yolov3-tiny-prn.cfg", (96, 96), 1),    # [shortcut] fused into its conv, [upsample], [yolo]
    "yolov3-spp": ("yolov3-spp.cfg", (128, 96), 8),             # SPP: [maxpool] stride 1 size 5/9/13, [route] of four
    "yolov4-tiny": ("yolov4-tiny.cfg", (96, 96), 1),            # [route] groups=2 group_id=1
    "resnet18": ("resnet18.cfg", (96, 96), 1),                  # [shortcut] chains, [avgpool], [softmax]
    "yolov1-tiny": ("yolov1-tiny.cfg", (96, 96), 1),            # [connected] into [detection]
    "vgg-16": ("vgg-16.cfg", (96, 96), 8),                      # [crop], [dropout], [connected], [softmax]
}
HEAD_SECTIONS = ("yolo", "region", "detection")


def slimmed(text: str, factor: int) -> str:
    """Cfg text with the filters of every [convolutional] and the outputs of every [connected] divided by
    `factor` (at least 8), except a layer right before a head, whose count the head fixes. Layers whose
    counts were equal stay equal, so [shortcut] and [route] groups still fit."""
    sections = re.split(r"(?m)^(?=\[)", text)
    kinds = [sec[1:sec.find("]")].strip() if sec.startswith("[") else "" for sec in sections]
    keys = {"convolutional": "filters", "connected": "output"}
    for i, kind in enumerate(kinds):
        if kind in keys and (kinds[i + 1] if i + 1 < len(kinds) else "") not in HEAD_SECTIONS:
            sections[i] = re.sub(rf"(?m)^{keys[kind]}\s*=\s*(\d+)",
                                 lambda m: f"{keys[kind]}={max(8, int(m.group(1)) // factor)}", sections[i])
    return "".join(sections)


def family_cfg(name: str, folder: Path) -> Path:
    """The cfg of CFG_FAMILIES[name] at its test size (and slimmed), written into `folder`; a [crop]
    crops 16 pixels less than the input's smaller side."""
    from engine.darknet.cfg import with_input_size
    cfg, (w, h), factor = CFG_FAMILIES[name]
    text = with_input_size((CFG_DIR / cfg).read_text(), w, h)
    text = slimmed(text, factor) if factor > 1 else text
    text = re.sub(r"(?m)^crop_(height|width)\s*=\s*\d+", lambda m: f"crop_{m.group(1)}={min(w, h) - 16}", text)
    out = folder / cfg
    out.write_text(text)
    return out


def reorg_cpu(x: np.ndarray, s: int) -> np.ndarray:
    """pj blas.c:reorg_cpu(x, w, h, c, batch=1, stride, forward=0) as called by forward_reorg_layer."""
    c, h, w = x.shape
    flat = x.reshape(-1)
    out = np.empty_like(flat)
    out_c = c // (s * s)
    for k in range(c):
        for j in range(h):
            for i in range(w):
                in_index = i + w * (j + h * k)
                c2 = k % out_c
                offset = k // out_c
                w2 = i * s + offset % s
                h2 = j * s + offset // s
                out_index = w2 + w * s * (h2 + h * s * c2)
                out[in_index] = flat[out_index]
    return out.reshape(c * s * s, h // s, w // s)


def require(ok: bool, why: str, what: str = "test", hint: str = "") -> None:
    """Skip when a prerequisite is missing on a developer's machine; fail in CI, which installs them all
    (`.ci/run`), so nothing CI can run is ever skipped there."""
    if ok:
        return
    import pytest
    if IN_CI:
        pytest.fail(f"{what} prerequisite missing in CI: {why}{hint}")
    pytest.skip(why)


def random_conv3x3(rng: np.random.Generator, c: int, h: int, w: int, n: int):
    """A float32 3x3 conv for kernel tests: input (c, h, w), weights (n, c, 3, 3) scaled by the fan-in
    (outputs of order 1), bias (n,)."""
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((n, c, 3, 3)) / np.sqrt(c * 9)).astype(np.float32)
    return x, wt, rng.standard_normal(n).astype(np.float32)


def assert_close(y: np.ndarray, ref: np.ndarray, what: str, rtol: float = 1e-4) -> None:
    """y against a float64 reference: max |diff| within rtol of max(1, max |ref|)."""
    assert y.shape == ref.shape, f"{what}: shape {y.shape}, expected {ref.shape}"
    err = float(np.abs(y.astype(np.float64) - ref).max())
    tol = rtol * max(1.0, float(np.abs(ref).max()))
    assert err <= tol, f"{what}: max |diff| {err:.3g} > {tol:.3g}"


def assert_kernel_on_layer(kind: str, c: int, side: int, n: int, what: str) -> None:
    """A real layer's shape (c -> n @side, 3x3 stride 1, leaky) through `conv2d`: the chooser picks
    `kind`; 1 and 2 threads give the same bits; first and last filters against the direct conv."""
    from engine.kernels import threads
    from engine.kernels.conv import choice, conv2d
    from engine.kernels.gemm import conv2d_naive
    from engine.kernels.scratch import Scratch
    require(bool(threads._kernel_blas()), "no BLAS found by threadpoolctl: thread count cannot be set")
    x, wt, b = random_conv3x3(np.random.default_rng(c), c, side, side, n)
    assert choice(c, side, side, n, 3, 1, 1) == kind
    with threads.blas_limit(1):
        one = conv2d(x, wt.reshape(n, -1), b, 3, 1, 1, 1, Scratch(), act="leaky")
    with threads.blas_limit(2):
        y = conv2d(x, wt.reshape(n, -1), b, 3, 1, 1, 1, Scratch(), act="leaky")
    assert np.array_equal(y, one)
    ref = conv2d_naive(x, wt[[0, n - 1]], b[[0, n - 1]], 1, 1)
    assert_close(y[[0, n - 1]], np.maximum(ref, 0.1 * ref), f"{what} {c}->{n} @{side}, leaky")


def dark_horse_case(tiny):
    """The faintest FLOAT horse (score .25-.27) of horses.jpg darkened, and a function telling whether
    a quantized model's INT run finds it again (same class, IoU >= 0.5): the lost detection the head
    refinements are tested on."""
    from PIL import Image
    from engine.darknet.detect import detect_outputs
    from engine.quant.executor import Executor, FloatView
    from engine.quant.explain import box_iou
    from engine.quant.valset import variant
    p = tiny.preprocess(variant(Image.open(IMAGES / "horses.jpg").convert("RGB"), "dark"))
    truth = [d for d in detect_outputs(tiny, tiny.forward(p.x), p, 0.25, 0.45) if d.name == "horse"]
    target = min(truth, key=lambda d: d.score)
    assert 0.25 <= target.score < 0.27
    # The detection threshold sits halfway from .25 to the FLOAT score, where FLOAT still finds the horse:
    # at .25 itself the plain uint8 INT score was a knife edge (.2506 with Pillow 13 / NumPy 2.4, below
    # .25 before), and halfway leaves a margin on both sides (plain .2506, head .273, margin .307).
    thresh = (0.25 + target.score) / 2

    def found(qm) -> bool:
        dets = detect_outputs(tiny, FloatView(Executor(tiny, qm, "int").run(p.x)[0]), p, thresh, 0.45)
        return any(d.class_id == target.class_id and box_iou(target, d) >= 0.5 for d in dets)
    return found


ONE_CONV_CFG = """[net]
width=8
height=8
channels=3

[convolutional]
filters=4
size=3
stride=1
pad=1
activation=leaky
"""


def one_conv_session(tmp_path: Path, mode: str = "float"):
    """A Session on an 8x8 one-conv model (random weights, cfg written to tmp_path/t.cfg) with its minmax
    quantized model: for tests of saving and files, where the model's size does not matter."""
    import engine
    from engine.calib.collect import collect
    from engine.quant.qmodel import quantize_model
    from engine.session import Session
    cfg = tmp_path / "t.cfg"
    cfg.write_text(ONE_CONV_CFG)
    m = engine.load(cfg, random_weights=0)
    x = np.random.default_rng(0).random(m.input_shape, dtype=np.float32)
    return Session(m, quantize_model(m, collect(m, [x], progress=False), "minmax"), mode, x)


def frozen_arrays(obj) -> dict[str, np.ndarray]:
    """A copy of a Model's or QuantizedModel's `to_arrays()` (parameters or int8 arrays, scales, float_layers
    and meta as JSON): what must be the same after work that promises to change nothing."""
    return {k: np.array(v, copy=True) for k, v in obj.to_arrays().items()}


def same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def cli(capsys, *args) -> tuple[int, str, str]:
    """`python -m engine ARGS` in this process: (exit code, stdout, stderr); an argparse refusal's
    SystemExit gives its code."""
    from engine.cli.main import main
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def cli_error_line(capsys, *args) -> str:
    """The one line `python -m engine ARGS` refuses them with: exit 2, nothing on stdout, a single "error: "
    line on stderr (never a traceback, never a second line)."""
    code, out, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: "), (code, out, err)
    return lines[0]


def explorer_with_a_fix_picked(model, qmodel):
    """(session, Explorer, its Explain tab) on horses.jpg in INT, explained, with the first explanation that has
    a fix picked (the graph then shows that detection's recovery colours)."""
    import engine
    from qwidgets import Explorer
    s = engine.Session(model, qmodel, "int", image=IMAGES / "horses.jpg")
    ex = Explorer(s, background=False)
    view = ex.explain_view
    view.explain_button.click()
    fixable = [k for k, e in enumerate(view.explanations) if e.fix]
    assert fixable, "no explanation of horses.jpg has a fix"
    view.pick.value = fixable[0]
    return s, ex, view
