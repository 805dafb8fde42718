"""The command-line contract: info, convert, detect --json, dump (exact keys other tools rely on)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import IMAGES, ROOT, TINY_CFG, TINY_WEIGHTS, darknet_detections, match_detections

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(*args, check=True):
    res = subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True, env=ENV,
                         timeout=300)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def test_info_lists_every_layer_with_shapes_params_and_macs():
    out = run("info", TINY_CFG).stdout.splitlines()
    assert out[0].split() == ["idx", "type", "inputs", "output", "(CxHxW)", "params", "MACs"]
    row20 = out[21].split()
    assert row20 == ["20", "route", "19,8", "384x26x26", "0", "0"]
    assert out[13].split() == ["12", "convolutional", "11", "1024x13x13", "4,722,688", "797,442,048"]
    assert "8,858,734 params" in out[-1]


def test_info_reads_an_engine_model_file_like_its_cfg(tmp_path, tiny):
    # it used to read the zip as cfg text: "not a text cfg file ...; did you pass the .weights file instead?"
    model_file = tiny.save(tmp_path / "tiny.npz")
    assert run("info", model_file).stdout == run("info", TINY_CFG).stdout
    assert run("info", model_file, "--size", "320").stdout == run("info", TINY_CFG, "--size", "320").stdout


def test_convert_then_detect_json_contract(tmp_path):
    model_file = tmp_path / "tiny.npz"
    run("convert", TINY_CFG, TINY_WEIGHTS, "-o", model_file)
    res = run("detect", model_file, IMAGES / "dog.jpg", IMAGES / "person.jpg", "--json")
    data = json.loads(res.stdout)
    assert set(data) == {"images"} and set(data["images"]) == {"dog.jpg", "person.jpg"}
    dog = data["images"]["dog.jpg"]
    assert (dog["width"], dog["height"]) == (768, 576)
    for det in dog["detections"]:
        assert {"class_id", "name", "score", "x1", "y1", "x2", "y2"} <= set(det)
    pairs = match_detections(dog["detections"], darknet_detections()["dog.jpg"]["detections"], 0.95)
    assert all(o is not None for _, o in pairs)


def test_detect_with_cfg_weights_stretch_and_thresholds():
    res = run("detect", TINY_CFG, "--weights", TINY_WEIGHTS, IMAGES / "dog.jpg", "--resize", "stretch",
              "--thresh", "0.5", "--nms", "0.3", "--json")
    dets = json.loads(res.stdout)["images"]["dog.jpg"]["detections"]
    assert dets and all(d["score"] > 0.5 for d in dets)


def test_dump_input_tensor_gives_every_layer(tmp_path):
    x = np.random.default_rng(0).random((3, 416, 416), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    run("dump", TINY_CFG, "--weights", TINY_WEIGHTS, "--input", tmp_path / "x.npy", "--mode", "float",
        "-o", tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz", allow_pickle=False) as z:
        assert z.files == [f"layer{i}" for i in range(24)]
        assert z["layer20"].shape == (384, 26, 26) and z["layer0"].dtype == np.float32
        import engine
        ref = engine.load(TINY_CFG, weights=TINY_WEIGHTS).forward(x)
        np.testing.assert_array_equal(z["layer22"], ref[22])


@pytest.mark.parametrize("args, fragment", [
    (("info", "missing.cfg"), "missing.cfg: cannot read cfg"),
    (("detect", TINY_CFG, IMAGES / "dog.jpg"), "pass its weights with --weights FILE"),
    (("detect", TINY_CFG, "--weights", TINY_CFG, IMAGES / "dog.jpg"), "looks like a text cfg"),
    (("dump", TINY_CFG, "--weights", TINY_WEIGHTS, "--input", TINY_CFG, "-o", "/tmp/x.npz"), "cannot read a .npy"),
    (("montecarlo", TINY_CFG, "--weights", TINY_WEIGHTS, "--quantized", "q.npz", "--images", IMAGES, "--seed", "-1"),
     "argument --seed: '-1': expected a non-negative integer"),
])
def test_cli_errors_are_one_clear_line(args, fragment):
    res = run(*args, check=False)
    assert res.returncode == 2
    assert fragment in res.stderr and "Traceback" not in res.stderr


def test_detect_reports_bad_image_and_continues(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    res = run("detect", TINY_CFG, "--weights", TINY_WEIGHTS, bad, IMAGES / "dog.jpg", "--json", check=False)
    assert res.returncode == 1 and "bad.jpg: not a decodable image" in res.stderr
    data = json.loads(res.stdout)["images"]
    assert "error" in data["bad.jpg"] and len(data["dog.jpg"]["detections"]) == 6


def test_size_option_runs_info_and_detect_at_320(tmp_path):
    import json as _json
    import subprocess
    import sys
    from helpers import IMAGES, ROOT, TINY_CFG, TINY_WEIGHTS
    run = lambda *a: subprocess.run([sys.executable, "-m", "engine", *a], cwd=ROOT, capture_output=True,  # noqa: E731
                                    text=True, timeout=300)
    info = run("info", str(TINY_CFG), "--size", "320", "--json")
    assert info.returncode == 0, info.stderr
    nodes = _json.loads(info.stdout)["nodes"]
    assert [n for n in nodes if n["id"] == "15"][0]["out_shape"] == [255, 10, 10]
    det = run("detect", str(TINY_CFG), "--weights", str(TINY_WEIGHTS), "--size", "320", str(IMAGES / "dog.jpg"),
              "--json")
    assert det.returncode == 0, det.stderr
    names = {d["name"] for d in _json.loads(det.stdout)["images"]["dog.jpg"]["detections"]}
    assert {"dog", "bicycle", "car"} <= names
    bad = run("detect", str(TINY_CFG), "--weights", str(TINY_WEIGHTS), "--size", "big", str(IMAGES / "dog.jpg"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: --size 'big'")


def _npy(path, header: dict, payload: bytes) -> None:
    import io
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, header)
    path.write_bytes(f.getvalue() + payload)


def test_dump_input_refuses_forged_npy_headers_before_allocating(tmp_path):
    # a header declaring 447 GiB used to reach np.load's allocation: a MemoryError traceback
    _npy(tmp_path / "bomb.npy", {"descr": "<f4", "fortran_order": False, "shape": (3, 200000, 200000)}, b"\0" * 100)
    res = run("dump", TINY_CFG, "--weights", TINY_WEIGHTS, "--input", tmp_path / "bomb.npy", "-o", tmp_path / "o.npz",
              check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "bomb.npy: cannot read a .npy tensor" in res.stderr and "480000000000 bytes" in res.stderr
    assert not (tmp_path / "o.npz").exists()


def test_read_npy_reads_what_np_save_wrote_and_refuses_the_rest(tmp_path):
    from engine.errors import WeightsError
    from engine.npzfile import read_npy
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for name, arr in (("c.npy", x), ("f.npy", np.asfortranarray(x)), ("i.npy", x.astype(np.int16))):
        np.save(tmp_path / name, arr)
        got = read_npy(tmp_path / name)
        assert got.dtype == arr.dtype
        np.testing.assert_array_equal(got, arr)
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(WeightsError, match="o.npy: .*pickles"):
        read_npy(tmp_path / "o.npy")
    (tmp_path / "t.npy").write_bytes((tmp_path / "c.npy").read_bytes()[:-4])   # one float short
    with pytest.raises(WeightsError, match="t.npy: .*92 bytes follow it"):
        read_npy(tmp_path / "t.npy")
    with pytest.raises(WeightsError, match="over the 10-byte limit"):
        read_npy(tmp_path / "c.npy", max_bytes=10)
    with pytest.raises(WeightsError, match="not a regular file"):
        read_npy(tmp_path)



def test_missing_image_folders_are_named_for_what_they_are(tmp_path):
    from engine.calib.collect import image_list
    from engine.errors import EngineError
    with pytest.raises(EngineError, match="nowhere: no such calibration image or folder"):
        image_list(tmp_path / "nowhere")
    with pytest.raises(EngineError, match="nowhere: no such evaluation image or folder"):
        image_list(tmp_path / "nowhere", "evaluation")        # montecarlo, worst-images, the batch backends
    with pytest.raises(EngineError, match="validation needs at least one image"):
        image_list([], "validation")


def test_a_list_of_folders_and_image_files_takes_each_folders_images(tmp_path):
    """`--images DIR a.jpg` (compare, montecarlo, worst-images, --calib, --val): a folder beside files
    stood in the list as is and failed as "DIR: cannot open image: not a regular file"."""
    from engine.calib.collect import image_list
    folder = tmp_path / "set"
    folder.mkdir()
    for name in ("b.jpg", "a.png", "notes.txt"):
        (folder / name).write_bytes(b"x")
    one = tmp_path / "one.jpg"
    assert image_list([str(one), str(folder)]) == [str(one), folder / "a.png", folder / "b.jpg"]
    assert image_list([folder, one, folder]) == [folder / "a.png", folder / "b.jpg", one,
                                                 folder / "a.png", folder / "b.jpg"]
    assert image_list([str(folder)]) == [folder / "a.png", folder / "b.jpg"]
    assert image_list([str(one), "b.jpg"]) == [str(one), "b.jpg"]           # files alone: as given


def test_a_quantized_model_of_other_weights_is_named_not_silently_used(tmp_path):
    import engine
    from engine.calib.collect import collect
    from engine.quant.qmodel import quantize_model
    other = engine.load(TINY_CFG, random_weights=3)          # same cfg, other float weights
    x = other.preprocess(IMAGES / "dog.jpg").x
    q = quantize_model(other, collect(other, [x], progress=False), "minmax").save(tmp_path / "other.q.npz")
    res = run("detect", TINY_CFG, "--weights", TINY_WEIGHTS, IMAGES / "dog.jpg", "--mode", "int", "--quantized", q,
              "--json")
    assert "warning: " in res.stderr and "other.q.npz was quantized from other float weights" in res.stderr
    json.loads(res.stdout)                                      # still runs: the user may mean it
    own = quantize_model(engine.load(TINY_CFG, TINY_WEIGHTS), collect(other, [x], progress=False), "minmax")
    res = run("detect", TINY_CFG, "--weights", TINY_WEIGHTS, IMAGES / "dog.jpg", "--mode", "int", "--quantized",
              own.save(tmp_path / "own.q.npz"), "--json")
    assert "warning" not in res.stderr


def test_names_file_of_another_class_count_is_warned_about(tmp_path):
    import warnings
    import engine
    from engine.errors import EngineWarning
    few, many = tmp_path / "few.names", tmp_path / "many.names"
    few.write_text("dog\ncat\nbird\n")
    many.write_text("\n".join(f"n{k}" for k in range(81)) + "\n")
    # the CLI: one warning line, then the detections as before (the missing names as class_N)
    res = run("detect", TINY_CFG, "--weights", TINY_WEIGHTS, IMAGES / "dog.jpg", "--names", few, "--json")
    assert res.stderr == (f"warning: {few}: 3 class names for a model of 80 classes; classes 3..79 are shown as "
                          "class_N (expected one name per line, one per class)\n"), res.stderr
    names = {d["name"] for d in json.loads(res.stdout)["images"]["dog.jpg"]["detections"]}
    assert names and all(n in ("dog", "cat", "bird") or n.startswith("class_") for n in names)
    # the API: an EngineWarning naming the file and both counts; a matching file warns nothing
    corpus = ROOT / "tests" / "corpus" / "detector.cfg"            # 1 class
    with pytest.warns(EngineWarning, match=r"many.names: 81 class names for a model of 1 classes; the last 80"):
        engine.load(corpus, random_weights=0, names=many)
    one = tmp_path / "one.names"
    one.write_text("thing\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert engine.load(corpus, random_weights=0, names=one).class_names == ["thing"]
