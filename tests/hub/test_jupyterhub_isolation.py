"""A real JupyterHub with two unix users: each kernel runs as its own uid, writes its workspace
through the installed package, cannot read or list the other's, and a user's token is refused
(403) by the other's server. Also checks the tutorial copy done by the deploy config's hook."""
from __future__ import annotations

import json
import pwd
import stat
from pathlib import Path

import pytest

pytestmark = [pytest.mark.hub, pytest.mark.timeout(600)]   # a hang bound, above the fixture's start bound (conftest)

WRITE = """
import json, os, pwd, engine.workspace.store
from engine.workspace import Workspace
ws = Workspace()
e = ws.save_bytes("secret-{user}", "record", {{"run.json": json.dumps({{"owner": "{user}"}}).encode()}})
print(json.dumps({{"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
                  "name": pwd.getpwuid(os.getuid()).pw_name, "root": str(ws.root),
                  "file": str(ws.path_of(e.name)), "engine": engine.workspace.store.__file__,
                  "entries": [x.name for x in ws.list()],
                  "tutorials": sorted(os.listdir(ws.root / "tutorials"))}}))
"""

SNOOP = """
import json, os
from engine.workspace import Workspace
home, ws_root, target = {home!r}, {root!r}, {file!r}
tries = {{
    "list_home": lambda: os.listdir(home),
    "list_workspace": lambda: os.listdir(ws_root),
    "read_index": lambda: open(os.path.join(ws_root, ".qw-index.json")).read(),
    "read_record": lambda: open(target).read(),
    "workspace_api": lambda: Workspace(ws_root).list(),
}}
result = {{}}
for label, attempt in tries.items():
    try:
        attempt()
        result[label] = "ALLOWED"
    except PermissionError:
        result[label] = "PermissionError"
    except Exception as err:
        result[label] = f"{{type(err).__name__}}: {{err}}"
print(json.dumps(result))
"""


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_two_users_are_isolated(hub):
    a, b = hub.users
    for u in (a, b):
        if hub.api("GET", f"/users/{u}")[0] == 404:
            assert hub.api("POST", f"/users/{u}")[0] == 201
        hub.start_server(u)
    token = {u: hub.user_token(u) for u in (a, b)}

    # each kernel runs as its own uid and writes into its own workspace via the installed package
    seen = {}
    for u in (a, b):
        pw = pwd.getpwnam(u)
        info = last_json(hub.run_in_kernel(u, token[u], WRITE.format(user=u)))
        seen[u] = info
        assert (info["uid"], info["euid"], info["gid"], info["name"]) == (pw.pw_uid, pw.pw_uid, pw.pw_gid, u)
        assert info["root"] == f"{pw.pw_dir}/qwidgets-workspace"
        assert info["entries"] == [f"secret-{u}"]
        assert info["engine"].startswith(str(hub.venv)), "kernels must use the non-editable install"
        assert info["tutorials"] == ["00_hello.ipynb"]  # copied by the hub's pre-spawn hook
        # checked from outside (root): real files, owned by the user, private modes
        record = Path(info["file"])
        assert json.loads(record.read_text()) == {"owner": u}
        assert record.stat().st_uid == pw.pw_uid
        assert stat.S_IMODE(Path(pw.pw_dir).stat().st_mode) == 0o700
        root = Path(info["root"])
        assert root.stat().st_uid == pw.pw_uid and stat.S_IMODE(root.stat().st_mode) == 0o700
        tut = root / "tutorials" / "00_hello.ipynb"
        assert tut.stat().st_uid == pw.pw_uid and stat.S_IMODE(tut.stat().st_mode) == 0o600
        assert "hello from the tutorial" in tut.read_text()

    # messages over tornado's default 10 MiB limit get through (widget uploads of .weights files)
    big = f"print(len({'x' * (12 << 20)!r}))"
    assert hub.run_in_kernel(a, token[a], big).strip() == str(12 << 20)

    # user B's kernel can neither list nor read anything of user A
    snoop = SNOOP.format(home=pwd.getpwnam(a).pw_dir, root=seen[a]["root"], file=seen[a]["file"])
    result = last_json(hub.run_in_kernel(b, token[b], snoop))
    assert result == {k: "PermissionError" for k in ("list_home", "list_workspace", "read_index", "read_record")} | {
        # the engine's API refuses with one line naming the folder, not a raw PermissionError (paths.make_root)
        "workspace_api": f"WorkspaceError: workspace root {seen[a]['root']}: cannot create it: Permission denied; "
                         "set QW_WORKSPACE to a folder you can write"}

    # a user's token opens their own server and gets 403 on the other's
    for me, other in ((a, b), (b, a)):
        assert hub.http("GET", f"/user/{me}/api/contents", token[me])[0] == 200
        status, reply = hub.http("GET", f"/user/{other}/api/contents", token[me])
        assert status == 403, f"{me}'s token on {other}'s server: HTTP {status} {reply}"
