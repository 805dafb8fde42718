"""Hypothesis fuzzing of the cfg parser and layer builders (issue 8).

Mutated real cfgs (shrunk to 32x32, see cfgs.py), random text and random bytes must either build
a consistent graph or raise the engine's own CfgError / UnsupportedError; nothing else may
escape. Accepted small models are also run forward (and decoded when they have heads), checking
every output shape against the graph. Runs are derandomized, so CI is reproducible; about 1,500
examples in all (`FUZZ_EXAMPLES` below).
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cfgs import base_texts
from engine.darknet.cfg import parse_cfg, read_cfg
from engine.errors import CfgError, EngineError, EngineWarning, UnsupportedError
from engine.darknet.build import build_graph, build_layers
from engine.darknet.image import Preprocessed
from engine.model import Model
from engine.darknet.weights import random_params

FUZZ_EXAMPLES = {"mutations": 1000, "text": 300, "bytes": 200}
FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# accepted models are run forward only below these (random weights cost ~ params, forward ~ MACs)
MAX_FORWARD_PARAMS = 400_000
MAX_FORWARD_MACS = 30_000_000

NAMES = sorted(base_texts())
NUMBERS = st.one_of(st.integers(-3, 20), st.sampled_from([0, -1, 1, 2, 3, 4, 5, 7, 13, 32, 64, 255, 256, 1023,
                                                          4096, 65535, 65536, 1 << 20, -(1 << 31), (1 << 31) - 1,
                                                          1 << 31, 10 ** 6, 10 ** 12, 10 ** 19, 10 ** 30]),
                    st.integers(-10 ** 9, 10 ** 9))
WORDS = st.sampled_from(["foo=bar", "[bogus]", "[net]", "[route]", "[shortcut]", "[yolo]", "[region]", "[conv]",
                         "[maxpool]", "[upsample]", "[reorg]", "[connected]", "[softmax]", "[dropout]", "[avgpool]",
                         "[crop]", "[detection]", "[cost]", "[reorg3d]", "layers=-1,-3", "from=-2", "from=0",
                         "layers=0", "layers=5", "groups=2", "group_id=1", "stride=2", "size=3", "pad=1",
                         "padding=2", "filters=6", "activation=mish", "activation=bogus", "batch_normalize=1",
                         "mask=0,1,2", "anchors=1,2,3", "classes=1", "num=3", "dilation=2", "temperature=0",
                         "scale_x_y=1.05", "new_coords=1", "width=", "=", "[", "]", "[]", "#comment", ";x",
                         "height=nan", "channels=1", "stride=-1", "coords=4", "side=1", "output=2"])


@st.composite
def mutated_cfg(draw) -> tuple[str, str]:
    """(base name, text): a shrunk real cfg with 1-4 line-level mutations."""
    name = draw(st.sampled_from(NAMES))
    lines = base_texts()[name].splitlines()
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "number", "number", "number", "insert",
                                   "garbage", "whitespace", "truncate"]))
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        if not lines:
            lines = [draw(WORDS)]
            continue
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "number":
            numbered = [k for k, ln in enumerate(lines) if "=" in ln and any(c.isdigit() for c in ln)]
            if numbered:
                k = draw(st.sampled_from(numbered))
                key, value = lines[k].split("=", 1)
                parts = value.split(",")
                parts[draw(st.integers(0, len(parts) - 1))] = str(draw(NUMBERS))
                lines[k] = key + "=" + ",".join(parts)
        elif op == "insert":
            lines.insert(i, draw(WORDS))
        elif op == "garbage":
            lines.insert(i, draw(st.text(max_size=20)))
        elif op == "whitespace":
            ln = lines[i]
            k = draw(st.integers(0, len(ln)))
            lines[i] = ln[:k] + draw(st.sampled_from([" ", "\t", "  ", "\r", "\v", "\f"])) + ln[k:]
        elif op == "truncate":
            lines = lines[:i + 1]
            lines[-1] = lines[-1][:draw(st.integers(0, len(lines[-1])))]
    eol = draw(st.sampled_from(["\n", "\n", "\r\n", "\r"]))
    return name, eol.join(lines) + eol


def check_accepted(text: str, label: str, note=event) -> None:
    """Build; on success check graph consistency, and run small models forward (+ decode)."""
    try:
        cfg = parse_cfg(text, label)
        layers = build_layers(cfg)
    except (CfgError, UnsupportedError) as err:
        note(f"refused: {type(err).__name__}")
        return
    net = cfg.net
    in_shape = (net.get_int("channels", 3), net.get_int("height"), net.get_int("width"))
    for i, layer in enumerate(layers):
        assert layer.index == i
        assert all(-1 <= j < i for j in layer.inputs), f"layer {i} reads {layer.inputs}: references must point back"
        assert layer.in_shapes == tuple(in_shape if j < 0 else layers[j].out_shape for j in layer.inputs)
        assert len(layer.out_shape) == 3 and all(isinstance(v, int) and v >= 1 for v in layer.out_shape)
        assert layer.num_params == sum(int(np.prod(s)) for _, s in layer.param_shapes()) >= 0
    graph = build_graph(label, in_shape, layers)
    assert [n.out_shape for n in graph] == [layer.out_shape for layer in layers]
    if graph.total_params > MAX_FORWARD_PARAMS or graph.total_macs > MAX_FORWARD_MACS:
        note("accepted, too big to run")
        return
    note("accepted and run forward")
    model = Model(cfg, layers, random_params(layers))
    x = np.random.default_rng(0).random(model.input_shape, dtype=np.float32)
    with np.errstate(all="ignore"):  # random weights may overflow; only shapes are checked here
        outs = model.forward(x)
        assert [y.shape for y in outs] == [layer.out_shape for layer in layers]
        assert all(y.dtype == np.float32 for y in outs)
        if any(layer.is_head for layer in layers):
            from engine.darknet.detect import detect_outputs
            pre = Preprocessed(x, 40, 30, "letterbox")
            for d in detect_outputs(model, outs, pre, thresh=0.5, nms=0.45):
                assert 0 <= d.class_id < model.num_classes


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow of random weights in kernel threads
@settings(FUZZ, max_examples=FUZZ_EXAMPLES["mutations"])
@given(mutated_cfg())
def test_mutated_cfgs_build_consistently_or_raise_cfg_errors(case):
    name, text = case
    try:
        check_accepted(text, f"{name}-mutant.cfg")
    except EngineError as err:  # a forward/decode-time engine error would be a bug in the build checks
        pytest.fail(f"{name}: accepted by build_layers but failed later: {type(err).__name__}: {err}")


CFG_ALPHABET = st.sampled_from(list("[]=,-#; \t\r\n0123456789") + ["net", "convolutional", "route", "yolo",
                                                                  "filters", "size", "width", "height",
                                                                  "layers", "from", "shortcut", "maxpool"])


@settings(FUZZ, max_examples=FUZZ_EXAMPLES["text"])
@given(st.one_of(st.lists(CFG_ALPHABET, max_size=80).map("".join), st.text(max_size=200)))
def test_random_text_only_raises_cfg_errors(text):
    check_accepted("[net]\nwidth=8\nheight=8\n" + text, "random.cfg")
    check_accepted(text, "random.cfg")


_TMP = Path(tempfile.mkdtemp(prefix="qw-fuzz-cfg-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


@settings(FUZZ, max_examples=FUZZ_EXAMPLES["bytes"])
@given(st.sampled_from(NAMES), st.binary(max_size=64), st.integers(0, 10_000))
def test_random_bytes_in_cfg_files_only_raise_cfg_errors(name, junk, pos):
    data = base_texts()[name].encode()
    pos = min(pos, len(data))
    path = _TMP / "fuzz.cfg"
    path.write_bytes(data[:pos] + junk + data[pos:])
    try:
        with warnings.catch_warnings(record=True) as seen:   # junk inside a key: Darknet's 'Unused field'
            warnings.simplefilter("always")
            cfg = read_cfg(path)
            try:
                build_layers(cfg)       # which warns about such keys, as Darknet's parser does
            except (CfgError, UnsupportedError):
                pass
    except CfgError as err:
        assert "fuzz.cfg" in str(err)
        event("refused by read_cfg")
        return
    for w in seen:
        assert issubclass(w.category, EngineWarning) and str(w.message).startswith("fuzz.cfg:"), w
        assert "not a key of [" in str(w.message)
    check_accepted(cfg.text, "fuzz.cfg")


def test_every_base_cfg_builds_and_runs():
    """The fuzz bases themselves are valid and small enough to run forward."""
    for name, text in base_texts().items():
        layers = build_layers(parse_cfg(text, name))
        assert sum(layer.num_params for layer in layers) <= MAX_FORWARD_PARAMS, name
        check_accepted(text, name, note=lambda _: None)
