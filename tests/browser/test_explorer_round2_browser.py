"""Explorer round 2 (issue 18) in JupyterLab + chromium at 1600 px, one server start for every check:

- item 4: hovering a node writes its text above the canvas, leaving it clears it; no click tooltip lingers;
- the graph reads: rendered zoom >= 0.75 (nodes >= 78 px wide, 12 px text), every node label carries its
  index and kind, the wheel zoom stops at MAX_ZOOM after 12 notches (it reached 3e13), Find selects;
- item 3: click node 12 (real mouse click on the canvas) -> Step x3 -> Run to selected stops at 12;
- sqnr colouring writes dB values on the nodes and a legend with unit and direction;
- item 1: CROSS -> Continue -> Run: the Detections tab shows the session's own INT detections;
- item 9: the Detections tab lists lost detections (kl per tensor loses some) and both pictures have
  one size;
- item 2: picking horses in the Image dropdown opens it (no 'Use image' click);
- Explain: the table, the culprit chart, the recovery colours; Keep fix FLOAT re-runs with the fix;
- item 10: no broken image anywhere (every visible <img> decoded).
Screenshots go to the artifacts folder; with QW_UPDATE_DOCS=1 also to docs/explorer.png and
docs/gallery/*.png (the README's figures)."""
from __future__ import annotations

import os
import re

import pytest

from test_explorer_browser import save_docs_png
from notebook_page import kernel_line, open_and_run, rerun_cell, wait_for_graph_nodes

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

CY = "document.querySelector('.qw-explorer .qw-graph-canvas')._cyreg.cy"
STATUS = "document.querySelector('.qw-explorer .qw-controls .qw-status').innerText"
PANEL_TITLE = "document.querySelector('.qw-explorer .qw-layer-panel .qw-panel-title').innerText"
BROKEN_JS = """() => Array.from(document.querySelectorAll('.qw-explorer img'))
    .filter(i => i.offsetParent !== null && !(i.complete && i.naturalWidth > 0)).length"""


def click_node(page, node_id: str) -> None:
    """A real mouse click at the node's rendered position on the cytoscape canvas."""
    x, y = page.evaluate(f"""() => {{
        const cy = {CY}; const n = cy.getElementById({node_id!r});
        const box = cy.container().getBoundingClientRect(); const p = n.renderedPosition();
        return [box.left + p.x, box.top + p.y]; }}""")
    page.mouse.click(x, y)


def wait_status(page, prefix: str, timeout: float = 60_000) -> None:
    page.wait_for_function(f"() => {STATUS}.startsWith({prefix!r})", timeout=timeout)


def button(page, text: str):
    return page.locator(".qw-explorer button", has_text=re.compile(rf"^\s*{re.escape(text)}\s*$")).first


def docs(png_path, name: str) -> None:
    if os.environ.get("QW_UPDATE_DOCS"):
        from conftest import REPO
        save_docs_png(png_path.read_bytes(), REPO / "docs" / name, max_height=1400)


