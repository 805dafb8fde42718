"""-o naming one of the command's own input files is refused before any work; the input survives."""
import subprocess
import sys

import pytest

import engine
from helpers import ROOT

DETECTOR = ROOT / "tests" / "corpus" / "detector.cfg"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def files(tmp_path):
    m = engine.load(DETECTOR, random_weights=0)
    cfg = tmp_path / "d.cfg"
    cfg.write_bytes(DETECTOR.read_bytes())
    m.save_weights(tmp_path / "d.weights")
    m.save(tmp_path / "d.npz")
    from PIL import Image
    Image.new("RGB", (20, 20), (200, 10, 10)).save(tmp_path / "img.png")
    return tmp_path


@pytest.mark.parametrize("argv, victim", [
    (["convert", "d.cfg", "d.weights", "-o", "d.weights"], "d.weights"),
    (["convert", "d.cfg", "d.weights", "-o", "d.cfg"], "d.cfg"),
    (["quantize", "d.npz", "--calib", "img.png", "--quiet", "-o", "d.npz"], "d.npz"),
    (["dump", "d.npz", "--image", "img.png", "-o", "d.npz"], "d.npz"),
    (["export", "d.npz", "--format", "weights", "-o", "d.npz"], "d.npz"),
])
def test_output_equal_to_an_input_is_refused(files, argv, victim):
    before = (files / victim).read_bytes()
    r = cli(*[files / a if (files / a).exists() else a for a in argv])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "is the input" in r.stderr and victim in r.stderr
    assert (files / victim).read_bytes() == before
