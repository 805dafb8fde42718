"""A value typed into the weight editor's grid while an Apply is still running survives that Apply.

ipywidgets' IntText / FloatText view rewrites its text box from the model on *any* change of the cell's
model (`update()`), so text typed but not yet committed (no Tab / Enter / blur: nothing sent to the kernel)
is replaced by the model's value when a message for that cell arrives, even one that only changes its CSS
classes. The Apply used to mark the changed cells with a class on each cell model, sent after the status
line: typing the next value into the cell just applied, then Tab and Apply again, lost it and applied "no
value changed" (benchmarks/bench_browser.py hung on it in 2 of 3 runs). Here the next value is typed while
the first Apply runs (the kernel answers 0.1-1 s later), so its marks always arrive after the typing.
"""
from __future__ import annotations

import re

import pytest

from notebook_page import open_and_run, wait_for_graph_nodes
from test_explorer_round2_browser import STATUS, click_node

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

CELL = ".qw-explorer .qw-weight-editor .widget-gridbox input[type=number]"


def test_value_typed_during_an_apply_survives_it(chromium, page, lab, artifacts):
    open_and_run(page, lab, "explorer_round2.ipynb", 1600, 2000)
    wait_for_graph_nodes(page, 25, timeout=240_000)
    page.locator(".qw-explorer .lm-TabBar-tab", has_text="Weights").click()
    click_node(page, "0")
    page.wait_for_function("() => document.querySelector('.qw-explorer .qw-weight-editor')"
                           ".innerText.includes('layer 0 ')", timeout=60_000)
    page.wait_for_timeout(1500)            # the node click's focus (qwidgets._focus) has landed
    cell = page.locator(CELL).first
    apply = page.locator(".qw-explorer .qw-weight-editor button", has_text=re.compile(r"^\s*Apply\s*$")).first
    first = int(cell.input_value())
    a, b = (first + 7, first + 9) if first < 100 else (first - 7, first - 9)
    cell.fill(str(a))
    cell.press("Tab")                      # committed: the kernel has `a` before the click
    apply.click()
    cell.fill(str(b))                      # typed while the kernel applies `a`, not committed yet
    page.wait_for_function(f"() => {STATUS}.includes('-> {a}')", timeout=60_000)
    page.wait_for_timeout(1500)            # every message of that Apply has arrived
    page.screenshot(path=str(artifacts / "typed_during_apply.png"), full_page=True)
    assert cell.input_value() == str(b), "the Apply's messages replaced the text typed meanwhile"
    cell.press("Tab")
    apply.click()
    page.wait_for_function(f"() => {STATUS}.includes('-> {b}')", timeout=60_000)
    status = page.evaluate(f"() => {STATUS}")
    assert f"tap (0, 0) {a} -> {b}" in status, status
    # the edited tap is still marked after the second Apply
    assert page.evaluate(f"""() => {{ const c = document.querySelector({CELL!r});
        return getComputedStyle(c).fontWeight; }}""") in ("700", "bold")
