"""Fixtures for the JupyterHub tests: throwaway unix users and a real hub on 127.0.0.1.

Needs root and what `.ci/setup-hub.sh` installs (locations from env, defaults in brackets):
QW_HUB_PREFIX [/opt/qw-hub], QW_HUB_VENV [$QW_HUB_PREFIX/venv],
QW_HUB_PROXY [$QW_HUB_PREFIX/node_modules/.bin/configurable-http-proxy].
Not root: skip. Root with something missing: fail under CI (CI=true), skip elsewhere.
Teardown (also after a failure): stop the servers through the API, SIGTERM then SIGKILL the hub's
process group and every process it started (by pid), then `userdel -r` the users.
"""
from __future__ import annotations

import functools
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import require as ci_require

REPO = Path(__file__).resolve().parents[2]
DEPLOY_CONFIG = REPO / "deploy" / "jupyterhub" / "jupyterhub_config.py"
PREFIX = Path(os.environ.get("QW_HUB_PREFIX", "/opt/qw-hub"))
VENV = Path(os.environ.get("QW_HUB_VENV", PREFIX / "venv"))
PROXY = Path(os.environ.get("QW_HUB_PROXY", PREFIX / "node_modules" / ".bin" / "configurable-http-proxy"))


require = functools.partial(ci_require, what="hub test", hint=" (run .ci/setup-hub.sh as root)")


# The hub, its proxy and the proxy's API each bind a port the test must name in the config before they start
# (configurable-http-proxy takes no inherited socket, and the hub must tell the proxy where it is), so a port
# free when picked can be taken before it is bound. Ports are picked below the kernel's ephemeral range (where
# every outgoing connection on the host takes its local port), and a start whose bind fails ("address already
# in use", in the hub's or the proxy's log) is started again on new ports: a retry of the start, not of the test.
START_TRIES = 5
START_TIMEOUT = 120.0     # s per start: 7-14 s here on an idle host; a loaded CI host can take many times that
ADDRESS_IN_USE = re.compile(r"EADDRINUSE|[Aa]ddress already in use")


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768      # Linux's default


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports free now (each bound and released), outside the ephemeral range when it
    leaves room below it; the caller must still expect one to be taken before it binds it (see above)."""
    rng, low = random.SystemRandom(), _ephemeral_low()
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", rng.randrange(10000, low) if low > 11000 else 0))
            except OSError:
                continue
            port = s.getsockname()[1]
        if port not in ports:
            ports.append(port)
    return ports


def free_port() -> int:
    """One port as `free_ports` picks them."""
    return free_ports(1)[0]


def http(method: str, url: str, token: str, body: dict | None = None, timeout: float = 30) -> tuple[int, dict | str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw) if raw else {}
    except ValueError:
        return status, raw.decode("utf-8", "replace")


@dataclass
class Hub:
    url: str                      # public URL (through the proxy)
    token: str                    # service token: admin:users, admin:servers, tokens
    venv: Path                    # the venv the users' servers and kernels run from
    log: Path
    proc: subprocess.Popen
    users: list[str] = field(default_factory=list)

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | str]:
        return http(method, f"{self.url}/hub/api{path}", self.token, body)

    def start_server(self, user: str, timeout: float = 60) -> None:
        status, reply = self.api("POST", f"/users/{user}/server")
        assert status in (201, 202), f"start {user}: HTTP {status} {reply}\n{self.log_tail()}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, info = self.api("GET", f"/users/{user}")
            server = (info.get("servers") or {}).get("", {}) if isinstance(info, dict) else {}
            if server.get("ready"):
                return
            assert self.proc.poll() is None, f"hub died\n{self.log_tail()}"
            time.sleep(0.25)
        raise AssertionError(f"server of {user} not ready after {timeout} s\n{self.log_tail()}")

    def user_token(self, user: str) -> str:
        status, reply = self.api("POST", f"/users/{user}/tokens", {"note": "qw hub test", "expires_in": 600})
        assert status == 201, f"token for {user}: HTTP {status} {reply}"
        return reply["token"]

    def http(self, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, dict | str]:
        """A request to `path` under the public URL with a user's token."""
        return http(method, f"{self.url}{path}", token, body)

    def run_in_kernel(self, user: str, token: str, code: str, timeout: float = 30) -> str:
        return run_in_kernel(self, user, token, code, timeout)

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else "(no hub log)"


