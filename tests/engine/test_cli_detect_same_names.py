"""detect --json keeps one entry per input image, also when two inputs share a file name."""
import json
import subprocess
import sys

from PIL import Image

import engine
from helpers import ROOT

DETECTOR = ROOT / "tests" / "corpus" / "detector.cfg"


def test_two_images_with_the_same_name_both_reported(tmp_path):
    engine.load(DETECTOR, random_weights=0).save(tmp_path / "d.npz")
    for sub, size in (("a", (20, 10)), ("b", (30, 40))):
        (tmp_path / sub).mkdir()
        Image.new("RGB", size, (90, 20, 20)).save(tmp_path / sub / "frame.png")
    a, b = str(tmp_path / "a" / "frame.png"), str(tmp_path / "b" / "frame.png")
    r = subprocess.run([sys.executable, "-m", "engine", "detect", str(tmp_path / "d.npz"), a, b, a, "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    images = json.loads(r.stdout)["images"]
    assert len(images) == 3
    assert images["frame.png"]["width"] == 20 and images[b]["width"] == 30 and images[a]["width"] == 20
