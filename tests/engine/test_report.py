"""Size and speed report: totals equal the graph / model_size figures, timings per mode, fit verdicts, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine.quant.fitness import model_size
from engine.quant.report import size_speed_report


@pytest.fixture(scope="module")
def report(tiny, tiny_q):
    return size_speed_report(tiny, tiny_q, repeats=1)


def test_report_totals_match_graph_and_model_size(tiny, tiny_q, report):
    t = report.totals
    assert len(report.rows) == len(tiny.layers)
    assert t["params"] == tiny.graph.total_params and t["macs"] == tiny.graph.total_macs
    size = model_size(tiny, tiny_q)
    assert t["float_bytes"] == size.float_bytes and t["int8_bytes"] == size.int8_bytes
    assert t["compression_pct"] == pytest.approx(size.compression)
    conv = [r for r in report.rows if r["kind"] == "convolutional"]
    assert all(70 < r["compression_pct"] < 75.1 for r in conv)     # layer 0: 71.8% (3-channel input, biases)


def test_report_times_every_layer_in_every_mode(report):
    for mode in ("float", "hybrid", "int"):
        ms = np.array([r[f"{mode}_ms"] for r in report.rows])
        assert (ms > 0).all() and np.isclose(ms.sum(), report.totals[f"{mode}_ms"])
    peak = report.peak_activation_bytes
    assert peak["int"] < peak["float"] == peak["hybrid"]
    assert peak["float"] >= 4 * (3 * 416 * 416 + 16 * 416 * 416)      # input + layer 0's output


def test_fits_names_what_does_not_fit(report):
    ok = report.fits(64 << 20, 64 << 20, 1e6)
    assert ok["fits"] and "fits" in ok["verdict"]
    tight = report.fits(1 << 20, 1 << 20, 1e6)
    assert not tight["fits"] and not tight["flash"]["ok"] and not tight["ram"]["ok"] and tight["latency_ms"]["ok"]
    assert "flash needs 8.46 MiB > 1.00 MiB" in tight["verdict"]
    assert report.fits(64 << 20, 20 << 20, 1e6, mode="float")["flash"]["ok"] is False   # 33.8 MiB of float32


def test_report_cli_prints_json_with_a_fit(tiny_q, tmp_path):
    """Through `python -m engine report` itself, as a user types it."""
    import subprocess
    import sys
    from helpers import ROOT, TINY_CFG, TINY_WEIGHTS
    q = tiny_q.save(tmp_path / "q.npz")
    out = subprocess.run([sys.executable, "-m", "engine", "report", str(TINY_CFG), "--weights", str(TINY_WEIGHTS),
                          "-q", str(q), "--repeats", "1", "--ram", "8", "--flash", "16", "--budget-ms", "100000",
                          "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["fit"]["fits"] is True and doc["totals"]["int8_bytes"] == tiny_q.int8_bytes()
    assert [r["index"] for r in doc["rows"]] == list(range(24))