def run_in_kernel(hub: Hub, user: str, token: str, code: str, timeout: float = 30) -> str:
    """Start a kernel on `user`'s server, run `code`, return its stdout; fail on an error reply."""
    import websocket  # websocket-client

    base = f"{hub.url}/user/{user}"
    status, kernel = http("POST", f"{base}/api/kernels", token, {"name": "python3"})
    assert status == 201, f"kernel for {user}: HTTP {status} {kernel}"
    ws = websocket.create_connection(f"{base.replace('http', 'ws', 1)}/api/kernels/{kernel['id']}/channels",
                                     header=[f"Authorization: token {token}"], timeout=timeout)
    try:
        msg_id, out, errors, replied, idle = uuid.uuid4().hex, [], [], False, False
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": user, "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        deadline = time.monotonic() + timeout
        while not (replied and idle) and time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                errors.append(f"{content['ename']}: {content['evalue']}")
            elif kind == "execute_reply":
                replied = True
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
        assert replied and idle, f"no reply from {user}'s kernel within {timeout} s"
        assert not errors, f"{user}'s kernel raised: {errors}; stdout: {''.join(out)}"
        return "".join(out)
    finally:
        ws.close()
        http("DELETE", f"{base}/api/kernels/{kernel['id']}", token)


def _create_user(name: str) -> None:
    subprocess.run(["useradd", "-m", "-K", "HOME_MODE=0700", "-s", "/bin/bash", name],
                   check=True, capture_output=True, text=True)


def _delete_user(name: str) -> None:
    for _ in range(10):
        res = subprocess.run(["userdel", "-r", name], capture_output=True, text=True)
        if res.returncode in (0, 6):  # 6: no such user
            return
        time.sleep(0.5)  # "currently used by process": its processes are still exiting
    raise RuntimeError(f"userdel -r {name}: {res.stderr.strip()}")


