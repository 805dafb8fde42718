"""`--dask local:N` stopped by a bad image ends in the one error line it gives without Dask: Dask's WARNING lines
("Async instruction for <Task cancelled ...> ended with CancelledError", "Worker process still alive after 4.0
seconds, killing") followed it on stderr, from the batches the run cancelled and the workers closed."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import IMAGES, ROOT


def test_a_bad_image_on_a_local_cluster_is_one_error_line(tmp_path, tiny):
    pytest.importorskip("distributed")
    from engine.cli.main import main
    model = tiny.save(tmp_path / "tiny.npz")
    q = tmp_path / "q.npz"
    assert main([str(a) for a in ("quantize", model, "--size", "224", "--calib", IMAGES / "dog.jpg", "--quiet",
                                  "-o", q)]) == 0
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((IMAGES / "dog.jpg").read_bytes()[:5000])
    res = subprocess.run([sys.executable, "-m", "engine", "montecarlo", str(model), "-q", str(q), "--size", "224",
                          "--images", str(IMAGES / "dog.jpg"), str(broken), "--variants", "4", "--dask", "local:1"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == f"error: {broken}: corrupt or truncated image data (Truncated File Read)\n"
