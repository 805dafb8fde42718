"""A standard stream the shell closed (`cmd >&-`, `cmd 2>&-`; Python leaves sys.stdout / sys.stderr as None):
`quantize ... >&-` wrote its file and then ended in an AttributeError traceback with exit 1; a result printed to a
closed stdout vanished with exit 0; with stderr closed the error line went to stdout (into a --json consumer)."""
from __future__ import annotations

import os
import subprocess
import sys

from helpers import IMAGES, ROOT, TINY_CFG, TINY_WEIGHTS

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
CLOSED = "error: standard output is closed, so the result cannot be printed (redirect it to a file, or to " \
         "/dev/null to discard it)\n"


def run_closed(fd: int, *args):
    """python -m engine ARGS with file descriptor `fd` (1 or 2) closed; the other one captured."""
    res = subprocess.run([sys.executable, "-m", "engine", *map(str, args)], env=ENV, timeout=300, text=True,
                         stdout=subprocess.PIPE if fd == 2 else None, stderr=subprocess.PIPE if fd == 1 else None,
                         preexec_fn=lambda: os.close(fd))
    return res.returncode, res.stdout if fd == 2 else res.stderr


def test_quantize_with_stdout_closed_writes_its_file_and_exits_0(tmp_path):
    q = tmp_path / "q.npz"
    code, err = run_closed(1, "quantize", TINY_CFG, "--weights", TINY_WEIGHTS, "--size", "160", "--calib",
                           IMAGES / "dog.jpg", "--quiet", "-o", q)
    assert code == 0 and "Traceback" not in err and err.startswith(f"wrote {q}: "), err
    assert q.stat().st_size > 0


def test_a_result_printed_to_a_closed_stdout_is_an_error():
    assert run_closed(1, "info", TINY_CFG) == (2, CLOSED)
    assert run_closed(1, "info", TINY_CFG, "--json") == (2, CLOSED)


def test_help_with_stdout_closed_goes_to_stderr():
    code, err = run_closed(1, "info", "-h")
    assert code == 0 and err.startswith("usage: python -m engine info ") and "Traceback" not in err


def test_an_error_with_stderr_closed_never_goes_to_stdout(tmp_path):
    assert run_closed(2, "info", tmp_path / "missing.cfg", "--json") == (2, "")
    code, out = run_closed(2, "info", TINY_CFG)
    assert code == 0 and out.splitlines()[0].split() == ["idx", "type", "inputs", "output", "(CxHxW)", "params", "MACs"]
