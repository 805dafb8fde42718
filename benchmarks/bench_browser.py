"""Click -> pixels in a real browser: the Explorer in JupyterLab, driven by Playwright + chromium.

For yolov3-tiny (kl per tensor, INT) and random-weight yolov3 (416, INT), times from the input event to
the animation frame where its result is drawn, both stamped in the page (performance.now(), the check
runs on every requestAnimationFrame), so Playwright's own round trips are not counted:
- Step (a real click on the button): to the status line, and to the layer panel of the new layer with
  every visible picture decoded;
- node click (a real mouse click on the node; off-screen nodes are centred first, untimed): to the
  panel of that layer with its pictures decoded; layers visited before and never visited are reported
  apart (the first visit computes, a revisit reuses the remembered results);
- Apply of a weight edit (typed first, untimed) in the last convolution the Steps ran: to the status line
  naming the change and the decoded after-vs-before map;
- tab switch (a real click on the tab): to the tab shown with its pictures decoded;
- colour switch (the Colour dropdown): to the node labels with the metric;
- `Explorer(s) shown`: from the start of the cell that builds the Explorer (the kernel's clock) to the
  first frame with the graph drawn (the page's clock; one machine, one wall clock).
Prints medians (goal: <= 150 ms on yolov3-tiny, <= 300 ms on yolov3; Explorer(s) <= 3 s on yolov3) and
the load average. The first click that needs the session's FLOAT reference pays its forward (seconds on
yolov3): it shows in the max. Not a test: figures, no assertions. A result that never shows (30 s on
yolov3-tiny, 120 s on yolov3) is printed as FAILED with what the page shows (status lines, focus, the
element under the click, undecoded pictures; a screenshot and the console log in artifacts/bench_browser/)
and the bench goes on.

    python benchmarks/bench_browser.py [--repeat 5] [--models tiny,yolov3]
"""
from __future__ import annotations

import argparse
import json
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
PANEL_TITLE = "document.querySelector('.qw-explorer .qw-layer-panel .qw-panel-title').innerText"
# every <img> shown under `root` is decoded
IMAGES_DONE = ("(root => Array.from(root.querySelectorAll('img')).filter(i => i.offsetParent !== null)"
               ".every(i => i.complete && i.naturalWidth > 0))")
CURRENT_TAB = "document.querySelector('.qw-explorer')"        # hidden tabs' pictures have no offsetParent
LOG = None           # --log FILE: one JSON line per timed interaction
GRAPH_DRAWN = ("(() => { const el = document.querySelector('.qw-explorer .qw-graph-canvas');"
               " return !!(el && el._cyreg && el._cyreg.cy.nodes().length > 1 && el.querySelector('canvas')); })()")


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


def stamp(page) -> None:
    page.evaluate("() => { window.__qwT0 = performance.now(); window.__qwWall0 = Date.now(); window.__qwT = {}; }")


class WaitFailed(Exception):
    """A timed interaction whose result never showed: the message is a diagnostic of the page."""


# what the page shows, for a wait that failed: the status lines, the panel title, the keyboard focus, the
# element under the last click, the visible pictures that are not decoded
DESCRIBE = ("(el => el ? el.tagName.toLowerCase() + (typeof el.className === 'string' && el.className.trim() ? "
            "'.' + el.className.trim().split(/\\s+/).slice(0, 3).join('.') : '') + (el.innerText ? ' ' + "
            "JSON.stringify(el.innerText.slice(0, 30)) : '') : null)")
DIAGNOSE = f"""() => {{
    const q = s => document.querySelector(s), text = s => (q(s) ? q(s).innerText : null);
    const describe = {DESCRIBE};
    const imgs = Array.from(q('.qw-explorer').querySelectorAll('img')).filter(i => i.offsetParent !== null);
    return {{status: text('.qw-explorer .qw-controls .qw-status'),
             editor_status: text('.qw-explorer .qw-weight-editor .qw-status'),
             panel_title: text('.qw-explorer .qw-layer-panel .qw-panel-title'),
             focus: describe(document.activeElement), clicked: window.__qwHit || null,
             pictures: imgs.length,
             not_decoded: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).slice(0, 5).map(i =>
                 ({{src: (i.src || '').slice(0, 40), complete: i.complete, width: i.naturalWidth,
                    box: [i.width, i.height]}}))}};
}}"""
ARTIFACTS = ROOT / "artifacts" / "bench_browser"


