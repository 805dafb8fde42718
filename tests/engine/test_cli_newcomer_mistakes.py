"""Mistakes a newcomer makes on the command line: each gets one line naming the file and what was expected
(no traceback, no message about zip members or byte limits), and `... | head` ends quietly."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import IMAGES, ROOT, TINY_CFG, TINY_WEIGHTS

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(*args, stdout=subprocess.PIPE):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, env=ENV, timeout=300)


def refused(*args) -> str:
    res = run(*args)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    return res.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny, tiny_q):
    """An engine model file, a quantized model file and a `dump` output of yolov3-tiny."""
    d = tmp_path_factory.mktemp("mistakes")
    model, qmodel = tiny.save(d / "tiny.npz"), tiny_q.save(d / "tiny.q.npz")
    dump = d / "dump.npz"
    assert run("dump", model, "--image", IMAGES / "dog.jpg", "-o", dump).returncode == 0
    return model, qmodel, dump


@pytest.mark.parametrize("args", [("info", TINY_CFG), ("info", TINY_CFG, "--json")])
def test_a_reader_that_leaves_early_ends_the_command_quietly(args):
    # `python -m engine ... | head`: it printed "error: Broken pipe" and exited 2, as if the input were wrong
    r, w = os.pipe()
    os.close(r)                                   # the reader is gone before the first write
    try:
        res = run(*args, stdout=w)
    finally:
        os.close(w)
    assert res.returncode == 141 and res.stderr == ""


def test_the_weights_file_given_as_the_cfg_is_named_as_such():
    # it said "more than 16777216 bytes is too large for a cfg"
    err = refused("detect", TINY_WEIGHTS, "--weights", TINY_CFG, IMAGES / "dog.jpg")
    assert f"{TINY_WEIGHTS}: not a text cfg file" in err and "did you pass the .weights file instead?" in err


@pytest.mark.parametrize("model", [TINY_WEIGHTS, IMAGES / "dog.jpg"])
def test_a_binary_model_without_weights_is_not_called_a_cfg(model):
    # it said "dog.jpg is a .cfg: pass its weights with --weights FILE"
    err = refused("detect", model, IMAGES / "dog.jpg")
    assert f"{model}: MODEL is neither a Darknet .cfg" in err and "engine model file" in err
    assert "is a .cfg" not in err
    assert "pass its weights with --weights FILE" in refused("detect", TINY_CFG, IMAGES / "dog.jpg")


def test_report_asks_for_weights_as_the_other_commands_do(files):
    # report said "pass weights= (a .weights file) or random_weights=SEED", the Python API's words
    err = refused("report", TINY_CFG, "-q", files[1])
    assert "pass its weights with --weights FILE" in err and "weights=" not in err


def test_a_model_file_with_weights_says_drop_weights(files):
    err = refused("detect", files[0], "--weights", TINY_WEIGHTS, IMAGES / "dog.jpg")
    assert f"{files[0]} is an engine model file (it contains its weights): drop --weights {TINY_WEIGHTS}" in err


def test_npz_files_swapped_name_what_they_are(files):
    # they said "members 'layer0/w_q', ... hold 9566608 bytes, but no engine model file uses them (limit ...)"
    model, qmodel, dump = files
    err = refused("detect", qmodel, IMAGES / "dog.jpg")
    assert f"{qmodel}: cannot read engine model file: this is a quantized model file" in err and "--quantized" in err
    err = refused("detect", model, IMAGES / "dog.jpg", "--mode", "int", "--quantized", model)
    assert f"{model}: cannot read quantized model: this is an engine model file" in err
    err = refused("info", dump)
    # `info` tells the kind by content (engine/cli/info.py npz_kind), not by loading it as an engine model
    assert f"{dump}: an .npz archive but not an engine model" in err and "this is a `dump` output" in err
    assert "uses them" not in err and "limit" not in err


def test_a_run_record_opened_as_a_quantized_model_says_so(tmp_path, tiny, tiny_q):
    from engine import Session
    from engine.errors import WeightsError
    from engine.quant.qmodel import QuantizedModel
    s = Session(tiny, tiny_q, mode="int", image=IMAGES / "dog.jpg")
    s.run_to(1)
    record = s.save_record(tmp_path / "run.npz")
    with pytest.raises(WeightsError, match="this is a run record .*Session.open_record.*not a quantized model"):
        QuantizedModel.load(record)


def test_compare_takes_several_image_files_as_montecarlo_and_worst_images_do(files):
    # `compare --images a.jpg b.jpg` stopped at "unrecognized arguments: b.jpg" (one folder or file only)
    import json
    res = run("compare", files[0], "--calib", IMAGES / "dog.jpg", "--images", IMAGES / "dog.jpg",
              IMAGES / "horses.jpg", "--methods", "minmax", "--quiet", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["images"] == ["dog.jpg", "horses.jpg"]


def test_an_output_named_unlike_what_is_written_is_warned_about_and_still_written(files, tmp_path):
    # `convert -o m.weights` wrote an .npz under a .weights name without a word (and `--weights m.weights`
    # later said "header version 67324752.20.0 is not a Darknet weights header")
    res = run("convert", TINY_CFG, TINY_WEIGHTS, "-o", tmp_path / "m.weights")
    assert res.returncode == 0 and (tmp_path / "m.weights").is_file()
    assert res.stderr.startswith(f"warning: -o {tmp_path / 'm.weights'}: writes an engine model file (.npz), a file "
                                 "usually named *.npz\n"), res.stderr
    err = refused("detect", TINY_CFG, "--weights", tmp_path / "m.weights", IMAGES / "dog.jpg")
    assert "m.weights: an .npz archive (an engine model file from `convert`?), not a Darknet .weights file" in err
    res = run("export", files[0], "--format", "weights", "-o", tmp_path / "m.onnx")
    assert res.returncode == 0 and "warning: -o" in res.stderr and "writes a Darknet .weights file" in res.stderr
    res = run("export", files[0], "--format", "weights", "-o", tmp_path / "m2.weights")
    assert res.returncode == 0 and "warning" not in res.stderr


def test_quantize_says_what_it_does_after_the_calibration_bar(tmp_path):
    # --refine (gptq, margin: 10 s and more on yolov3-tiny) and --method auto ran silently after the bar
    res = run("quantize", TINY_CFG, "--weights", TINY_WEIGHTS, "--calib", IMAGES / "dog.jpg", "--refine", "margin",
              "--refine", "eq", "-o", tmp_path / "q.npz")
    assert res.returncode == 0, res.stderr
    assert "refining (eq, margin, in this order) on the 1 calibration image ...\n" in res.stderr
    res = run("quantize", TINY_CFG, "--weights", TINY_WEIGHTS, "--calib", IMAGES / "dog.jpg", "--refine", "eq",
              "--quiet", "-o", tmp_path / "q.npz")
    assert res.returncode == 0 and "refining" not in res.stderr
    # compare --refine gptq: 18 s before its comparing bar for two methods
    res = run("compare", TINY_CFG, "--weights", TINY_WEIGHTS, "--calib", IMAGES / "dog.jpg", "--images",
              IMAGES / "dog.jpg", "--methods", "minmax,kl", "--refine", "eq")
    assert res.returncode == 0, res.stderr
    assert "quantizing 2 methods and refining each (eq) ...\n" in res.stderr


def test_an_output_named_unlike_what_is_written_never_replaces_a_file_of_another_kind(files, tmp_path):
    # `quantize ... -o yolov3-tiny.weights` warned and replaced the float weights with a quantized .npz
    weights = tmp_path / "yolov3-tiny.weights"
    weights.write_bytes(TINY_WEIGHTS.read_bytes())
    err = refused("convert", TINY_CFG, TINY_WEIGHTS, "-o", weights)
    assert f"-o {weights}: writes an engine model file (.npz), but {weights} exists and is not one" in err
    err = refused("export", files[0], "--format", "onnx", "-o", weights)
    assert "refusing to replace it" in err
    assert weights.read_bytes() == TINY_WEIGHTS.read_bytes()
    # an .npz archive under another name is replaced by an .npz, with the warning (a re-run of the same command)
    res = run("convert", TINY_CFG, TINY_WEIGHTS, "-o", tmp_path / "m.bin")
    assert res.returncode == 0 and "warning: -o" in res.stderr
    res = run("convert", TINY_CFG, TINY_WEIGHTS, "-o", tmp_path / "m.bin")
    assert res.returncode == 0 and "warning: -o" in res.stderr, res.stderr


@pytest.mark.parametrize("args, extra", [
    (["compare", str(TINY_CFG), "--calib", str(IMAGES), "--images", str(IMAGES), "--methods", "minmax", "kl"], "kl"),
    (["info", str(TINY_CFG), "--jsn"], "--jsn"),
])
def test_an_unexpected_argument_is_refused_with_the_subcommands_usage(args, extra, capsys):
    # `compare MODEL --methods minmax kl` printed the top-level usage ("{info,convert,...} ...") and
    # "python -m engine: error: unrecognized arguments: kl", which names neither the subcommand nor its options
    from engine.cli.main import main
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: python -m engine {args[0]} [-h]"), err
    assert err.endswith(f"\npython -m engine {args[0]}: error: unrecognized arguments: {extra}\n"), err
    assert "{info,convert" not in err


QUANTIZED_EXPECTED = "--quantized expects a quantized model .npz (made by `python -m engine quantize -o FILE`)"


@pytest.mark.parametrize("kind", ["weights", "cfg", "photo", "binary"])
def test_a_file_that_is_no_zip_given_as_quantized_says_what_it_looks_like(files, tmp_path, kind):
    # it said "cannot read quantized model: BadZipFile: File is not a zip file", whatever the file was
    binary = tmp_path / "a.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    bad, looks = {"weights": (TINY_WEIGHTS, "a Darknet .weights file (header version 0.2.0, 8,858,734 float32"),
                  "cfg": (TINY_CFG, "a text file with [section] lines (a Darknet .cfg)"),
                  "photo": (IMAGES / "dog.jpg", "a JPEG image"),
                  "binary": (binary, "a binary file of no kind the engine reads")}[kind]
    err = refused("detect", files[0], IMAGES / "dog.jpg", "--mode", "int", "--quantized", bad)
    assert f"--quantized {bad}: {looks}" in err and QUANTIZED_EXPECTED in err and "BadZipFile" not in err


@pytest.mark.parametrize("command", ["dump", "explain", "montecarlo", "worst-images", "report", "export"])
def test_every_command_taking_quantized_names_a_weights_file_given_as_it(files, tmp_path, command):
    model, dog = files[0], IMAGES / "dog.jpg"
    args = {"dump": ("dump", model, "--image", dog, "--mode", "int", "--quantized", TINY_WEIGHTS, "-o", tmp_path / "o.npz"),
            "explain": ("explain", model, "--quantized", TINY_WEIGHTS, "--image", dog),
            "montecarlo": ("montecarlo", model, "--quantized", TINY_WEIGHTS, "--images", dog, "--variants", "1"),
            "worst-images": ("worst-images", model, "--quantized", TINY_WEIGHTS, "--images", dog),
            "report": ("report", model, "--quantized", TINY_WEIGHTS),
            "export": ("export", model, "--format", "onnx-int8", "--quantized", TINY_WEIGHTS,
                       "-o", tmp_path / "o.onnx")}[command]
    err = refused(*args)
    assert f"--quantized {TINY_WEIGHTS}: a Darknet .weights file" in err and QUANTIZED_EXPECTED in err


@pytest.mark.parametrize("given, words", [(IMAGES / "dog.jpg", "a JPEG image"), ("x.npz", "an .npz archive")])
def test_dump_input_names_a_photo_or_an_npz_given_as_the_npy_tensor(files, tmp_path, given, words):
    # it said "cannot read a .npy tensor: ValueError: the magic string is not correct; expected b'\x93NUMPY',
    # got b'\xff\xd8\xff\xe1\x02\xe6'"
    import numpy as np
    if given == "x.npz":
        given = tmp_path / "x.npz"
        np.savez(given, x=np.zeros((3, 32, 32), np.float32))
    err = refused("dump", files[0], "--input", given, "-o", tmp_path / "d.npz")
    assert err.startswith(f"error: --input {given}: cannot read a .npy tensor: this is {words}")
    assert err.endswith("; --input expects a (3, H, W) float32 array written by np.save (a photo goes to --image)\n")
    assert "magic" not in err
    assert not (tmp_path / "d.npz").exists()


LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 35434956\n"
HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>\n"


@pytest.mark.parametrize("data, what", [(LFS_POINTER, "a Git LFS pointer (a small text file): the real file was "
                                                      "never downloaded (run `git lfs pull`"),
                                        (HTML_PAGE, "an HTML/XML page: the download saved an error or sign-in page")])
def test_a_git_lfs_pointer_or_html_page_in_place_of_a_file_is_named_wherever_it_is_given(tmp_path, capsys, data, what):
    """(regression) a clone without `git lfs pull` (or a saved sign-in page) left text under the file's name:
    'header version 1936876918.544108393.1886680168 is not a Darknet weights header' as --weights, 'line 1:
    expected key=value or [section]' from `info` and engine.load, 'is a .cfg: pass its weights' as MODEL."""
    import engine
    from engine.errors import EngineError
    from engine.quant.qmodel import QuantizedModel
    from helpers import cli
    detector = ROOT / "tests" / "corpus" / "detector.cfg"
    model = engine.load(detector, random_weights=0)
    good_model = model.save(tmp_path / "m.npz")
    for name in ("x.weights", "x.npz", "x.cfg"):
        (tmp_path / name).write_bytes(data)
    image = IMAGES / "dog.jpg"
    for args in [("info", tmp_path / "x.weights"), ("info", tmp_path / "x.npz"),
                 ("detect", detector, "--weights", tmp_path / "x.weights", image),
                 ("detect", tmp_path / "x.npz", image), ("detect", tmp_path / "x.cfg", "--weights", tmp_path / "x.weights", image),
                 ("detect", good_model, image, "--mode", "int", "--quantized", tmp_path / "x.npz")]:
        code, out, err = cli(capsys, *args)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and what in err, (args, err)
    for load in (lambda: engine.load(tmp_path / "x.npz"), lambda: QuantizedModel.load(tmp_path / "x.npz"),
                 lambda: engine.load(detector, weights=tmp_path / "x.weights")):
        with pytest.raises(EngineError, match="x\\.(npz|weights)") as err:
            load()
        assert what in str(err.value)
