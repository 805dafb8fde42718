"""An option of image lists given twice (`--calib a --calib b`, as a script building its command line writes it)
keeps every image: argparse kept only the last list, so `quantize` calibrated on b alone and said nothing."""
from __future__ import annotations

import json

import pytest

from engine.cli.main import build_parser
from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS, cli

DOG, HORSES = str(IMAGES / "dog.jpg"), str(IMAGES / "horses.jpg")
RUNS = ["--weights", str(TINY_WEIGHTS), "-q", "q.npz"]


@pytest.mark.parametrize("argv, option", [
    (["quantize", str(TINY_CFG), "--calib", DOG, "--calib", HORSES, "-o", "q.npz"], "calib"),
    (["quantize", str(TINY_CFG), "--calib", DOG, "--target-map", "0.9", "--val", DOG, "--val", HORSES, "-o", "q.npz"],
     "val"),
    (["compare", str(TINY_CFG), "--calib", DOG, "--calib", HORSES, "--images", DOG], "calib"),
    (["compare", str(TINY_CFG), "--calib", DOG, "--images", DOG, "--images", HORSES], "images"),
    (["montecarlo", str(TINY_CFG), *RUNS, "--images", DOG, "--images", HORSES], "images"),
    (["worst-images", str(TINY_CFG), *RUNS, "--images", DOG, "--images", HORSES], "images"),
])
def test_an_image_list_option_given_twice_keeps_both_lists(argv, option):
    assert getattr(build_parser().parse_args(argv), option) == [DOG, HORSES]


def test_quantize_calibrates_on_every_calib_given(capsys, tmp_path):
    q = tmp_path / "q.npz"
    rc, _, err = cli(capsys, "quantize", TINY_CFG, "--weights", TINY_WEIGHTS, "--calib", DOG, "--calib", HORSES,
                     "--quiet", "-o", q)
    assert rc == 0, err
    assert "calibrated on 2 images" in err, err
    rc, out, err = cli(capsys, "info", q, "--json")
    assert rc == 0, err
    assert json.loads(out)["calibration_images"] == 2
