"""Explorer in JupyterLab + chromium: the graph canvas with all 24 layers (+ input), panel images, Step
moves the highlight and updates the panel, CROSS reports in the status line, no "Error displaying
widget"; Run, then the Detections tab shows FLOAT and INT detections; a `session.run_to(3)` in a cell
moves the rendered highlight, the panel and the controls like a click; a `session.set_model(...)` in a
cell (yolov2-tiny) replaces the rendered graph (17 nodes) and Step still moves its highlight.

The graph is checked as rendered: cytoscape.js registers itself on its container element
(`el._cyreg.cy`), and ipycytoscape's container is the widget's own element, the one carrying our
`qw-graph-canvas` class; node count and the `current` / `picked` classes are read from that instance.
Screenshots in the artifacts folder (see conftest); with QW_UPDATE_DOCS=1 the loaded-and-stepped
screenshot is also written to docs/explorer.png (the README's picture)."""
from __future__ import annotations

import io
import os
import re
import time

import pytest
from PIL import Image

from notebook_page import KERNEL_IDLE, drawn_fraction, kernel_line, rerun_cell, run_all

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

PANEL_IMAGES_JS = """() => Array.from(document.querySelectorAll('.qw-explorer .qw-layer-panel img'))
    .filter(i => i.src && i.complete && i.naturalWidth > 0 && i.offsetParent !== null).length"""
CURRENT_JS = "() => document.querySelector('.qw-explorer .qw-current').innerText === {!r}"
# the rendered graph: null until cytoscape has drawn it
GRAPH_JS = """() => {
    const el = document.querySelector('.qw-explorer .qw-graph-canvas');
    const cy = el && el._cyreg && el._cyreg.cy;
    if (!cy || cy.nodes().length === 0) return null;
    const ids = sel => cy.nodes(sel).map(n => n.id());
    return {nodes: cy.nodes().length, edges: cy.edges().length, current: ids('.current'), picked: ids('.picked')};
}"""


def wait_for_graph(page, current: str, timeout: float = 30_000) -> dict:
    """The rendered graph once exactly node `current` carries the highlight (and is picked: the panel follows)."""
    page.wait_for_function(f"() => {{ const g = ({GRAPH_JS})(); return g !== null && g.current.length === 1 "
                           f"&& g.current[0] === {current!r} && g.picked[0] === {current!r}; }}", timeout=timeout)
    return page.evaluate(GRAPH_JS)
DOCS_PNG_MAX = 300_000


