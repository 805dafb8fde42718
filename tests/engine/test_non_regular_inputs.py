"""A FIFO or device given as an image or a names file is refused at once (no hang, no unbounded read)."""
import os
import resource
import subprocess
import sys

import pytest

import engine
from helpers import ROOT


def _cap_memory():   # an unbounded read of /dev/zero must not take the test machine down with it
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def run(argv, timeout=60):
    try:
        return subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=_cap_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: {argv}")


def test_fifo_image_is_refused(tmp_path):
    os.mkfifo(tmp_path / "cam.jpg")
    r = run(["-c", "import sys; from engine.darknet.image import open_image; open_image(sys.argv[1])",
             tmp_path / "cam.jpg"], timeout=30)
    assert "ImageError" in r.stderr and "cam.jpg: cannot open image: not a regular file" in r.stderr


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_names_must_be_a_regular_file(tmp_path, kind):
    path = tmp_path / "coco.names"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path = kind
    r = run(["-c", "import sys; from engine.model import read_names; read_names(sys.argv[1])", path], timeout=30)
    assert "EngineError" in r.stderr and "cannot read class names" in r.stderr and "not a regular file" in r.stderr


def test_cli_detect_with_a_fifo_image_does_not_hang(tmp_path):
    engine.load(ROOT / "tests" / "corpus" / "detector.cfg", random_weights=0).save(tmp_path / "d.npz")
    os.mkfifo(tmp_path / "x.png")
    r = run(["-m", "engine", "detect", tmp_path / "d.npz", tmp_path / "x.png"])
    assert r.returncode == 1 and "not a regular file" in r.stderr
