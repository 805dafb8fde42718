"""detect --save into the folder the images come from never replaces an input image."""
import subprocess
import sys

import engine
from helpers import ROOT, IMAGES

DETECTOR = ROOT / "tests" / "corpus" / "detector.cfg"


def test_detect_save_into_the_input_folder_keeps_the_photo(tmp_path):
    engine.load(DETECTOR, random_weights=0).save(tmp_path / "d.npz")
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = photos / "person.jpg"
    photo.write_bytes((IMAGES / "person.jpg").read_bytes())
    before = photo.read_bytes()
    r = subprocess.run([sys.executable, "-m", "engine", "detect", str(tmp_path / "d.npz"), str(photo), "--thresh",
                        "0.9", "--save", str(photos)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert photo.read_bytes() == before
    assert (photos / "person-1.jpg").is_file()