def save_docs_png(png: bytes, path, max_height: int = 1100) -> None:
    """A README-sized copy: the top of the Explorer (controls, graph, panel head), palette PNG, at most
    DOCS_PNG_MAX bytes."""
    im = Image.open(io.BytesIO(png)).convert("RGB")
    im = im.crop((0, 0, im.width, min(im.height, max_height)))
    for colours in (256, 128, 64):
        buf = io.BytesIO()
        im.quantize(colours).save(buf, format="PNG", optimize=True)
        if buf.tell() <= DOCS_PNG_MAX:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def test_explorer_graph_panel_step_and_cross(chromium, page, lab, artifacts):
    t0 = time.perf_counter()
    errors: list[str] = []          # what the frontend threw or logged as an error (e.g. a duplicate element id)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(lab.notebook_url("explorer.ipynb"))
    page.get_by_text(KERNEL_IDLE).first.wait_for(timeout=60_000)
    run_all(page)

    view = page.locator(".qw-explorer")
    view.wait_for(timeout=120_000)
    page.locator(".qw-explorer .qw-graph-canvas canvas").first.wait_for(timeout=30_000)
    line = kernel_line(page, r"QW nodes=", timeout=60_000)
    assert "position=-1 panel=input" in line, line
    graph = wait_for_graph(page, "input")
    assert graph["nodes"] == 25 and graph["edges"] == 25, graph          # input + 24 layers, as rendered
    assert page.locator(".qw-explorer .qw-current").inner_text() == "current: input (int)"
    page.wait_for_function(PANEL_IMAGES_JS + " >= 2", timeout=30_000)
    page.wait_for_timeout(800)           # dagre layout + fit animation
    page.screenshot(path=str(artifacts / "01_loaded.png"), full_page=True)
    graph_png = page.locator(".qw-explorer .qw-graph-canvas").screenshot(path=str(artifacts / "01_graph.png"))
    assert drawn_fraction(graph_png) > 0.01, "the graph canvas looks empty"

    step = view.locator(".qw-controls button", has_text=re.compile(r"^\s*Step$"))
    step.click()
    page.wait_for_function(CURRENT_JS.format("current: 0 (convolutional, int8)"), timeout=30_000)
    wait_for_graph(page, "0")                                            # Step moved the rendered highlight
    # layer 0 in INT: input/output montages, FLOAT/INT/error images, histograms, weight grid
    page.wait_for_function(PANEL_IMAGES_JS + " >= 8", timeout=30_000)
    assert "layer 0" in view.locator(".qw-layer-panel").inner_text()
    step.click()
    page.wait_for_function(CURRENT_JS.format("current: 1 (maxpool, int8)"), timeout=30_000)
    page.wait_for_function("() => document.querySelector('.qw-explorer .qw-layer-panel').innerText"
                           ".includes('layer 1')", timeout=30_000)
    assert wait_for_graph(page, "1")["current"] == ["1"]
    page.wait_for_timeout(500)
    page.locator(".qw-explorer .qw-graph-canvas").screenshot(path=str(artifacts / "02_graph_after_steps.png"))
    page.set_viewport_size({"width": 1400, "height": 2600})          # room for the whole Explorer
    page.wait_for_timeout(300)
    stepped = page.locator(".qw-explorer").screenshot(path=str(artifacts / "02_explorer_after_steps.png"))

    view.locator(".qw-controls button", has_text="CROSS").click()
    page.wait_for_function("() => document.querySelector('.qw-explorer .qw-status').innerText"
                           ".startsWith('CROSS layer 1: ran int8, other float')", timeout=30_000)
    page.locator(".qw-explorer").screenshot(path=str(artifacts / "03_cross.png"))
    page.set_viewport_size({"width": 1400, "height": 1200})
    rerun_cell(page, 2)
    line = kernel_line(page, r"current=\['1'\]")
    assert "current=['1'] position=1 panel=1" in line, line

    view.locator(".qw-controls button", has_text=re.compile(r"^\s*Run$")).click()
    page.wait_for_function("() => document.querySelector('.qw-explorer .qw-status').innerText"
                           ".startsWith('ran to the end')", timeout=60_000)
    view.locator(".lm-TabBar-tab", has_text="Detections").click()
    page.wait_for_function("""() => Array.from(document.querySelectorAll('.qw-explorer .qw-detections img'))
        .filter(i => i.complete && i.naturalWidth > 0 && i.offsetParent !== null).length === 2""", timeout=30_000)
    # the tab fills FLOAT first and the run's side after it (two redraws): wait for the run's labels
    page.wait_for_function("() => document.querySelector('.qw-explorer .qw-detections').innerText"
                           ".includes('dog') && !document.querySelector('.qw-explorer .qw-detections').innerText"
                           ".includes('run to the end')", timeout=30_000)
    page.locator(".qw-explorer").screenshot(path=str(artifacts / "04_detections.png"))

    rerun_cell(page, 3)                                  # ex.session.run_to(3) from code, no click
    page.wait_for_function(CURRENT_JS.format("current: 3 (maxpool, int8)"), timeout=30_000)
    wait_for_graph(page, "3")
    page.wait_for_function("() => document.querySelector('.qw-explorer .qw-status').innerText"
                           ".startsWith('session moved from code: at layer 3')", timeout=30_000)
    # the panel is drawn when its tab is shown (the Detections tab was in front)
    view.locator(".lm-TabBar-tab", has_text="Layer").click()
    page.wait_for_function("() => document.querySelector('.qw-explorer .qw-layer-panel').innerText"
                           ".includes('layer 3')", timeout=30_000)
    page.locator(".qw-explorer").screenshot(path=str(artifacts / "05_code_driven.png"))

    rerun_cell(page, 4)                                  # ex.session.set_model(yolov2-tiny) from code
    page.wait_for_function("() => document.querySelector('.qw-explorer .qw-status').innerText"
                           ".startsWith('session opened another model from code: yolov2-tiny')", timeout=60_000)
    page.wait_for_function(f"() => {{ const g = ({GRAPH_JS})(); return g !== null && g.nodes === 17; }}",
                           timeout=30_000)
    graph = wait_for_graph(page, "input")
    assert graph["nodes"] == 17 and graph["edges"] == 16, graph          # input + 16 layers, old ids gone
    step.click()                                         # the rebuilt nodes follow a step like the first ones
    page.wait_for_function(CURRENT_JS.format("current: 0 (convolutional, float)"), timeout=30_000)
    wait_for_graph(page, "0")
    page.wait_for_timeout(800)                           # dagre layout + fit animation
    page.locator(".qw-explorer").screenshot(path=str(artifacts / "06_other_model.png"))
    assert errors == [], errors

    assert page.get_by_text("Error displaying widget").count() == 0
    if os.environ.get("QW_UPDATE_DOCS"):
        from conftest import REPO
        save_docs_png(stepped, REPO / "docs" / "explorer.png")
    (artifacts / "timing.txt").write_text(f"browser test body: {time.perf_counter() - t0:.1f} s\n")
