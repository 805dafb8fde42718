"""What a script that drives `python -m engine` relies on: `--json` output that any JSON parser reads
(JSON has no NaN or Infinity), an `-o` that never destroys a file of another kind, and `-h` texts that say
what a command does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest

from helpers import IMAGES, ROOT, TINY_CFG, TINY_WEIGHTS

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(*args):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=300)


def strict_json(text: str):
    """json.loads as a strict parser (JavaScript's JSON.parse, Go, serde) reads it: NaN/Infinity refused."""
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_compare_json_is_strict_json_with_null_for_undefined_numbers():
    # every `compare --json` on yolov3-tiny printed `"range_use": NaN` (the heads' convs have no int8 output
    # range) and `"int_local_sqnr": NaN` for the [yolo] layers: JSON.parse, Go and serde refuse the whole output
    res = run("compare", TINY_CFG, "--weights", TINY_WEIGHTS, "--calib", IMAGES / "dog.jpg", "--images",
              IMAGES / "dog.jpg", "--methods", "minmax", "--quiet", "--json")
    assert res.returncode == 0, res.stderr
    data = strict_json(res.stdout)
    assert set(data) == {"ranking", "best", "images", "methods"}
    layers = data["methods"][0]["layers"]
    assert layers[16]["kind"] == "yolo" and layers[16]["int_local_sqnr"] is None
    assert layers[15]["range_use"] is None
    assert isinstance(layers[0]["range_use"], float) and 0 < layers[0]["range_use"] <= 1


@pytest.mark.parametrize("name", ["photos.zip", "checkpoint.pt"])
def test_a_misnamed_output_never_replaces_a_zip_archive_that_is_no_npz(tmp_path, name):
    # `convert ... -o photos.zip` warned "a file usually named *.npz" and then replaced the user's zip of photos
    # (any zip passed for "an .npz being replaced by one"; a PyTorch .pt, an .xlsx or a .docx are zips too)
    target = tmp_path / name
    with zipfile.ZipFile(target, "w") as z:
        z.writestr("dog.jpg", (IMAGES / "dog.jpg").read_bytes())
    before = target.read_bytes()
    res = run("convert", TINY_CFG, TINY_WEIGHTS, "-o", target)
    assert res.returncode == 2, res.stderr
    assert res.stderr == (f"error: -o {target}: writes an engine model file (.npz), but {target} exists and is not "
                          f"one: refusing to replace it (name the output *.npz, or move {target} away first)\n")
    assert target.read_bytes() == before
    res = run("dump", TINY_CFG, "--weights", TINY_WEIGHTS, "--image", IMAGES / "dog.jpg", "-o", target)
    assert res.returncode == 2 and "refusing to replace it" in res.stderr and target.read_bytes() == before


def test_a_misnamed_output_still_replaces_an_npz_archive(tmp_path):
    # the re-run of the same command (an .npz under another name) is still allowed, with the warning
    target = tmp_path / "m.bin"
    for _ in range(2):
        res = run("convert", TINY_CFG, TINY_WEIGHTS, "-o", target)
        assert res.returncode == 0 and res.stderr.startswith(f"warning: -o {target}: "), res.stderr


def test_the_command_list_says_what_info_and_export_do():
    # `python -m engine -h` said info prints a "table of layers" (it also summarises quantized models and
    # .weights files) and export writes "ONNX ... or a Darknet .weights file" (not the integer onnx-int8 graph)
    res = run("-h")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    assert "info layer table of a cfg or model file; summary of a quantized model or .weights file" in text
    assert "export write a model as ONNX (float, BN folded), integer ONNX (onnx-int8) or a Darknet .weights" in text


@pytest.mark.parametrize("command", ["info", "detect", "dump", "quantize", "compare", "report", "export", "explain",
                                     "montecarlo", "worst-images"])
def test_every_size_option_says_it_takes_width_x_height(command, capsys):
    # `report -h` said "--size ... e.g. 320" only, though report runs 320x256 as every command does
    from helpers import cli
    code, out, _ = cli(capsys, command, "-h")
    assert code == 0
    assert "e.g. 320 or 320x256" in " ".join(out.split("--size SIZE", 2)[2].split())


def test_every_option_with_a_default_names_it_in_its_help():
    # `compare -h` did not say which methods it ranks without --methods, `export -h` which format it writes without
    # --format; --resize, report's --repeats and explain / worst-images' --mode had no help at all
    import argparse
    from engine.cli.main import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))

    def names_default(a: argparse.Action) -> bool:
        value = f"{a.default:g}" if isinstance(a.default, float) else str(a.default)
        return "default" in (a.help or "") and value in a.help
    silent = [f"{name} {a.option_strings[-1]}" for name, parser in sub.choices.items() for a in parser._actions
              if a.option_strings and a.default not in (None, False, [], argparse.SUPPRESS) and not names_default(a)]
    assert silent == []