def _kill_pids(pids: set[int]) -> None:
    import psutil
    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            p.terminate()
            procs.append(p)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def _processes_of(hub_pid: int, uids: set[int]) -> set[int]:
    """Pids the test is responsible for: the hub's descendants and anything run by the test users."""
    import psutil
    pids = set()
    try:
        pids |= {p.pid for p in psutil.Process(hub_pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter(["uids"]):
        if p.info["uids"] and p.info["uids"].real in uids:
            pids.add(p.pid)
    return pids


@pytest.fixture
def hub_users():
    """Two fresh unix users with 0700 homes; removed with `userdel -r` afterwards."""
    # CI runs as root (.ci/run installs system packages); outside CI a non-root developer skips
    require(os.geteuid() == 0, "the hub test needs root (it creates unix users)")
    require(shutil.which("useradd") is not None and shutil.which("userdel") is not None,
            "useradd/userdel not found (Debian package passwd)")
    tag = secrets.token_hex(3)
    names = [f"qwa{tag}", f"qwb{tag}"]
    created = []
    try:
        for n in names:
            _create_user(n)
            created.append(n)
        yield names
    finally:
        for n in created:
            _delete_user(n)


@pytest.fixture
def tutorials_dir():
    """A world-readable, read-only "tutorials" folder with one tiny notebook (pytest's tmp_path
    is 0700 under /tmp/pytest-of-root, which the users could not read)."""
    d = Path(tempfile.mkdtemp(prefix="qw-hub-tutorials-", dir="/tmp"))
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                     "source": ["print('hello from the tutorial')"]}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (d / "00_hello.ipynb").write_text(json.dumps(nb))
    os.chmod(d / "00_hello.ipynb", 0o444)
    os.chmod(d, 0o755)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


@pytest.fixture
def hub(hub_users, tutorials_dir, tmp_path):
    """A JupyterHub on 127.0.0.1 using deploy/jupyterhub/jupyterhub_config.py, with the
    shared-password authenticator and a service token instead of PAM logins."""
    for path, what in [(VENV / "bin" / "jupyterhub", "jupyterhub in the hub venv"),
                       (VENV / "bin" / "jupyterhub-singleuser", "jupyterhub-singleuser in the hub venv"),
                       (PROXY, "configurable-http-proxy")]:
        require(path.exists(), f"{what}: {path} not found")
    check = subprocess.run([str(VENV / "bin" / "python"), "-c", "import engine.workspace.store"], cwd="/",
                           capture_output=True, text=True)
    require(check.returncode == 0, f"the hub venv cannot import engine.workspace.store: {check.stderr[-500:]}")

    token = secrets.token_hex(24)
    env = {"PATH": f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(tmp_path),
           "QW_HUB_PREFIX": str(PREFIX), "QW_HUB_VENV": str(VENV), "QW_TUTORIALS_DIR": str(tutorials_dir)}
    uids = {int(subprocess.run(["id", "-u", u], capture_output=True, text=True, check=True).stdout) for u in hub_users}
    h, last_log = None, ""
    try:
        for attempt in range(1, START_TRIES + 1):
            h = _start_hub(tmp_path / f"start-{attempt}", token, hub_users, tutorials_dir, env)
            if _wait_until_answering(h):
                break
            last_log = h.log_tail()
            _stop_hub(h, [], uids)            # a port was taken between its pick and the bind: new ports
            h = None
        else:
            pytest.fail(f"hub: every one of {START_TRIES} starts found a port taken (address already in use); "
                        f"last log:\n{last_log}")
        yield h
    finally:
        if h is not None:
            _stop_hub(h, hub_users, uids)


def _start_hub(folder: Path, token: str, hub_users: list[str], tutorials_dir: Path, env: dict) -> Hub:
    """Start one JupyterHub in `folder` (its config, data, log and working directory) on new ports."""
    folder.mkdir()
    port, hub_port, api_port = free_ports(3)
    config = folder / "jupyterhub_test_config.py"
    config.write_text(f"""
load_subconfig({str(DEPLOY_CONFIG)!r})
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = [{str(PROXY)!r}]
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = {secrets.token_hex(12)!r}
c.Authenticator.allowed_users = {set(hub_users)!r}
c.JupyterHub.services = [{{"name": "qw-test", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{"name": "qw-test", "services": ["qw-test"],
                            "scopes": ["admin:users", "admin:servers", "tokens"]}}]
c.JupyterHub.log_level = "INFO"
""")
    log = folder / "hub.log"
    with open(log, "wb") as logf:
        # start_new_session=True is setsid(): the hub leads its own process group, killed as one
        proc = subprocess.Popen([str(VENV / "bin" / "jupyterhub"), "-f", str(config)], cwd=folder,
                                env={**env, "QW_HUB_DATA": str(folder / "hub-data")}, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return Hub(url=f"http://127.0.0.1:{port}", token=token, venv=VENV, log=log, proc=proc, users=list(hub_users))


def _wait_until_answering(h: Hub) -> bool:
    """True once the hub answers through its proxy as our hub (it knows the service token: another server
    that took the port does not); False if the hub or its proxy could not bind a port. Fails the test with
    the hub's log if the hub exits for another reason or does not answer within START_TIMEOUT."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if ADDRESS_IN_USE.search(h.log_tail(1 << 20)):
            return False
        assert h.proc.poll() is None, f"hub exited with {h.proc.returncode}\n{h.log_tail()}"
        try:   # a short timeout per try: a process that took the port may accept and never answer
            status, who = http("GET", f"{h.url}/hub/api/user", h.token, timeout=5)
            if status == 200 and isinstance(who, dict) and who.get("name") == "qw-test":
                return True
        except OSError:
            pass
        assert time.monotonic() < deadline, f"hub not answering after {START_TIMEOUT:g} s\n{h.log_tail()}"
        time.sleep(0.2)


def _stop_hub(h: Hub, servers_of: list[str], uids: set[int]) -> None:
    """Stop the servers of `servers_of` (through the API), the hub's process group and every process it or
    the test users (`uids`) started."""
    for u in servers_of:
        try:
            h.api("DELETE", f"/users/{u}/server")
        except OSError:
            pass
    proc = h.proc
    owned = _processes_of(proc.pid, uids)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)
    _kill_pids(owned | _processes_of(proc.pid, uids))
