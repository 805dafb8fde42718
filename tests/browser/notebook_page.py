"""Driving a notebook in JupyterLab from playwright: run cells, read the kernel's printed lines, and
tell a drawn canvas from an empty one (shared by the browser tests)."""
from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

KERNEL_IDLE = re.compile(r"ipykernel\) \| Idle")


def run_all(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def open_and_run(page, lab, notebook: str, width: int, height: int) -> None:
    """Size the page, open `notebook` in the test's JupyterLab, wait for the kernel and run every cell."""
    page.set_viewport_size({"width": width, "height": height})
    page.goto(lab.notebook_url(notebook))
    page.get_by_text(KERNEL_IDLE).first.wait_for(timeout=60_000)
    run_all(page)


def wait_for_graph_nodes(page, count: int, timeout: float) -> None:
    """Until the Explorer's cytoscape graph holds `count` nodes (input + layers)."""
    page.wait_for_function("() => { const el = document.querySelector('.qw-explorer .qw-graph-canvas');"
                           f" return el && el._cyreg && el._cyreg.cy.nodes().length === {count}; }}", timeout=timeout)


def rerun_cell(page, index: int) -> None:
    """Select code cell `index` (0-based among all cells) and run it with Shift+Enter."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")


def kernel_line(page, pattern: str, timeout: float = 30_000) -> str:
    """The printed 'QW ...' line once it matches `pattern` (regex)."""
    loc = page.locator(".jp-OutputArea-output", has_text=re.compile(pattern))
    loc.first.wait_for(timeout=timeout)
    # text_content, not inner_text: JupyterLab may leave an off-screen cell's output unrendered (CI saw '')
    return loc.first.text_content() or ""


def drawn_fraction(png: bytes) -> float:
    """Share of pixels that are not (near) white: the graph was really drawn on the canvas."""
    a = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    return float((a < 235).mean())
