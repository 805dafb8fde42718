"""`python -m engine` killed with SIGTERM or SIGHUP in the middle of writing its output keeps the old
file and leaves no temp file (as Ctrl-C already did)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import engine

REPO = Path(__file__).resolve().parents[2]
CFG = """[net]
width=8
height=8
channels=3

[convolutional]
batch_normalize=1
filters=512
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=1024
size=3
stride=1
pad=1
activation=leaky
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_mid_write_leaves_old_output_and_no_temp_file(tmp_path, sig):
    cfg = tmp_path / "big.cfg"
    cfg.write_text(CFG)
    weights = tmp_path / "big.weights"
    engine.load(cfg, random_weights=0).save_weights(weights)
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.npz").write_bytes(b"old")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"}
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-m", "engine", "convert", str(cfg), str(weights), "-o",
                                 str(out / "m.npz")], env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline and \
                not any(".qwtmp-" in n for n in os.listdir(out)):
            time.sleep(0.001)
        mid_write = proc.poll() is None
        proc.send_signal(sig)
        proc.wait(30)
        if mid_write:
            break
        (out / "m.npz").write_bytes(b"old")
    assert mid_write, "no signal landed during the write"
    assert os.listdir(out) == ["m.npz"]
    assert proc.returncode == 128 + sig
    assert (out / "m.npz").read_bytes() == b"old"


def test_interrupt_right_after_the_temp_file_is_created_removes_it(tmp_path, monkeypatch):
    """Jupyter's Interrupt (KeyboardInterrupt) landing between the temp file's creation and the write:
    in a long-lived kernel the sweep never reclaims a temp file of its own pid."""
    import engine.atomic as atomic
    (tmp_path / "m.npz").write_bytes(b"old")

    real_open = os.open

    def interrupted(path, flags, *a, **kw):   # the interrupt arrives as the create returns
        os.close(real_open(path, flags, *a, **kw))
        raise KeyboardInterrupt
    monkeypatch.setattr(atomic.os, "open", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_write(tmp_path / "m.npz", b"new")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["m.npz"] and (tmp_path / "m.npz").read_bytes() == b"old"
