"""The heap policy (engine/kernels/heap.py): a freed 64 MiB buffer is reused without touching fresh pages,
and QW_MALLOC=system keeps glibc's own behaviour (a fresh mapping: at least 16 faults of 2 MiB pages,
16,384 of 4 KiB ones)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import resource, numpy as np, engine
from engine.kernels import heap
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(64 << 18, np.float32); del a
f0 = faults(); b = np.ones(64 << 18, np.float32)
print(heap._applied, faults() - f0)
"""


def _probe(malloc: str) -> tuple[str, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QW_MALLOC": malloc}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_buffers_are_reused_without_page_faults():
    applied, faults = _probe("")
    assert applied == "True" and faults < 4
    applied, faults = _probe("system")
    assert applied == "False" and faults >= 16


def test_the_policy_is_applied_once():
    from engine.kernels import heap
    first = heap.keep_freed_memory()
    assert heap.keep_freed_memory() is first
