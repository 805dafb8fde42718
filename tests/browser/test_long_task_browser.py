"""The Mixed precision and Device tabs' per-step progress and Cancel in JupyterLab + chromium.

In a real JupyterLab the clicks reach the kernel as comm messages (ipykernel 7 may handle them on a
subshell thread) and the work runs on a LongTask's background thread, which sends every progress change
as a widget message: the headless widget tests (tests/qwidgets/test_mixed_view.py, test_device_view.py)
see none of that. On yolov3-tiny, kl per tensor, one image (notebooks/long_tasks.ipynb):

- Mixed precision: a first Search runs to the end (the curve table, the chart, Keep enabled); a second
  Search names its steps in the progress text ("sensitivity, layer k of 13: conv i"), Cancel is clicked
  on one, and within seconds the text and the status line say cancelled, the bar stops short of the end
  and stays put, Search is enabled again, Cancel disabled, the first result (table, chart, Keep) intact;
- Device: Compare with device names its steps ("layer k of 24: conv i"; all of them arrive in the browser,
  recorded by a MutationObserver: ~0.3 s in all on a quiet host), finishes with a full bar and the per-layer
  table (24 rows);
- no traceback, stderr output or "Error displaying widget" in the notebook, no traceback in the server's
  log (the kernel's own stderr), no page error.
Screenshots in the artifacts folder (see conftest), with timing.txt.
"""
from __future__ import annotations

import re
import time

import pytest

from notebook_page import open_and_run, wait_for_graph_nodes
from test_explorer_round2_browser import STATUS

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

# every text the LongTask's label and every width its bar showed, recorded in the page from the moment
# `watch` is called (a run's steps can come faster than playwright polls: Device takes ~0.3 s in all)
WATCH_JS = """(sel) => {
    const task = document.querySelector(sel + ' .qw-long-task');
    const label = task.querySelector(':scope > .widget-label'), bar = task.querySelector('.progress-bar');
    const rec = {texts: [label.textContent], widths: [bar.style.width]};
    new MutationObserver(records => { for (const r of records) for (const n of r.addedNodes)
        rec.texts.push(n.textContent); if (label.textContent !== rec.texts[rec.texts.length - 1])
        rec.texts.push(label.textContent); }).observe(label, {childList: true, characterData: true, subtree: true});
    new MutationObserver(() => rec.widths.push(bar.style.width))
        .observe(bar, {attributes: true, attributeFilter: ['style']});
    window.__qwTask = window.__qwTask || {};
    window.__qwTask[sel] = rec;
}"""
# a named step: "<what>: sensitivity, layer 3 of 13: conv 4 (4 / 17 done, ...)", "...: layer 7 of 24: conv 6 (...)"
STEP = re.compile(r": (sensitivity, layer|keeping FLOAT|layer) \d+ of (at most )?\d+: "
                  r"(conv|maxpool|yolo|route|upsample) \d+ \(\d+ / \d+ done")


def watch(page, sel: str) -> None:
    page.evaluate(WATCH_JS, sel)


def seen(page, sel: str) -> dict:
    return page.evaluate("(sel) => window.__qwTask[sel]", sel)


def task_text(page, sel: str) -> str:
    return page.evaluate("(sel) => document.querySelector(sel + ' .qw-long-task > .widget-label').textContent", sel)


def bar_width(page, sel: str) -> str:
    return page.evaluate("(sel) => document.querySelector(sel + ' .qw-long-task .progress-bar').style.width", sel)


def button(page, sel: str, text: str):
    return page.locator(f"{sel} button", has_text=re.compile(rf"^\s*{re.escape(text)}\s*$")).first


def open_tab(page, name: str) -> None:
    page.locator(".qw-explorer .lm-TabBar-tab", has_text=re.compile(rf"^\s*{re.escape(name)}\s*$")).click()


