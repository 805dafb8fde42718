"""`.weights` files: both header forms, exact float counts, finite values, write/read round trip."""
from __future__ import annotations

import struct

import numpy as np
import pytest

import engine
from engine.darknet.cfg import parse_cfg
from engine.errors import WeightsError
from engine.darknet.build import build_layers
from engine.darknet.weights import WeightsHeader, expected_floats, random_params, read_weights, write_weights
from helpers import TINY_CFG, TINY_WEIGHTS

CFG = "[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilters=4\nsize=3\npad=1\nbatch_normalize=1\n" \
      "activation=leaky\n[connected]\noutput=5\nactivation=linear\n"


def small_layers():
    return build_layers(parse_cfg(CFG, "s.cfg"))


def test_yolov3_tiny_weights_have_the_documented_header_and_count():
    layers = engine.load(TINY_CFG, weights=TINY_WEIGHTS).layers
    header, _ = read_weights(TINY_WEIGHTS, layers)
    assert (header.major, header.minor, header.revision, header.seen) == (0, 2, 0, 32013312)
    assert expected_floats(layers) == 8_858_734 == (TINY_WEIGHTS.stat().st_size - 20) // 4


def test_parameters_are_read_in_darknet_order(tmp_path):
    layers = small_layers()
    n = expected_floats(layers)
    flat = np.arange(n, dtype=np.float32)
    path = tmp_path / "a.weights"
    path.write_bytes(WeightsHeader().pack() + flat.tobytes())
    _, params = read_weights(path, layers)
    conv, fc = params
    # conv: biases, scales, rolling_mean, rolling_variance, weights [n][c][ky][kx]
    assert conv["biases"].tolist() == [0, 1, 2, 3]
    assert conv["scales"][0] == 4 and conv["rolling_variance"][3] == 15
    assert conv["weights"].shape == (4, 3, 3, 3) and conv["weights"][0, 0, 0, 1] == 17
    # connected: biases, then weights [out][in] (BN vectors would come after the weights)
    assert fc["biases"][0] == 16 + 108 and fc["weights"].shape == (5, 256) and fc["weights"][1, 0] == 124 + 5 + 256


def test_16_byte_header_and_transposed_connected(tmp_path):
    layers = small_layers()
    params = random_params(layers, 3)
    old = WeightsHeader(major=0, minor=1, revision=0, seen=7)
    assert old.size == 16
    write_weights(tmp_path / "old.weights", layers, params, old)
    header, back = read_weights(tmp_path / "old.weights", layers)
    assert header == old
    np.testing.assert_array_equal(back[1]["weights"], params[1]["weights"])
    flipped = WeightsHeader(major=1001, minor=0, revision=0, seen=0)
    write_weights(tmp_path / "t.weights", layers, params, flipped)
    raw = np.frombuffer((tmp_path / "t.weights").read_bytes()[20:], np.float32)
    start = 4 * 4 + 108 + 5
    np.testing.assert_array_equal(raw[start:start + 256 * 5].reshape(256, 5), params[1]["weights"].T)
    _, back = read_weights(tmp_path / "t.weights", layers)
    np.testing.assert_array_equal(back[1]["weights"], params[1]["weights"])


def test_short_and_long_files_say_expected_and_found(tmp_path):
    data = TINY_WEIGHTS.read_bytes()
    layers = engine.load(TINY_CFG, weights=TINY_WEIGHTS).layers
    short = tmp_path / "short.weights"
    short.write_bytes(data[:-4000])
    with pytest.raises(WeightsError, match=r"holds 8857734 floats .* needs exactly 8858734 \(1000 missing; the file "
                                           r"ends inside layer 22 \[convolutional\]\)"):
        read_weights(short, layers)
    long = tmp_path / "long.weights"
    long.write_bytes(data + b"\0" * 8)
    with pytest.raises(WeightsError, match=r"8858736 floats .*\(2 extra floats = 8 bytes\)"):
        read_weights(long, layers)
    odd = tmp_path / "odd.weights"
    odd.write_bytes(data + b"\0")
    with pytest.raises(WeightsError, match="not a whole number of float32"):
        read_weights(odd, layers)


@pytest.mark.parametrize("payload, fragment", [
    (b"", "too short for a Darknet weights header"),
    (b"[net]\nwidth=416\nheight=416\n", "looks like a text cfg"),
    (struct.pack("<iii", -1, 2, 0) + b"\0" * 8, "not a Darknet weights header"),
])
def test_bad_headers(tmp_path, payload, fragment):
    p = tmp_path / "bad.weights"
    p.write_bytes(payload)
    with pytest.raises(WeightsError, match=fragment):
        read_weights(p, small_layers())


def test_nan_and_negative_variance_are_refused(tmp_path):
    layers = small_layers()
    params = random_params(layers)
    params[1]["weights"][2, 7] = np.nan
    write_weights(tmp_path / "nan.weights", layers, params)
    with pytest.raises(WeightsError, match=r"layer 1 \[connected\] weights holds 1 NaN/Inf values"):
        read_weights(tmp_path / "nan.weights", layers)
    params = random_params(layers)
    params[0]["rolling_variance"][0] = -1
    write_weights(tmp_path / "var.weights", layers, params)
    with pytest.raises(WeightsError, match="rolling_variance has negative values"):
        read_weights(tmp_path / "var.weights", layers)


def test_write_then_read_is_bit_exact(tmp_path):
    model = engine.load(TINY_CFG, weights=TINY_WEIGHTS)
    out = tmp_path / "copy.weights"
    model.save_weights(out)
    assert out.read_bytes() == TINY_WEIGHTS.read_bytes()


def test_a_fifo_given_as_weights_is_refused_without_waiting_for_a_writer(tmp_path):
    """read_weights checks for a regular file, but open() of a FIFO blocks until a writer appears:
    `detect cfg --weights FIFO` hung forever before that check could run."""
    import os
    import threading
    fifo = tmp_path / "w.weights"
    os.mkfifo(fifo)
    result: list = []

    def read() -> None:
        try:
            read_weights(fifo, small_layers())
        except WeightsError as err:
            result.append(err)
    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():                       # unblock the hung open() so the thread can end
        with open(fifo, "wb"):
            pass
        t.join(5)
        pytest.fail("read_weights blocked on a FIFO")
    assert len(result) == 1 and "w.weights" in str(result[0]) and "not a regular file" in str(result[0])
