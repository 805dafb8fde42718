"""Click -> pixels in a real browser: the Explorer in JupyterLab, driven by Playwright + chromium.

For yolov3-tiny (kl per tensor, INT) and random-weight yolov3 (416, INT), times from the click to the
frame where its result is in the DOM (polling on requestAnimationFrame): Step, node click (panel of the
clicked layer), Apply of a weight edit, tab switch, colour switch; and `Explorer(s)` (the cell that
builds the session and the view, to the rendered graph). The first click on a layer the run has not
reached pays the session's FLOAT reference forward (seconds on yolov3): it is in the max. Prints medians (goal: <= 150 ms on yolov3-tiny,
<= 300 ms on yolov3; Explorer(s) <= 3 s on yolov3). Not a test: figures, no assertions.

    python benchmarks/bench_browser.py [--repeat 5] [--models tiny,yolov3]
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "browser"), str(ROOT / "tests"), str(ROOT)]

from conftest import CHROMIUM, CHROMIUM_ARGS, NOTEBOOKS, Lab, _stop, _wait_ready, free_port  # noqa: E402

CY = "document.querySelector('.qw-explorer .qw-graph-canvas')._cyreg.cy"
STATUS = "document.querySelector('.qw-explorer .qw-controls .qw-status').innerText"


def start_lab(tmp: Path, model: str) -> Lab:
    root = tmp / "notebooks"
    shutil.copytree(NOTEBOOKS, root)
    for sub in ("workspaces", "settings", "runtime"):
        (tmp / sub).mkdir()
    token, port = secrets.token_hex(16), free_port()
    env = dict(os.environ, QW_BENCH_MODEL=model, JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("QW_MODEL_DIR", str(Path(os.environ.get("QW_SHARED", ROOT.parent / "shared")) / "models"))
    log = tmp / "lab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
                                 f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                                 f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
                                 f"--LabApp.user_settings_dir={tmp / 'settings'}", "--ServerApp.port_retries=0"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    lab = Lab(f"http://127.0.0.1:{port}", token, root, log, proc)
    _wait_ready(lab, 60)
    return lab


def timed(page, action, condition: str, timeout: float = 300_000) -> float:
    t0 = time.perf_counter()
    action()
    page.wait_for_function(condition, timeout=timeout, polling="raf")
    return time.perf_counter() - t0


def bench_model(pw, model: str, repeat: int) -> dict[str, list[float]]:
    from notebook_page import KERNEL_IDLE, run_all
    from test_explorer_round2_browser import button, click_node
    out: dict[str, list[float]] = {k: [] for k in ("Explorer(s) shown", "Step", "node click", "Apply edit",
                                                   "tab switch", "colour switch")}
    with tempfile.TemporaryDirectory() as d:
        lab = start_lab(Path(d), model)
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1600, "height": 2000}).new_page()
            page.goto(lab.notebook_url("explorer_round2.ipynb"))
            page.get_by_text(KERNEL_IDLE).first.wait_for(timeout=60_000)
            # Explorer(s): from Run All to the rendered graph (includes loading and quantizing the model)
            t0 = time.perf_counter()
            run_all(page)
            page.wait_for_function("() => { const el = document.querySelector('.qw-explorer .qw-graph-canvas');"
                                   " return el && el._cyreg && el._cyreg.cy.nodes().length > 1; }",
                                   timeout=600_000, polling="raf")
            out["Explorer(s) shown"].append(time.perf_counter() - t0)
            n = page.evaluate(f"() => {CY}.nodes().length") - 1
            for k in range(repeat):
                out["Step"].append(timed(page, lambda: button(page, "Step").click(),
                                         f"() => {STATUS}.startsWith('layer {k} ')"))
            page.locator(".qw-explorer .qw-graph-canvas").scroll_into_view_if_needed()
            for k in range(repeat):
                node = str((7 * k + 5) % min(n, 24))      # the first rows: on screen at zoom ~1
                out["node click"].append(timed(page, lambda: click_node(page, node),
                                               "() => document.querySelector('.qw-explorer .qw-layer-panel')"
                                               f".innerText.includes('layer {node}')"))
            click_node(page, "0")
            page.locator(".qw-explorer .lm-TabBar-tab", has_text="Weights").click()
            page.wait_for_timeout(500)
            for k in range(repeat):
                cell = page.locator(".qw-explorer .qw-weight-editor input[type=number]").first
                cell.fill(str(10 + k))
                out["Apply edit"].append(timed(page, lambda: button(page, "Apply").click(),
                                               f"() => {STATUS}.includes('-> {10 + k}')"))
            tabs = ["Layer", "Detections", "Weights", "Quantization"]
            for k in range(repeat):
                tab = tabs[k % len(tabs)]
                out["tab switch"].append(timed(
                    page, lambda: page.locator(".qw-explorer .lm-TabBar-tab", has_text=tab).click(),
                    "() => Array.from(document.querySelectorAll('.qw-explorer .lm-TabBar-tab.lm-mod-current'))"
                    f".some(t => t.innerText.trim() === {tab!r})"))
            sel = page.locator(".qw-explorer .qw-graph-view select").first
            for k in range(repeat):
                colour = ["sqnr", "type"][k % 2]
                cond = (f"() => {CY}.getElementById('0').data('label').endsWith(' dB')" if colour == "sqnr"
                        else f"() => !{CY}.getElementById('0').data('label').includes('dB')")
                out["colour switch"].append(timed(page, lambda: sel.select_option(colour), cond))
        finally:
            browser.close()
            _stop(lab.proc)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--models", default="tiny,yolov3")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright
    goal = {"tiny": 0.150, "yolov3": 0.300}
    with sync_playwright() as pw:
        for model in args.models.split(","):
            res = bench_model(pw, model, args.repeat)
            print(f"\n{model} (median of {args.repeat}; goal {1000 * goal.get(model, 0.15):.0f} ms per click)")
            for name, ts in res.items():
                if ts:
                    med = statistics.median(ts)
                    unit = f"{med:.2f} s" if med >= 1 else f"{1000 * med:.0f} ms"
                    spread = f"min {1000 * min(ts):.0f} ms, max {1000 * max(ts):.0f} ms" if len(ts) > 1 else ""
                    print(f"  {name:18s} {unit:>9s}  {spread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