def test_onnx_int8_refusal_names_every_profile_it_exports(tmp_path, tiny, tiny_q, capsys):
    # it named 'onnxruntime' (or 'avx2_u8s8') only; ort_reduce_range models export too (README, cli.md)
    from helpers import cli
    code, _, err = cli(capsys, "export", tiny.save(tmp_path / "m.npz"), "--format", "onnx-int8", "--quantized",
                       tiny_q.save(tmp_path / "q.npz"), "-o", tmp_path / "m.onnx")
    assert code == 2 and err == ("error: --format onnx-int8 runs the arithmetic of profile 'onnxruntime', 'avx2_u8s8' "
                                 "or 'ort_reduce_range'; this quantized model uses profile 'qwidgets': quantize with "
                                 "--profile onnxruntime\n")
    assert not (tmp_path / "m.onnx").exists()


def test_jsonable_turns_a_float32_nan_into_null():
    # NumPy float32 is no Python float: its NaN passed the NaN check and came out as NaN after .item()
    import numpy as np
    from engine.scale.montecarlo import jsonable
    assert jsonable({"a": np.float32("nan"), "b": [np.float32(2.5), np.float64("inf")], "c": np.int64(3)}) == \
        {"a": None, "b": [2.5, None], "c": 3}


def test_every_json_output_goes_through_one_strict_writer():
    # compare and report wrote json.dumps(..., default=float), NaN included; montecarlo its own NaN -> None
    import numpy as np
    from engine.cli.options import json_text
    assert strict_json(json_text({"iou": float("nan"), "sqnr": np.float64("inf"), "n": np.int64(2)})) == \
        {"iou": None, "sqnr": None, "n": 2}
    commands = ROOT / "engine" / "cli"
    assert not [p.name for p in commands.glob("*.py") if "json.dumps" in p.read_text() and p.name != "options.py"]


def _documented(command: str) -> str:
    """cli.md's paragraph on `<command> --json`."""
    text = (ROOT / "docs" / "cli.md").read_text()
    start = text.index(f"**`{command} --json`**")
    return text[start:text.find("**`", start + 4)]


def test_cli_md_names_the_json_keys_of_report_and_worst_images(tmp_path, tiny, tiny_q, capsys):
    # cli.md named the JSON keys of info, detect and explain only; a script reading report or worst-images had
    # to reverse-engineer them
    from helpers import cli
    model, qmodel = tiny.save(tmp_path / "m.npz"), tiny_q.save(tmp_path / "q.npz")
    code, out, err = cli(capsys, "worst-images", model, "--quantized", qmodel, "--images", IMAGES / "dog.jpg", "--json")
    assert code == 0, err
    data = strict_json(out)
    assert set(data) == {"mode", "images"} and data["images"][0]["name"] == "dog.jpg"
    keys = set(data) | set(data["images"][0])
    assert all(f'"{k}"' in _documented("worst-images") for k in keys), keys
    code, out, err = cli(capsys, "report", model, "-q", qmodel, "--repeats", "1", "--json")
    assert code == 0, err
    data = strict_json(out)
    assert data["fit"] is None and len(data["rows"]) == 24
    top = set(data) | set(data["rows"][0]) | set(data["peak_activation_bytes"])
    assert all(f'"{k}"' in _documented("report") for k in top), top
