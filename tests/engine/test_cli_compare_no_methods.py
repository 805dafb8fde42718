"""compare --methods with no method name is refused with one line, before the calibration pass."""
import subprocess
import sys

import pytest
from PIL import Image

import engine
from helpers import ROOT

DETECTOR = ROOT / "tests" / "corpus" / "detector.cfg"


@pytest.mark.parametrize("methods", ["", ",", " , "])
def test_compare_without_methods(tmp_path, methods):
    engine.load(DETECTOR, random_weights=0).save(tmp_path / "d.npz")
    Image.new("RGB", (20, 20), (90, 20, 20)).save(tmp_path / "i.png")
    r = subprocess.run([sys.executable, "-m", "engine", "compare", str(tmp_path / "d.npz"), "--calib",
                        str(tmp_path / "i.png"), "--images", str(tmp_path / "i.png"), "--methods", methods, "--quiet"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: --methods")