# the LongTask's bar, text and Cancel button as the user sees them: not squeezed to nothing, inside the
# task's box and the tab (the task is a scroll container: what overflows it is clipped), not covered
VISIBLE_JS = """(sel) => {
    const view = document.querySelector(sel).getBoundingClientRect();
    const task = document.querySelector(sel + ' .qw-long-task'), box = task.getBoundingClientRect();
    const parts = {bar: task.querySelector(':scope > .widget-hprogress'),
                   text: task.querySelector(':scope > .widget-label'), cancel: task.querySelector('button')};
    const out = {};
    for (const [name, el] of Object.entries(parts)) {
        const b = el.getBoundingClientRect();
        const hit = document.elementFromPoint(b.left + b.width / 2, b.top + b.height / 2);
        out[name] = {left: Math.round(b.left), width: Math.round(b.width),
                     shown: b.width >= 60 && b.left >= Math.max(box.left, view.left) - 1
                            && b.right <= Math.min(box.right, view.right) + 1 && !!hit && el.contains(hit)};
    }
    return out;
}"""


def visible_task(page, sel: str) -> None:
    parts = page.evaluate(VISIBLE_JS, sel)
    assert all(p["shown"] for p in parts.values()), parts


def no_traceback(page) -> None:
    notebook = page.locator(".jp-Notebook").inner_text()
    assert "Traceback" not in notebook and "Error" not in page.evaluate(f"() => {STATUS}"), notebook[-2000:]
    assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
    assert page.get_by_text("Error displaying widget").count() == 0