def diagnose(page, name: str) -> str:
    """One line on what the page shows now (DIAGNOSE), and a screenshot under ARTIFACTS."""
    try:
        state = page.evaluate(DIAGNOSE)
    except Exception as e:                  # noqa: BLE001 (a diagnostic must not raise)
        state = {"evaluate": repr(e)[:200]}
    shot = ARTIFACTS / (re.sub(r"[^\w.-]+", "_", name) + ".png")
    try:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        state["screenshot"] = str(shot)
    except Exception as e:                  # noqa: BLE001
        state["screenshot"] = repr(e)[:200]
    return json.dumps(state)


def aim(page, xy: tuple[float, float]) -> tuple[float, float]:
    """`xy`, after noting the element under it in window.__qwHit (for `diagnose`; untimed, before `timed`)."""
    page.evaluate(f"([x, y]) => {{ window.__qwHit = {DESCRIBE}(document.elementFromPoint(x, y)); }}", list(xy))
    return xy


def timed(page, action, done: str, marks: dict[str, str] | None = None, timeout: float = 60_000,
          name: str = "") -> dict[str, float]:
    """Seconds from just before `action()` to the first animation frame where the JS expression `done` is
    true; `marks`: name -> expression, each stamped at the first frame it holds (before `done`).
    Raises: WaitFailed with a diagnostic of the page when `done` did not hold within `timeout` ms."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    marks = marks or {}
    checks = "".join(f"if (!T[{k!r}] && ({v})) T[{k!r}] = now; " for k, v in marks.items())
    stamp(page)
    action()
    try:
        page.wait_for_function(f"() => {{ const T = window.__qwT, now = performance.now(); {checks}"
                               f"if (!T.done && ({done})) T.done = now; return !!T.done; }}",
                               timeout=timeout, polling="raf")
    except PlaywrightTimeout:
        raise WaitFailed(f"{name}: not shown after {timeout / 1000:.0f} s; {diagnose(page, name)}") from None
    t = page.evaluate("() => Object.fromEntries(Object.entries(window.__qwT).map(([k, v]) => "
                      "[k, (v - window.__qwT0) / 1000]))")
    if LOG is not None:           # --log: input time on the wall clock, to line up with a kernel-side log
        LOG.write(json.dumps({"name": name, "wall0": page.evaluate("() => window.__qwWall0") / 1000, **t}) + "\n")
    return t


def centre_of(page, locator) -> tuple[float, float]:
    box = locator.bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def node_xy(page, node_id: str) -> tuple[float, float]:
    """The node's position on screen, panned first to the middle of the part of the canvas that is inside
    the window when it is not fully there (a tall yolov3 canvas runs below the window)."""
    return tuple(page.evaluate(f"""() => {{
        const cy = {CY}; const n = cy.getElementById({node_id!r});
        // cytoscape maps clicks with the canvas position it measured before (re-measured on resize and
        // scroll only); the Explorer keeps everything above the canvas at one height (GraphView). Counted
        // when that cached position is off all the same (a user's click would select another node), then
        // re-measured so the timing is of a click on this node
        const r = cy.renderer(), cached = r.containerBB;
        r.invalidateContainerClientCoordsCache();
        const fresh = r.findContainerClientCoords();
        window.__qwStale = (window.__qwStale || 0) + (cached && (Math.abs(cached[0] - fresh[0]) > 0.5
                                                                 || Math.abs(cached[1] - fresh[1]) > 0.5) ? 1 : 0);
        const box = cy.container().getBoundingClientRect();
        const top = Math.max(box.top, 0), bottom = Math.min(box.bottom, window.innerHeight);
        const left = Math.max(box.left, 0), right = Math.min(box.right, window.innerWidth);
        let p = n.renderedPosition(); const w = n.renderedWidth(), h = n.renderedHeight();
        const x = box.left + p.x, y = box.top + p.y;
        if (x - w / 2 < left || x + w / 2 > right || y - h / 2 < top || y + h / 2 > bottom) {{
            cy.panBy({{x: (left + right) / 2 - x, y: (top + bottom) / 2 - y}}); p = n.renderedPosition(); }}
        return [box.left + p.x, box.top + p.y]; }}"""))


def panel_of(node: str) -> str:
    return f"({PANEL_TITLE}.trim().startsWith('layer {node} ') && {IMAGES_DONE}({CURRENT_TAB}))"


def bench_model(pw, model: str, repeat: int) -> dict[str, list[float]]:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from notebook_page import KERNEL_IDLE, kernel_line, rerun_cell, run_all
    out: dict[str, list[float]] = {k: [] for k in (
        "Explorer(s) shown", "Step -> status", "Step -> panel", "node click (new)", "node click (visited)",
        "Apply edit", "tab switch", "colour switch", "stale canvas position", "failed waits")}
    # a click's result is on screen in well under a second (a first FLOAT forward on yolov3: seconds); a
    # wait that runs out is a finding: its diagnostic is printed and the bench goes on with the next click
    wait = 30_000 if model == "tiny" else 120_000

    def failed(e: WaitFailed, extra: str = "") -> None:
        out["failed waits"].append(1)
        print(f"  FAILED {e}" + (f"; {extra}" if extra else ""), flush=True)
    with tempfile.TemporaryDirectory() as d:
        lab = start_lab(Path(d), model)
        console = None
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1600, "height": 2000}).new_page()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            console = open(ARTIFACTS / f"console-{model}.log", "w", encoding="utf-8")
            page.on("console", lambda m: console.write(f"{time.time():.3f} [{m.type}] {m.text}\n"))
            page.on("pageerror", lambda e: console.write(f"{time.time():.3f} [pageerror] {e}\n"))
            page.goto(lab.notebook_url("explorer_round2.ipynb"))
            page.get_by_text(KERNEL_IDLE).first.wait_for(timeout=60_000)
            # Explorer(s): the kernel stamps the cell's start (QW_T0), the page the first frame with the graph
            run_all(page)
            page.wait_for_function(f"() => {{ if ({GRAPH_DRAWN}) {{ window.__qwShown = Date.now(); return true; }}"
                                   " return false; }", timeout=900_000, polling="raf")
            rerun_cell(page, 3)
            t0 = float(re.search(r"t0=([\d.]+)", kernel_line(page, r"QW position=.*t0=", 120_000)).group(1))
            out["Explorer(s) shown"].append(page.evaluate("() => window.__qwShown") / 1000 - t0)
            # a user looks at the graph first: meanwhile the kernel computes every method's threshold per
            # tensor, one per event-loop turn (about 1 s on yolov3-tiny, 5-10 s on yolov3 at this load)
            page.wait_for_timeout(3000 if model == "tiny" else 10_000)
            n = page.evaluate(f"() => {CY}.nodes().length") - 1
            step = page.locator(".qw-explorer button", has_text=re.compile(r"^\s*Step\s*$")).first
            step.scroll_into_view_if_needed()
            for k in range(repeat):
                xy = aim(page, centre_of(page, step))
                try:
                    t = timed(page, lambda: page.mouse.click(*xy), panel_of(str(k)),
                              {"status": f"{STATUS}.startsWith('layer {k} ')"}, timeout=wait, name=f"step {k}")
                except WaitFailed as e:
                    failed(e)
                    continue
                out["Step -> status"].append(t["status"])
                out["Step -> panel"].append(t["done"])
            page.locator(".qw-explorer .qw-graph-canvas").scroll_into_view_if_needed()
            fresh = [str(i) for i in range(n - 1, repeat, -max(1, (n - repeat) // (repeat + 1)))][:repeat]
            for node in fresh + [str(k) for k in range(repeat)]:
                xy = aim(page, node_xy(page, node))
                try:
                    t = timed(page, lambda: page.mouse.click(*xy), panel_of(node), timeout=wait,
                              name=f"node {node} {'new' if node in fresh else 'visited'}")
                except WaitFailed as e:
                    failed(e)
                    continue
                out["node click (new)" if node in fresh else "node click (visited)"].append(t["done"])
            out["stale canvas position"].append(page.evaluate("() => window.__qwStale || 0"))
            # the edit goes to the last convolution the session has run (as after Step, Step, edit): Apply
            # re-executes it and the kept outputs after it
            conv = str(page.evaluate(f"() => Math.max(...{CY}.nodes().filter(n => n.data('kind') === "
                                     f"'convolutional' && +n.id() <= {repeat - 1}).map(n => +n.id()))"))
            page.locator(".qw-explorer .lm-TabBar-tab", has_text="Weights").click()
            xy = node_xy(page, conv)
            page.mouse.click(*xy)
            page.wait_for_function("() => document.querySelector('.qw-explorer .qw-weight-editor')"
                                   f".innerText.includes('layer {conv} ')", timeout=60_000)
            # the editor may show that layer already: let the click's focus land before typing (a kernel that
            # handles a click within 0.5 s moves the keyboard focus to the graph's focus keeper)
            try:
                page.wait_for_function("() => !!document.activeElement && "
                                       "document.activeElement.classList.contains('qw-focus-keeper')", timeout=2000)
            except PlaywrightTimeout:
                pass                                # a late click moves no focus
            apply = page.locator(".qw-explorer .qw-weight-editor button", has_text="Apply").first
            print(f"  ({model}: Steps, node clicks done; Apply in layer {conv})", flush=True)
            for k in range(repeat):
                # a cell of the kernel grid (filled when the tab is shown; before that the first number
                # input of the editor is its "factor" field, and Apply then changed nothing: a timeout)
                cell = page.locator(".qw-explorer .qw-weight-editor .widget-gridbox input[type=number]").first
                # a value the tap does not hold yet (typing the current one changes nothing: no '-> v')
                v = 10 + k if cell.input_value().strip() != str(10 + k) else 50 + k
                cell.fill(str(v))
                cell.press("Tab")                   # the typed value reaches the kernel before the click
                xy = aim(page, centre_of(page, apply))
                try:
                    t = timed(page, lambda: page.mouse.click(*xy),
                              f"{STATUS}.includes('-> {v}') && {IMAGES_DONE}({CURRENT_TAB})", timeout=wait,
                              name=f"apply {v}")
                except WaitFailed as e:
                    failed(e, f"typed {v}, the cell shows {cell.input_value()!r}")
                    continue
                out["Apply edit"].append(t["done"])
            print(f"  ({model}: Apply done)", flush=True)
            tabs = ["Layer", "Detections", "Weights", "Quantization"] * repeat
            for k in range(repeat):
                tab = tabs[k]
                xy = aim(page, centre_of(page, page.locator(".qw-explorer .lm-TabBar-tab", has_text=tab).first))
                try:
                    t = timed(page, lambda: page.mouse.click(*xy),
                              "Array.from(document.querySelectorAll('.qw-explorer .lm-TabBar-tab.lm-mod-current'))"
                              f".some(t => t.innerText.trim() === {tab!r}) && {IMAGES_DONE}({CURRENT_TAB})",
                              timeout=wait, name=f"tab {tab}")
                except WaitFailed as e:
                    failed(e)
                    continue
                out["tab switch"].append(t["done"])
            for k in range(repeat):
                colour = ["sqnr", "type"][k % 2]
                cond = (f"{CY}.getElementById('0').data('label').endsWith(' dB')" if colour == "sqnr"
                        else f"!{CY}.getElementById('0').data('label').includes('dB')")
                try:
                    t = timed(page, lambda: page.evaluate(
                        "c => { const s = document.querySelector('.qw-explorer .qw-graph-view select'); s.value = c;"
                        " s.dispatchEvent(new Event('change', {bubbles: true})); }", colour), cond, timeout=wait,
                        name=f"colour {colour}")
                except WaitFailed as e:
                    failed(e)
                    continue
                out["colour switch"].append(t["done"])
        finally:
            browser.close()
            if console is not None:
                console.close()
            _stop(lab.proc)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--models", default="tiny,yolov3")
    ap.add_argument("--log", help="write one JSON line per timed interaction (name, wall-clock input time, "
                    "seconds to each mark) to this file")
    args = ap.parse_args()
    global LOG
    LOG = open(args.log, "a") if args.log else None
    from playwright.sync_api import sync_playwright
    goal = {"tiny": 0.150, "yolov3": 0.300}
    with sync_playwright() as pw:
        for model in args.models.split(","):
            load = os.getloadavg()[0]
            res = bench_model(pw, model, args.repeat)
            print(f"\n{model} (median of {args.repeat}; goal {1000 * goal.get(model, 0.15):.0f} ms per click; "
                  f"load average {load:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)", flush=True)
            stale = res.pop("stale canvas position")
            fails = len(res.pop("failed waits"))
            print(f"  waits that ran out ({'30' if model == 'tiny' else '120'} s each, diagnostics above): {fails}")
            print(f"  cytoscape's cached canvas position was off before {sum(stale)} of "
                  f"{len(res['node click (new)']) + len(res['node click (visited)'])} node clicks (re-measured first)")
            for name, ts in res.items():
                if ts:
                    med = statistics.median(ts)
                    unit = f"{med:.2f} s" if med >= 1 else f"{1000 * med:.0f} ms"
                    spread = f"min {1000 * min(ts):.0f} ms, max {1000 * max(ts):.0f} ms" if len(ts) > 1 else ""
                    print(f"  {name:18s} {unit:>9s}  {spread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
