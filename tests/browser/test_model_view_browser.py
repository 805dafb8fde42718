"""ModelView in JupyterLab + chromium: graph canvas with 24 layers + input, panel images, Step moves
the highlight, no "Error displaying widget". Screenshots in the artifacts folder (see conftest)."""
from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

KERNEL_IDLE = re.compile(r"ipykernel\) \| Idle")
PANEL_IMAGES_JS = """() => Array.from(document.querySelectorAll('.qw-layer-panel img'))
    .filter(i => i.src && i.complete && i.naturalWidth > 0 && i.offsetParent !== null).length"""


def run_all(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def rerun_cell(page, index: int) -> None:
    """Select code cell `index` (0-based among all cells) and run it with Shift+Enter."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")


def kernel_line(page, pattern: str, timeout: float = 30_000) -> str:
    """The printed 'QW ...' line once it matches `pattern` (regex)."""
    loc = page.locator(".jp-OutputArea-output", has_text=re.compile(pattern))
    loc.first.wait_for(timeout=timeout)
    return loc.first.inner_text()


def drawn_fraction(png: bytes) -> float:
    """Share of pixels that are not (near) white: the graph was really drawn on the canvas."""
    a = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    return float((a < 235).mean())


def test_model_view_graph_panel_and_step(chromium, page, lab, artifacts):
    t0 = time.perf_counter()
    page.goto(lab.notebook_url("model_view.ipynb"))
    page.get_by_text(KERNEL_IDLE).first.wait_for(timeout=60_000)
    run_all(page)

    view = page.locator(".qw-model-view")
    view.wait_for(timeout=90_000)
    canvas = page.locator(".qw-graph-canvas canvas")
    canvas.first.wait_for(timeout=30_000)
    assert canvas.count() >= 1
    line = kernel_line(page, r"QW nodes=")
    assert "QW nodes=25 layers=24 current=['input'] edges=25" in line, line
    current = page.locator(".qw-current")
    assert current.inner_text() == "current: input (input)"
    page.wait_for_function(PANEL_IMAGES_JS + " >= 2", timeout=30_000)
    page.wait_for_timeout(800)           # dagre layout + fit animation
    page.screenshot(path=str(artifacts / "01_loaded.png"), full_page=True)
    graph_png = page.locator(".qw-graph-canvas").screenshot(path=str(artifacts / "01_graph.png"))
    assert drawn_fraction(graph_png) > 0.01, "the graph canvas looks empty"

    step = view.locator("button", has_text="Step")
    step.click()
    page.wait_for_function("() => document.querySelector('.qw-current').innerText === 'current: 0 (convolutional)'",
                           timeout=30_000)
    # layer 0: input + output montages, input/output/weights histograms, weight grid
    page.wait_for_function(PANEL_IMAGES_JS + " >= 6", timeout=30_000)
    assert "layer 0" in page.locator(".qw-layer-panel").inner_text()
    page.set_viewport_size({"width": 1400, "height": 2400})      # room for the whole panel
    page.wait_for_timeout(300)
    page.locator(".qw-layer-panel").screenshot(path=str(artifacts / "02_panel_layer0.png"))
    page.set_viewport_size({"width": 1400, "height": 1200})
    step.click()
    page.wait_for_function("() => document.querySelector('.qw-current').innerText === 'current: 1 (maxpool)'",
                           timeout=30_000)
    page.wait_for_timeout(500)
    after_png = page.locator(".qw-graph-canvas").screenshot(path=str(artifacts / "02_graph_after_steps.png"))
    assert after_png != graph_png, "the graph canvas did not change after Step"
    page.screenshot(path=str(artifacts / "02_after_steps.png"), full_page=True)
    rerun_cell(page, 2)
    line = kernel_line(page, r"current=\['1'\]")
    assert "QW nodes=25 layers=24" in line, line

    assert page.get_by_text("Error displaying widget").count() == 0
    (artifacts / "timing.txt").write_text(f"browser test body: {time.perf_counter() - t0:.1f} s\n")
