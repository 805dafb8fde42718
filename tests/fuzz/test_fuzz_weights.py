"""Hypothesis fuzzing of the `.weights` reader (issue 8).

Valid files for small cfgs are truncated, extended, bit-flipped (header and body) and given random
headers; `read_weights` must either return exactly the file's floats in Darknet order or raise
WeightsError naming the file. Accepted models run forward with consistent shapes. Derandomized;
about 800 examples (`FUZZ_EXAMPLES`).
"""
from __future__ import annotations

import struct
import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cfgs import base_texts
from engine.darknet.cfg import parse_cfg
from engine.errors import EngineError, WeightsError
from engine.darknet.build import build_layers
from engine.model import Model
from engine.darknet.weights import WeightsHeader, expected_floats, read_header, read_weights

FUZZ_EXAMPLES = {"mutations": 600, "headers": 200}
FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CFGS = ("corpus-weights", "corpus-detector", "yolov3-tiny", "yolov4-tiny", "resnet18")
_TMP = Path(tempfile.mkdtemp(prefix="qw-fuzz-weights-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


@lru_cache(maxsize=None)
def valid(name: str, major: int = 0, minor: int = 2) -> tuple[bytes, int]:
    """(a valid .weights file for base cfg `name`, its header size)."""
    layers = build_layers(parse_cfg(base_texts()[name], name))
    flat = np.random.default_rng(0).uniform(-1, 1, expected_floats(layers)).astype("<f4")
    pos = 0
    for layer in layers:  # variances must be >= 0
        for pname, shape in layer.param_shapes():
            n = int(np.prod(shape))
            if pname == "rolling_variance":
                flat[pos:pos + n] = np.abs(flat[pos:pos + n])
            pos += n
    head = WeightsHeader(major, minor, 0, 12345)
    return head.pack() + flat.tobytes(), head.size


@lru_cache(maxsize=None)
def layers_of(name: str):
    cfg = parse_cfg(base_texts()[name], name)
    return cfg, build_layers(cfg)


@st.composite
def mutated_weights(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from(CFGS))
    data, hsize = valid(name, *draw(st.sampled_from([(0, 2), (0, 1), (1, 0), (0, 0), (1001, 0)])))
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "extend", "flip_header", "flip_body", "poke_float", "int_header"]))
        if op == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "flip_header" and data:
            bit = draw(st.integers(0, 8 * min(len(data), 20) - 1))
            data[bit // 8] ^= 1 << (bit % 8)
        elif op == "flip_body" and len(data) > hsize:
            bit = draw(st.integers(8 * hsize, 8 * len(data) - 1))
            data[bit // 8] ^= 1 << (bit % 8)
        elif op == "poke_float" and len(data) >= hsize + 4:
            k = draw(st.integers(0, (len(data) - hsize) // 4 - 1))
            value = draw(st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 0.0, 3.4e38, -3.4e38, 1e-45]))
            data[hsize + 4 * k:hsize + 4 * k + 4] = struct.pack("<f", value)
        elif op == "int_header" and len(data) >= 12:
            k = draw(st.integers(0, 2))
            data[4 * k:4 * k + 4] = struct.pack("<i", draw(st.integers(-2 ** 31, 2 ** 31 - 1)))
    return name, bytes(data)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow of random weights in kernel threads
@settings(FUZZ, max_examples=FUZZ_EXAMPLES["mutations"])
@given(mutated_weights())
def test_mutated_weights_load_exactly_or_raise_weights_error(case):
    name, data = case
    cfg, layers = layers_of(name)
    path = _TMP / f"{name}.weights"
    path.write_bytes(data)
    try:
        header, params = read_weights(path, layers)
    except WeightsError as err:
        assert path.name in str(err), err
        event("refused")
        return
    event(f"accepted ({header.size}-byte header)")
    need = expected_floats(layers)
    assert len(data) == header.size + 4 * need  # only exact sizes are accepted
    flat = np.frombuffer(data, "<f4", offset=header.size)
    assert np.isfinite(flat).all()
    got = np.concatenate([p[k].reshape(-1) if not (header.transpose and layer.kind == "connected" and k == "weights")
                          else p[k].T.reshape(-1) for layer, p in zip(layers, params) for k in p])
    np.testing.assert_array_equal(got, flat)  # Darknet order, nothing skipped or reordered
    model = Model(cfg, layers, params, header)
    with np.errstate(all="ignore"):
        try:
            outs = model.forward(np.random.default_rng(0).random(model.input_shape, dtype=np.float32))
        except EngineError as err:  # pragma: no cover - a loaded model must run
            pytest.fail(f"{name}: weights accepted but forward failed: {err}")
    assert [y.shape for y in outs] == [layer.out_shape for layer in layers]


@settings(FUZZ, max_examples=FUZZ_EXAMPLES["headers"])
@given(st.one_of(st.binary(max_size=40), st.builds(lambda a, b, c, d: struct.pack("<iiiq", a, b, c, d),
                                                   st.integers(-2 ** 31, 2 ** 31 - 1), st.integers(-5, 2000),
                                                   st.integers(-5, 5), st.integers(-2 ** 63, 2 ** 63 - 1))))
def test_random_headers_parse_or_raise_weights_error(data):
    try:
        h = read_header(data, "fuzz.weights")
    except WeightsError as err:
        assert "fuzz.weights" in str(err)
        return
    assert h.size in (16, 20) and len(data) >= h.size and 0 <= h.major < 100_000 and 0 <= h.minor < 100_000