def test_explorer_round2_in_the_browser(chromium, page, lab, artifacts):
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    # 1600 px wide as in the issue; tall, so element screenshots of the whole Explorer are painted
    open_and_run(page, lab, "explorer_round2.ipynb", 1600, 2000)
    page.locator(".qw-explorer .qw-graph-canvas canvas").first.wait_for(timeout=240_000)
    wait_for_graph_nodes(page, 25, timeout=60_000)
    page.wait_for_timeout(1000)

    # the graph reads at 1600 px: fitted zoom, node size, labels, bounded wheel
    g = page.evaluate(f"""() => {{ const cy = {CY}; const n = cy.getElementById('12');
        return {{zoom: cy.zoom(), w: n.renderedWidth(), label: n.data('label'), min: cy.minZoom(), max: cy.maxZoom(),
                 labels: cy.nodes().map(x => x.data('label'))}}; }}""")
    assert g["zoom"] >= 0.75 and g["w"] >= 78, g
    assert g["label"] == "12 conv" and all(re.match(r"^(input|\d+ \w+)", lbl) for lbl in g["labels"]), g
    canvas = page.locator(".qw-explorer .qw-graph-canvas")
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(12):
        page.mouse.wheel(0, -300)
        page.wait_for_timeout(30)
    zoom = page.evaluate(f"() => {CY}.zoom()")
    assert zoom <= g["max"] + 1e-9 and g["max"] <= 4, zoom
    button(page, "Fit").click()
    page.wait_for_function(f"() => {CY}.zoom() < 1.5", timeout=30_000)
    page.screenshot(path=str(artifacts / "01_loaded.png"), full_page=True)

    # item 3: a real click on node 12, three Steps, Run to selected (the mouse comes from outside the graph:
    # after the zoom and Fit it rested on node 12 without a mouseover)
    page.mouse.move(5, 5)
    click_node(page, "12")
    page.wait_for_function("() => document.querySelector('.qw-explorer .qw-layer-panel').innerText"
                           ".includes('layer 12')", timeout=30_000)
    # item 4: the hover line shows the node under the mouse and empties when the mouse leaves it; the click
    # left no tooltip behind (ipycytoscape's click tooltip stayed over the neighbours until the next click)
    page.wait_for_function("() => document.querySelector('.qw-explorer .qw-hover').innerText"
                           ".includes('12 [convolutional]')", timeout=30_000)
    # the click left the keyboard focus inside the Explorer (the graph's focus keeper; cytoscape's mousedown
    # had left <body> focused, and JupyterLab then refocused the notebook and its cell on the next mousedown,
    # three whole-notebook restyles), without scrolling; a click the kernel handles late moves no focus, so
    # when this one was late (a loaded host) it is repeated once with the kernel idle
    keeper = "() => !!document.activeElement && document.activeElement.classList.contains('qw-focus-keeper')"
    scroll = "() => document.querySelector('.jp-WindowedPanel-outer').scrollTop"
    top0 = page.evaluate(scroll)
    try:
        page.wait_for_function(keeper, timeout=10_000)
    except Exception:
        click_node(page, "12")
        page.wait_for_function(keeper, timeout=10_000)
    assert page.evaluate(scroll) == top0 and page.evaluate(f"() => {CY}.autoungrabify()")
    box = canvas.bounding_box()                 # the mouse leaves the node for the graph's empty corner
    page.mouse.move(box["x"] + box["width"] - 4, box["y"] + box["height"] - 4, steps=4)
    page.wait_for_function("() => document.querySelector('.qw-explorer .qw-hover').innerText.trim() === ''",
                           timeout=30_000)
    tips = page.evaluate("() => Array.from(document.querySelectorAll('[data-tippy-root], .tippy-popper'))"
                         ".filter(t => t.offsetParent !== null || t.getBoundingClientRect().width > 0).length")
    assert tips == 0, "a node tooltip is still shown after the mouse left the graph"
    for k in range(3):
        button(page, "Step").click()
        wait_status(page, f"layer {k} ")
    assert page.evaluate(f"() => {CY}.nodes('.picked').map(n => n.id())") == ["12"]
    button(page, "Run to selected").click()
    wait_status(page, "ran to layer 12 ")

    # sqnr colouring: dB on nodes, legend with unit and direction, worst list
    top = page.evaluate(f"() => {CY}.container().getBoundingClientRect().top")
    page.locator(".qw-explorer .qw-graph-view select").first.select_option("sqnr")
    page.wait_for_function(f"() => {CY}.getElementById('12').data('label').endsWith(' dB')", timeout=30_000)
    legend = page.locator(".qw-explorer .qw-legend").inner_text()
    assert "dB (higher is better)" in legend and "good" in legend and "bad" in legend, legend
    assert page.locator(".qw-explorer .qw-worst option").count() == 5
    # cytoscape keeps the canvas's page position it measured before and maps clicks with it (it re-measures
    # on resize and scroll only): the sqnr legend and worst list used to push the canvas down, and these
    # real clicks then selected another node or none. The canvas stays put, and the clicks land.
    moved = page.evaluate(f"() => {CY}.container().getBoundingClientRect().top") - top
    assert abs(moved) < 1, f"the canvas moved {moved} px when the colouring changed"
    for node in ("7", "12"):
        click_node(page, node)
        page.wait_for_function(f"() => {PANEL_TITLE}.trim().startsWith('layer {node} ')", timeout=30_000)
        assert page.evaluate(f"() => {CY}.nodes('.picked').map(n => n.id())") == [node], (node, moved)
    page.wait_for_timeout(500)
    page.locator(".qw-explorer").screenshot(path=str(artifacts / "02_sqnr_layer12.png"))
    docs(artifacts / "02_sqnr_layer12.png", "explorer.png")

    # item 1: CROSS -> Continue -> Run
    button(page, "CROSS").click()
    wait_status(page, "CROSS layer 12")
    button(page, "Continue").click()
    wait_status(page, "continued from layer 12")
    button(page, "Run").click()
    wait_status(page, "ran to the end")
    page.locator(".qw-explorer .lm-TabBar-tab", has_text="Detections").click()
    det = page.locator(".qw-explorer .qw-detections")
    # the old code kept "INT, continued from layer 12 (CROSS result)" here for good: this wait timed out
    page.wait_for_function("() => { const d = document.querySelector('.qw-explorer .qw-detections');"
                           " return d && !d.innerText.includes('continued') && d.innerText.includes('lost'); }",
                           timeout=30_000)
    text = det.inner_text()
    assert "continued" not in text and "CROSS" not in text, text
    rerun_cell(page, 3)
    line = kernel_line(page, r"QW position=23")
    n_int = int(re.search(r"dets=(\d+)", line).group(1))
    assert f"INT: {n_int} detection{'' if n_int == 1 else 's'}" in text, (text, line)
    sizes = page.evaluate("""() => Array.from(document.querySelectorAll('.qw-explorer .qw-detections img'))
        .map(i => [i.naturalWidth, i.naturalHeight, Math.round(i.getBoundingClientRect().width)])""")
    assert len(sizes) == 2 and sizes[0] == sizes[1], sizes
    det.screenshot(path=str(artifacts / "03_detection_diff.png"))
    docs(artifacts / "03_detection_diff.png", "gallery/detection_diff.png")

    # Explain: table, chart, graph colours, then keep the fix FLOAT and re-run
    page.locator(".qw-explorer .lm-TabBar-tab", has_text="Explain").click()
    button(page, "Explain lost / shifted").click()
    page.wait_for_function("() => document.querySelector('.qw-explorer .qw-explain') !== null", timeout=300_000)
    assert "fix: keep FLOAT" in page.locator(".qw-explorer .qw-explain").inner_text()
    page.wait_for_function("() => Array.from(document.querySelectorAll('.qw-explorer .qw-explain-view img'))"
                           ".some(i => i.naturalWidth > 0)", timeout=30_000)
    page.wait_for_function(f"() => {CY}.getElementById('0').data('label').includes('%')", timeout=30_000)
    page.locator(".qw-explorer").screenshot(path=str(artifacts / "04_explain.png"))
    docs(artifacts / "04_explain.png", "gallery/explain.png")
    keep = page.locator(".qw-explorer .qw-explain-view button", has_text="FLOAT and re-run")
    if keep.is_enabled():
        keep.click()
        page.wait_for_function("() => document.querySelector('.qw-explorer .qw-controls .qw-status')"
                               ".innerText.includes('kept FLOAT')", timeout=120_000)
        rerun_cell(page, 3)
        line = kernel_line(page, r"float_layers=\[\d")
        assert "position=23" in line, line

    # worst images over the set: ranked in the background, table + chart
    page.locator(".qw-explorer .lm-TabBar-tab", has_text="Images").click()
    button(page, "Rank images").click()
    page.wait_for_function("() => document.querySelector('.qw-explorer .qw-worst-images') !== null", timeout=300_000)
    page.wait_for_function("() => Array.from(document.querySelectorAll('.qw-explorer .qw-images-view img'))"
                           ".some(i => i.naturalWidth > 0)", timeout=30_000)
    page.locator(".qw-explorer").screenshot(path=str(artifacts / "05_worst_images.png"))
    docs(artifacts / "05_worst_images.png", "gallery/worst_images.png")

    # item 2: a pick in the Image dropdown opens the image
    page.locator(".qw-explorer .qw-controls select").nth(2).select_option(label="horses")
    wait_status(page, "image horses.jpg")

    # item 10: no broken image in any tab
    for tab in ("Weights", "Quantization", "Layer"):
        page.locator(".qw-explorer .lm-TabBar-tab", has_text=tab).click()
        page.wait_for_timeout(300)
        assert page.evaluate(BROKEN_JS) == 0, tab
    assert page.get_by_text("Error displaying widget").count() == 0
    assert errors == [], errors
