"""A run the machine has no memory for ends with one 'error:' line (exit 2), not a MemoryError traceback."""
import resource
import subprocess
import sys

import engine
from helpers import ROOT


def _cap():
    resource.setrlimit(resource.RLIMIT_AS, (1500 << 20, 1500 << 20))


def test_detect_out_of_memory_is_one_line(tmp_path):
    engine.load(ROOT / "tests" / "corpus" / "detector.cfg", random_weights=0).save(tmp_path / "d.npz")
    from PIL import Image
    Image.new("RGB", (8, 8)).save(tmp_path / "i.png")
    r = subprocess.run([sys.executable, "-m", "engine", "detect", str(tmp_path / "d.npz"), str(tmp_path / "i.png"),
                        "--size", "4000"], cwd=ROOT, capture_output=True, text=True, timeout=120, preexec_fn=_cap)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-500:]
    assert "out of memory" in r.stderr
