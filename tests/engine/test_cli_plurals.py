"""The command line's summaries count in English: "1 image", "1 detection", "1 layer" (qa8: `quantize` printed
"calibrated on 1 images"; detect, explain, info, dump and Monte Carlo wrote the same "1 <plural>")."""
from __future__ import annotations

from engine.quant.progress import counted
from engine.scale.montecarlo import MonteCarloResult, Variant
from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS, cli


def test_counted_says_one_thing_and_many_things():
    assert [counted(n, "image") for n in (0, 1, 2)] == ["0 images", "1 image", "2 images"]


def test_detect_with_one_detection_says_one_detection(capsys):
    # at --thresh 0.6 yolov3-tiny finds only the car in dog.jpg (62 %); at 0.55 four things
    rc, out, err = cli(capsys, "detect", TINY_CFG, "--weights", TINY_WEIGHTS, IMAGES / "dog.jpg", "--thresh", "0.6")
    assert rc == 0, err
    assert out.splitlines()[0] == "dog.jpg: 1 detection", out


def test_info_of_a_one_layer_cfg_says_one_layer(capsys, tmp_path):
    cfg = tmp_path / "one.cfg"
    cfg.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n\n[maxpool]\nsize=2\nstride=2\n")
    rc, out, err = cli(capsys, "info", cfg)
    assert rc == 0, err
    assert "input 3x32x32; 1 layer; 0 params;" in out, out


def test_monte_carlo_report_of_one_variant_of_one_image():
    v = Variant(index=0, image=0, angle=0.0, blur=0.0, brightness=1.0, contrast=1.0, noise=0.0, scale=1.0,
                flip=False, flop=False, seed=0)
    row = {"hybrid": {"map50": 1.0, "map50_95": 1.0, "matched": 1, "missed": 0, "extra": 0}}
    res = MonteCarloResult([v], [row], ("hybrid",), seed=3, sources=["dog.jpg"], labels=["dog.jpg"], seconds=1.0)
    assert res.report().splitlines()[0] == "Monte Carlo: 1 variant of 1 image, seed 3, 1.0 s"
