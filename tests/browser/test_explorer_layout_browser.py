"""The Explorer as a newcomer first sees it: JupyterLab at 1280 px with its file browser open.

Defects seen only in a browser (qa4):
- the graph's last row (yolov3-tiny's layer 23, a head) lay below the canvas until Fit: ipycytoscape laid the
  grid out for its stylesheet's 400 px before the 332 px Layout height reached the page;
- a 4 px horizontal scroll bar under the graph (the hover line was 100% wide plus its margins);
- the tabs' right half was cut off (graph 510 px + tabs at least 480 px in an 833 px output area) and the
  titles shrank to "Detecti", "Quantizati", "De"; at 1600 px the tabs stay beside the graph;
- the weight editor's heat map sat small in the middle of a stretched 600 x 600 px blank box.
"""
from __future__ import annotations

import re

import pytest

from notebook_page import open_and_run, wait_for_graph_nodes
from test_explorer_round2_browser import CY, STATUS, click_node

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

NODES_OUTSIDE = f"""() => {{ const cy = {CY}; const w = cy.width(), h = cy.height();
    return cy.nodes().filter(n => {{ const b = n.renderedBoundingBox();
        return b.x1 < 0 || b.y1 < 0 || b.x2 > w || b.y2 > h; }}).map(n => n.id()); }}"""
LAYOUT = """() => { const ex = document.querySelector('.qw-explorer');
    const out = ex.closest('.jp-OutputArea-output').getBoundingClientRect();
    const tabs = ex.querySelector('.widget-tab').getBoundingClientRect();
    const g = ex.querySelector('.qw-graph-view');
    return {out_right: out.right, tabs_left: tabs.left, tabs_right: tabs.right,
            graph_right: ex.querySelector('.qw-graph-view').getBoundingClientRect().right,
            graph_overflow: g.scrollWidth - g.clientWidth,
            cut: [...ex.querySelectorAll('.widget-tab .lm-TabBar-tabLabel')]
                 .filter(l => l.scrollWidth > l.clientWidth).map(l => l.innerText)}; }"""
HEATMAP = """() => { const i = document.querySelector('.qw-explorer .qw-weight-editor img');
    const r = i.getBoundingClientRect();
    return [i.naturalWidth, i.naturalHeight, Math.round(r.width), Math.round(r.height)]; }"""


def test_the_explorer_fits_a_1280_px_jupyterlab(chromium, page, lab, artifacts):
    open_and_run(page, lab, "explorer.ipynb", 1280, 900)
    wait_for_graph_nodes(page, 25, timeout=240_000)
    page.wait_for_timeout(1500)
    page.locator(".qw-explorer").first.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "01_opened.png"))
    assert page.evaluate(NODES_OUTSIDE) == []              # no Fit clicked: the first layout shows every layer
    lay = page.evaluate(LAYOUT)
    assert lay["graph_overflow"] <= 0, lay
    assert lay["cut"] == [] and lay["tabs_right"] <= lay["out_right"] + 1, lay
    # at 1600 px the tabs (480 px at least) fit beside the 510 px graph and stay there, whatever their content
    # (the Device tab's one-line description is wider than the 640 px left: its width must not decide)
    page.locator(".qw-explorer .lm-TabBar-tab", has_text="Device").click()
    page.set_viewport_size({"width": 1600, "height": 900})
    page.wait_for_timeout(1000)
    wide = page.evaluate(LAYOUT)
    assert wide["tabs_left"] >= lay["graph_right"] and wide["cut"] == [], wide
    page.set_viewport_size({"width": 1280, "height": 900})
    page.wait_for_timeout(1000)

    page.locator(".qw-explorer .lm-TabBar-tab", has_text="Weights").click()
    click_node(page, "4")
    page.wait_for_function("() => document.querySelector('.qw-explorer .qw-weight-editor')"
                           ".innerText.includes('layer 4 ')", timeout=60_000)
    page.wait_for_timeout(1000)
    cell = page.locator(".qw-explorer .qw-weight-editor .widget-gridbox input[type=number]").nth(4)
    cell.fill("100")
    cell.press("Tab")
    page.locator(".qw-explorer .qw-weight-editor button", has_text=re.compile(r"^\s*Apply\s*$")).first.click()
    page.wait_for_function(f"() => {STATUS}.includes('-> 100')", timeout=60_000)
    page.wait_for_timeout(1000)
    page.locator(".qw-explorer .qw-weight-editor img").first.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "02_heatmap.png"))
    nw, nh, w, h = page.evaluate(HEATMAP)
    assert nw > 300 and (w, h) == (nw, nh), (nw, nh, w, h)   # its own size, title included, no blank box
