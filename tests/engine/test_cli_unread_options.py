"""An option that only one step reads is refused without that step, before any work: `quantize --margin-k 3`
without `--refine margin` (and `compare --margin-k 3`) and `quantize --backend onnxruntime` without
`--target-map` ran as if they were not given, so a K or backend tried changed nothing, without a word."""
from __future__ import annotations

import pytest

from helpers import IMAGES, cli

DOG = IMAGES / "dog.jpg"


@pytest.mark.parametrize("argv, message", [
    (["quantize", "{m}", "--calib", DOG, "--margin-k", "3", "-o", "{t}/q.npz"],
     "--margin-k 3: only with --refine margin, the step that reads it"),
    (["quantize", "{m}", "--calib", DOG, "--refine", "eq", "--margin-k", "0.5", "-o", "{t}/q.npz"],
     "--margin-k 0.5: only with --refine margin, the step that reads it"),
    (["compare", "{m}", "--calib", DOG, "--images", DOG, "--margin-k", "3"],
     "--margin-k 3: only with --refine margin, the step that reads it"),
    (["quantize", "{m}", "--calib", DOG, "--backend", "onnxruntime", "-o", "{t}/q.npz"],
     "--backend onnxruntime: only with --target-map (its search is what quantize runs on a backend; the "
     "calibration pass runs on numpy)"),
])
def test_an_option_no_step_reads_is_refused_before_the_model_is_read(capsys, tmp_path, argv, message):
    # MODEL does not exist: the refusal must come first, before anything is loaded or calibrated
    args = [str(a).replace("{m}", str(tmp_path / "missing.npz")).replace("{t}", str(tmp_path)) for a in argv]
    rc, out, err = cli(capsys, *args)
    assert (rc, out) == (2, "") and err == f"error: {message}\n"
    assert list(tmp_path.iterdir()) == []


def test_margin_k_defaults_to_2_and_is_kept_with_refine_margin():
    from engine.cli.main import build_parser
    from engine.cli.quantize import MARGIN_K, margin_k
    parse = build_parser().parse_args
    assert margin_k(parse(["quantize", "m", "--calib", "d", "-o", "q.npz"])) == MARGIN_K == 2.5
    assert margin_k(parse(["quantize", "m", "--calib", "d", "--refine", "margin", "--margin-k", "1.5", "-o",
                           "q.npz"])) == 1.5