def test_mixed_and_device_progress_and_cancel(chromium, page, lab, artifacts):
    t0 = time.perf_counter()
    times: list[str] = []
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    open_and_run(page, lab, "long_tasks.ipynb", 1600, 1600)
    wait_for_graph_nodes(page, 25, timeout=240_000)
    times.append(f"explorer shown: {time.perf_counter() - t0:.1f} s")

    # --- Mixed precision: a first search to the end, the result the cancelled one must leave alone
    mixed = ".qw-explorer .qw-mixed-view"
    open_tab(page, "Mixed precision")
    page.locator(mixed).wait_for(timeout=30_000)
    assert button(page, mixed, "Cancel").is_disabled() and button(page, mixed, "Keep these FLOAT").is_disabled()
    t = time.perf_counter()
    # at most 2 layers kept FLOAT: 17 runs of the search instead of 28 (the test's time)
    max_float = page.locator(f"{mixed} .widget-inline-hbox", has_text="max FLOAT").locator("input")
    max_float.fill("2")
    max_float.press("Tab")
    visible_task(page, mixed)
    button(page, mixed, "Search").click()
    page.wait_for_function(f"() => document.querySelector({mixed!r} + ' .qw-long-task > .widget-label')"
                           ".textContent.includes('mixed-precision search: done in')", timeout=120_000)
    page.wait_for_function(f"() => {STATUS}.startsWith('mixed precision: ')", timeout=30_000)
    page.wait_for_function(f"() => Array.from(document.querySelectorAll({mixed!r} + ' img'))"
                           ".some(i => i.naturalWidth > 0)", timeout=30_000)
    times.append(f"first search to the end: {time.perf_counter() - t:.1f} s")
    first_table = page.locator(f"{mixed} .qw-mixed").inner_text()
    assert "layers kept FLOAT" in first_table and "FLOAT layers [" in page.locator(mixed).inner_text()
    assert button(page, mixed, "Keep these FLOAT").is_enabled() and button(page, mixed, "Cancel").is_disabled()
    chart = page.evaluate(f"() => document.querySelector({mixed!r} + ' img').src")
    page.locator(".qw-explorer").screenshot(path=str(artifacts / "01_mixed_first_result.png"))

    # --- a second search: a named step, then Cancel
    watch(page, mixed)
    t = time.perf_counter()
    button(page, mixed, "Search").click()
    page.wait_for_function(f"() => /sensitivity, layer \\d+ of 13: conv \\d+/.test(document.querySelector({mixed!r}"
                           " + ' .qw-long-task > .widget-label').textContent)", timeout=60_000)
    assert STEP.search(task_text(page, mixed)), task_text(page, mixed)
    assert button(page, mixed, "Cancel").is_enabled() and button(page, mixed, "Search").is_disabled()
    assert button(page, mixed, "Keep these FLOAT").is_disabled()       # while it runs
    visible_task(page, mixed)
    page.locator(".qw-explorer").screenshot(path=str(artifacts / "02_mixed_running.png"))
    t_cancel = time.perf_counter()
    button(page, mixed, "Cancel").click()
    page.wait_for_function(f"() => document.querySelector({mixed!r} + ' .qw-long-task > .widget-label')"
                           ".textContent.includes('mixed-precision search: cancelled after')", timeout=30_000)
    page.wait_for_function(f"() => {STATUS}.startsWith('mixed-precision search cancelled')", timeout=10_000)
    times.append(f"second search: step seen after {t_cancel - t:.1f} s, cancelled "
                 f"{time.perf_counter() - t_cancel:.2f} s after the click")
    rec = seen(page, mixed)
    assert any(STEP.search(x) for x in rec["texts"]), rec["texts"]
    width = bar_width(page, mixed)
    page.wait_for_timeout(1500)                     # the bar and the text stay where Cancel left them
    assert bar_width(page, mixed) == width and width not in ("100%", ""), (width, rec["widths"][-5:])
    rec = seen(page, mixed)
    assert "cancelled after" in rec["texts"][-1] and not any("done in" in x for x in rec["texts"][1:]), rec["texts"]
    assert button(page, mixed, "Search").is_enabled() and button(page, mixed, "Cancel").is_disabled()
    assert button(page, mixed, "Keep these FLOAT").is_enabled()          # the first result is still there
    assert page.locator(f"{mixed} .qw-mixed").inner_text() == first_table
    assert page.evaluate(f"() => document.querySelector({mixed!r} + ' img').src") == chart
    page.locator(".qw-explorer").screenshot(path=str(artifacts / "03_mixed_cancelled.png"))
    no_traceback(page)

    # --- Device: every step named, then the per-layer table
    device = ".qw-explorer .qw-device-view"
    open_tab(page, "Device")
    page.locator(device).wait_for(timeout=30_000)
    watch(page, device)
    visible_task(page, device)
    t = time.perf_counter()
    button(page, device, "Compare with device").click()
    page.wait_for_function(f"() => document.querySelector({device!r} + ' .qw-long-task > .widget-label')"
                           ".textContent.includes('simulation vs device: done in')", timeout=60_000)
    page.wait_for_function(f"() => document.querySelectorAll({device!r} + ' table.qw-device tr').length === 25",
                           timeout=30_000)
    times.append(f"device comparison: {time.perf_counter() - t:.1f} s")
    rec = seen(page, device)
    steps = [x for x in rec["texts"] if STEP.search(x)]
    assert any(re.search(r"layer \d+ of 24: conv \d+", x) for x in steps), rec["texts"]
    assert bar_width(page, device) == "100%", rec["widths"]
    assert button(page, device, "Cancel").is_disabled() and button(page, device, "Compare with device").is_enabled()
    text = page.locator(device).inner_text()
    assert "profile qwidgets" in text, text
    page.wait_for_function(f"() => {STATUS}.startsWith('profile qwidgets')", timeout=30_000)
    page.locator(".qw-explorer").screenshot(path=str(artifacts / "04_device_table.png"))
    no_traceback(page)
    assert errors == [], errors
    assert "Traceback" not in lab.log.read_text(errors="replace"), lab.log_tail()    # the kernel's own stderr
    times.append(f"test body: {time.perf_counter() - t0:.1f} s")
    (artifacts / "timing.txt").write_text("\n".join(times) + "\n")
