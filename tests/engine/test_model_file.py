"""Engine model files: exact round trip, no pickle, clear errors on damaged files."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.errors import CfgError, WeightsError


def test_convert_round_trip_is_exact(tiny, tmp_path):
    path = tiny.save(tmp_path / "tiny.npz")
    back = engine.load(path)
    assert back.graph.to_dict() == tiny.graph.to_dict()
    assert back.cfg.text == tiny.cfg.text and back.header == tiny.header
    for a, b in zip(tiny.params, back.params):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    x = np.random.default_rng(0).random(tiny.input_shape, dtype=np.float32)
    for ya, yb in zip(tiny.forward(x), back.forward(x)):
        np.testing.assert_array_equal(ya, yb)


def test_model_file_loads_without_pickle(tiny, tmp_path):
    path = tiny.save(tmp_path / "tiny.npz")
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
        assert "graph" in z.files and "layer0/weights" in z.files


def test_damaged_model_files(tiny, tmp_path):
    path = tiny.save(tmp_path / "tiny.npz")
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.npz"):
        engine.load(cut)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(WeightsError, match="not an engine model file"):
        engine.load(other)
    edited = tmp_path / "edited.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(edited, "w") as dst:
        for item in src.infolist():
            if item.filename != "layer3/weights.npy" and item.filename != "layer2/weights.npy":
                dst.writestr(item, src.read(item.filename))
    with pytest.raises(WeightsError, match=r"missing array layer2/weights for layer 2 \[convolutional\]"):
        engine.load(edited)


def test_load_argument_errors(tmp_path):
    with pytest.raises(CfgError, match="no such model file"):
        engine.load(tmp_path / "none.cfg")
    cfg = tmp_path / "a.cfg"
    cfg.write_text("[net]\nwidth=8\nheight=8\n[convolutional]\nfilters=2\n")
    with pytest.raises(ValueError, match="pass weights="):
        engine.load(cfg)


def test_outputs_are_read_only_and_input_is_untouched(tiny):
    x = np.random.default_rng(0).random(tiny.input_shape, dtype=np.float32)
    outs = tiny.forward(x)
    assert x.flags.writeable
    with pytest.raises(ValueError):
        outs[0][0, 0, 0] = 1.0


def test_forward_rejects_wrong_input(tiny):
    with pytest.raises(ValueError, match=r"expects \(3, 416, 416\)"):
        tiny.forward(np.zeros((3, 10, 10), np.float32))
    bad = np.zeros(tiny.input_shape, np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tiny.forward(bad)


def test_load_at_another_size_shares_weights_and_refuses_connected_layers(tmp_path):
    import engine
    from engine.errors import WeightsError
    from helpers import CFG_DIR, TINY_CFG, TINY_WEIGHTS
    m = engine.load(TINY_CFG, weights=TINY_WEIGHTS, size="320x256")
    assert m.input_shape == (3, 256, 320) and m.layers[15].out_shape == (255, 8, 10)
    base = engine.load(TINY_CFG, weights=TINY_WEIGHTS)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(m.params, base.params) for k in a)
    path = m.save(tmp_path / "t320.npz")
    back = engine.load(path)
    assert back.input_shape == (3, 256, 320)                      # the size travels with the model file
    assert engine.load(path, size=416).input_shape == (3, 416, 416)
    with pytest.raises(WeightsError, match=r"\[connected\].*must be \(4096, 16384\) at 320x320"):
        engine.load(CFG_DIR / "alexnet.cfg", random_weights=0, size=320)
    for bad in ("abc", "0", "320x", (1, 2, 3)):
        with pytest.raises(ValueError, match="size"):
            engine.load(TINY_CFG, weights=TINY_WEIGHTS, size=bad)


@pytest.mark.parametrize("data", ["\ufeffperson\r\n".encode("utf-8"), "person\r\n".encode("utf-16"),
                                  b"\xfe\xff" + "person\n".encode("utf-16-be")])
def test_a_names_file_with_a_byte_order_mark_names_class_0_plainly(tmp_path, data):
    """(regression) Notepad's UTF-8 mark made class 0 '\\ufeffperson' (shown as 'person', unequal to it in
    --json); a PowerShell `>` names file (UTF-16) was 'cannot read class names: 'utf-8' codec can't decode ...'."""
    import engine
    names = tmp_path / "one.names"
    names.write_bytes(data)
    detector = Path(__file__).resolve().parents[1] / "corpus" / "detector.cfg"
    assert engine.load(detector, random_weights=0, names=names).class_names == ["person"]


def test_a_binary_names_file_is_refused_naming_the_file_and_the_byte(tmp_path):
    import engine
    from engine.errors import EngineError
    names = tmp_path / "bin.names"
    names.write_bytes(b"ok\n\xff\x00\x01")
    detector = Path(__file__).resolve().parents[1] / "corpus" / "detector.cfg"
    with pytest.raises(EngineError, match=r"bin.names: cannot read class names: byte 3 is not UTF-8 \(nor UTF-16 after "
                                          r"a byte-order mark\); expected a text file, one name per line"):
        engine.load(detector, random_weights=0, names=names)


def test_a_size_the_strides_do_not_divide_is_blamed_on_the_size_with_sizes_that_fit(capsys):
    """(regression) `--size 300` on yolov3-tiny failed as 'yolov3-tiny.cfg:157 [route] (layer 20) layers=-1,8:
    layer 8 is 19x19 but layer 19 is 20x20 ...': a cfg line the user never edited, and no word of the size."""
    import engine
    from engine.errors import CfgError
    from helpers import TINY_CFG, TINY_WEIGHTS, cli
    with pytest.raises(CfgError) as err:
        engine.load(TINY_CFG, weights=TINY_WEIGHTS, size=300)
    assert str(err.value) == (
        "input size 300x300: yolov3-tiny.cfg:157 [route] (layer 20) layers=-1,8: layer 8 is 19x19 but layer 19 is "
        "20x20; routed outputs must have the same spatial size; this model divides its input by 32: give a width "
        "and height that are multiples of 32 (e.g. 288 or 320)")
    code, out, errtext = cli(capsys, "info", TINY_CFG, "--size", "320x200")
    assert code == 2 and errtext.startswith("error: input size 320x200: yolov3-tiny.cfg:157 [route]")
    assert errtext.rstrip().endswith("multiples of 32 (e.g. 192 or 224 or 320)")
    with pytest.raises(CfgError, match=r"^input size 8192x8192: yolov3-tiny.cfg:\d+ \[convolutional\] .*limit 8 GiB"
                                       r"[^;]*; check width/height/filters/size$"):
        engine.load(TINY_CFG, random_weights=0, size=8192)       # a size that fits the strides: no hint
