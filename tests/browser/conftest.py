"""Fixtures for the real-browser tests: a JupyterLab server and a Playwright chromium page.

- `lab`: JupyterLab on 127.0.0.1 (a port the server picks, random token, `--allow-root`, temporary workspaces,
  settings and runtime dirs) serving a temporary copy of `tests/browser/notebooks/` (autosave
  writes widget outputs back, so the originals are never served). Teardown: SIGTERM, wait,
  then SIGKILL the server's process group (the server and the kernels it started).
- `page`: Debian's chromium (`/usr/bin/chromium`, or `$QW_CHROMIUM`; checked by the `chromium`
  fixture before the server starts) driven by Playwright with the flags from docs/platform-notes;
  never `playwright install`. Console messages go to a log file. It closes before `lab` stops.
- `artifacts`: screenshots and logs in `$QW_ARTIFACTS` or `<repo>/artifacts/browser/` (gitignored),
  one sub-folder per test.
Missing chromium or playwright: a failure under CI (`CI=true`), a skip elsewhere.
"""
from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import require as ci_require

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NOTEBOOKS = HERE / "notebooks"
CHROMIUM = Path(os.environ.get("QW_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_TIMEOUT = 60.0
SERVER_STOP_TIMEOUT = 10.0

# the notebooks here are driven by the browser tests, not run by nbval
collect_ignore_glob = ["notebooks/*"]


require = functools.partial(ci_require, what="browser test")


@dataclass
class Lab:
    url: str            # http://127.0.0.1:PORT
    token: str
    root: Path          # the folder the server serves (copies of the notebooks)
    log: Path
    proc: subprocess.Popen

    def notebook_url(self, name: str) -> str:
        """URL that opens `name` alone (`?reset` drops tabs restored from an earlier workspace)."""
        return f"{self.url}/lab/tree/{name}?reset&token={self.token}"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"


def _server_port(proc: subprocess.Popen, runtime: Path, log: Path, timeout: float) -> int:
    """The port a server started with --port=0 bound, from the jpserver-<pid>.json it writes once listening.
    (A port found free here and passed to the server could be bound by any other process of the host, another
    user's JupyterLab included, before the server got to it.)"""
    info = runtime / f"jpserver-{proc.pid}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            return int(json.loads(info.read_text())["port"])
        except (OSError, ValueError, KeyError):     # not written yet, or half written
            time.sleep(0.2)
    raise RuntimeError(f"JupyterLab wrote no {info.name} after {timeout:.0f} s")


def _wait_ready(lab: Lab, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {lab.proc.returncode}:\n{lab.log_tail()}")
        try:
            with urllib.request.urlopen(f"{lab.url}/api/status?token={lab.token}", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"JupyterLab not ready after {timeout:.0f} s:\n{lab.log_tail()}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, wait, then SIGKILL it (the group is ours: start_new_session)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)     # kernels left behind by a server that did not stop them
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(timeout=SERVER_STOP_TIMEOUT)


@pytest.fixture(scope="session")
def artifacts_root() -> Path:
    root = Path(os.environ.get("QW_ARTIFACTS") or REPO / "artifacts" / "browser")
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def artifacts(artifacts_root, request) -> Path:
    d = artifacts_root / request.node.name
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def lab(tmp_path, artifacts):
    """A JupyterLab server on a temporary copy of tests/browser/notebooks/."""
    require(shutil.which("jupyter-lab", path=str(Path(sys.executable).parent)) is not None
            or _has_module("jupyterlab"), "jupyterlab is not installed in this Python")
    root = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, root)
    for sub in ("workspaces", "settings", "runtime"):
        (tmp_path / sub).mkdir()
    # no "Would you like to get notified about official Jupyter news?" toast over the screenshots
    notes = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notes.parent.mkdir(parents=True)
    notes.write_text('{"fetchNews": "false", "checkForUpdates": false}\n')
    token = secrets.token_hex(16)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"   # the kernel: this venv
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
    # the kernel imports this checkout's engine and qwidgets, not what the venv's editable install points
    # at (a venv copied from another clone runs that clone's code in the browser and this one's in pytest)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if not env.get("QW_MODEL_DIR"):
        shared = Path(os.environ.get("QW_SHARED", REPO.parent / "shared"))
        env["QW_MODEL_DIR"] = str(shared / "models")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", "--port=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
           f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
           "--ServerApp.port_retries=0"]
    log = artifacts / "jupyterlab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        t0 = time.monotonic()
        port = _server_port(proc, tmp_path / "runtime", log, SERVER_START_TIMEOUT)
        server = Lab(url=f"http://127.0.0.1:{port}", token=token, root=root, log=log, proc=proc)
        _wait_ready(server, max(1.0, SERVER_START_TIMEOUT - (time.monotonic() - t0)))
        yield server
    finally:
        _stop(proc)


def _has_module(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium and the playwright package, checked before any server starts."""
    require(CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK),
            f"{CHROMIUM} not found: apt-get install chromium (never `playwright install`)")
    require(_has_module("playwright"), "the playwright Python package is not installed")
    return CHROMIUM


@pytest.fixture
def page(chromium, lab, artifacts):
    """A chromium page (1400x1200) for `lab`; console messages go to artifacts/console.log.

    Depends on `lab` so that the browser closes before the server stops (no websocket errors
    from the teardown in the console log).
    """
    from playwright.sync_api import sync_playwright
    console = open(artifacts / "console.log", "w", encoding="utf-8")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1200})
            pg = context.new_page()
            pg.on("console", lambda m: console.write(f"[{m.type}] {m.text}\n"))
            pg.on("pageerror", lambda e: console.write(f"[pageerror] {e}\n"))
            yield pg
        finally:
            browser.close()
            console.close()
