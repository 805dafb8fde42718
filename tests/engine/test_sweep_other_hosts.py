"""A home folder shared by several machines (a hub's NFS home): a pid written into a temp name or a workspace
staging folder by another machine means nothing here, so the sweep must never take that machine's live
writer for a dead one (it deleted its staging folder or temp file mid-write). Names carry `host_id()` (boot
id and pid namespace); another host's entries are reclaimed only after a day; names of earlier versions are
swept as before."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from engine.atomic import _HOST, atomic_write, own_start, sweep_temp_files, temp_path, temp_writer
from engine.mounts import host_id
from engine.workspace import Workspace
from engine.workspace.folders import stage_owner
from helpers import require

DEAD = 99_999_999       # above any pid_max: no such process here
OTHER = "0badf00d" if host_id() != "0badf00d" else "feedface"     # another machine's host_id
OLD = time.time() - 2 * 24 * 3600


def workspace(tmp_path: Path) -> tuple[Workspace, Path]:
    ws = Workspace(tmp_path / "ws")
    staging = ws.root / ".qw-staging"
    staging.mkdir(exist_ok=True)
    return ws, staging


def make(folder: Path, names: list[str], *, is_dir: bool, mtime: float | None = None) -> None:
    for n in names:
        p = folder / n
        if is_dir:
            p.mkdir()
            (p / "data.txt").write_text("being written")
        else:
            p.write_bytes(b"half")
        if mtime is not None:
            os.utime(p, (mtime, mtime))


def test_names_carry_this_hosts_id():
    assert len(host_id()) == 8 and int(host_id(), 16) >= 0 and host_id() == host_id()
    n = temp_path("/tmp/m.npz").name
    assert f"-h{host_id()}-s{own_start()}" in n and temp_writer(n) == (os.getpid(), own_start(), True)
    assert len(temp_path("/tmp/" + "n" * 250).name.encode()) <= 240


def test_another_hosts_staging_folders_and_temp_files_are_left_alone(tmp_path):
    ws, staging = workspace(tmp_path)
    # a live writer there: its pid is dead here (DEAD), or another process's here (1, ours)
    folders = [f"h{OTHER}-{DEAD}-0123456789ab-s12345", f"h{OTHER}-1-0123456789ab-s7",
               f"h{OTHER}-{os.getpid()}-0123456789ab-s1", f"h{OTHER}-{DEAD}-0123456789ab"]
    temps = [f".m.npz.qwtmp-{DEAD}-{DEAD}-abcdef-h{OTHER}-s12345", f".m.npz.qwtmp-1-1-abcdef-h{OTHER}-s7",
             f".m.npz.qwtmp-{os.getpid()}-1-abcdef-h{OTHER}-s1"]
    make(staging, folders, is_dir=True)
    make(ws.root, temps, is_dir=False)
    ws.save_bytes("after", "record", {"a.txt": b"a"})          # sweeps the staging folder and the root
    assert sweep_temp_files(ws.root) == [] and Workspace(ws.root).exists("after")
    assert sorted(os.listdir(staging)) == sorted(folders)
    assert all((ws.root / n).read_bytes() == b"half" for n in temps)
    assert stage_owner(folders[0]) == (DEAD, 12345, False)


def test_another_hosts_entries_a_day_old_are_reclaimed(tmp_path):
    ws, staging = workspace(tmp_path)
    make(staging, [f"h{OTHER}-{DEAD}-0123456789ab-s12345", f"h{OTHER}-{DEAD}-trash-0123456789ab"],
         is_dir=True, mtime=OLD)
    make(ws.root, [f".m.npz.qwtmp-{DEAD}-{DEAD}-abcdef-h{OTHER}-s12345"], is_dir=False, mtime=OLD)
    ws.save_bytes("after", "record", {"a.txt": b"a"})
    assert os.listdir(staging) == [] and not list(ws.root.glob(".m.npz.qwtmp-*"))


def test_this_hosts_dead_writers_are_swept_live_ones_kept(tmp_path):
    ws, staging = workspace(tmp_path)
    me = f"{os.getpid()}-0123456789ab-s{own_start()}"
    dead_dirs = [f"h{host_id()}-{DEAD}-0123456789ab-s12345", f"h{host_id()}-{DEAD}-trash-0123456789ab",
                 f"h{host_id()}-{os.getpid()}-0123456789ab-s{own_start() - 1}"]     # an earlier holder of our pid
    dead_temps = [f".m.npz.qwtmp-{DEAD}-{DEAD}-abcdef-h{host_id()}-s12345", f".m.npz.qwtmp-{DEAD}-1-abcdef-h{host_id()}"]
    make(staging, dead_dirs + [f"h{host_id()}-{me}"], is_dir=True)
    make(ws.root, dead_temps + [f".m.npz.qwtmp-{os.getpid()}-1-abcdef-h{host_id()}-s{own_start()}"], is_dir=False)
    ws.save_bytes("after", "record", {"a.txt": b"a"})
    assert os.listdir(staging) == [f"h{host_id()}-{me}"]
    assert [p.name for p in ws.root.glob(".m.npz.qwtmp-*")] == [f".m.npz.qwtmp-{os.getpid()}-1-abcdef-h{host_id()}-s{own_start()}"]


def test_earlier_versions_names_are_swept_as_before(tmp_path):
    ws, staging = workspace(tmp_path)
    other4 = "ffff" if _HOST != "ffff" else "eeee"
    # staging names without a host: judged by the pid here, as they were
    dead_dirs = [f"{DEAD}-0123456789ab-s12345", f"{DEAD}-trash-0123456789ab", f"{DEAD}-0123456789ab"]
    live_dirs = [f"{os.getpid()}-0123456789ab-s{own_start()}", f"{os.getpid()}-trash-0123456789ab"]
    # temp names: `-<4 hex host name hash><6 hex>` (this host's or not by that hash), `-<8 hex>` (no host: by pid)
    dead_temps = [f".m.npz.qwtmp-{DEAD}-1-{_HOST}abcdef-s5", f".m.npz.qwtmp-{DEAD}-1-{_HOST}abcdef",
                  f".m.npz.qwtmp-{DEAD}-{DEAD}-{other4}1234"]
    kept_temps = [f".m.npz.qwtmp-{DEAD}-1-{other4}abcdef-s5",        # another host's, recent
                  f".m.npz.qwtmp-{os.getpid()}-1-{other4}1234"]       # no host, a live pid
    make(staging, dead_dirs + live_dirs, is_dir=True)
    make(ws.root, dead_temps + kept_temps, is_dir=False)
    ws.save_bytes("after", "record", {"a.txt": b"a"})
    assert sorted(os.listdir(staging)) == sorted(live_dirs)
    assert sorted(p.name for p in ws.root.glob(".m.npz.qwtmp-*")) == sorted(kept_temps)


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-Urpf", "--mount-proc", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


WRITER = """
import sys, time
from pathlib import Path
from engine.atomic import temp_path
from engine.workspace.folders import stage_files
stage, _ = stage_files(Path(sys.argv[1]) / ".qw-staging", {"data.txt": b"half of a model"})
tmp = temp_path(Path(sys.argv[1]) / "m.npz")
tmp.write_bytes(b"half")
print(stage.name, tmp.name, flush=True)
sys.stdin.read()             # a live writer, mid-save, until the test closes its stdin
"""


def test_a_live_writer_whose_pids_this_process_cannot_see_keeps_its_files(tmp_path):
    """A writer in another pid namespace of this machine (a container; as for another machine, its pid means
    nothing here: it is pid 1 there, and pid 1 here is init, started at another time)."""
    require(_unshare_works(), "needs unprivileged user and pid namespaces (unshare -Urpf)")    # CI: a failure
    ws, staging = workspace(tmp_path)
    proc = subprocess.Popen(["unshare", "-Urpf", "--mount-proc", sys.executable, "-c", WRITER, str(ws.root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        stage, tmp = proc.stdout.readline().split()
        ws.save_bytes("after", "record", {"a.txt": b"a"})
        Workspace(ws.root)
        sweep_temp_files(ws.root)
        assert (staging / stage / "data.txt").read_bytes() == b"half of a model"
        assert (ws.root / tmp).read_bytes() == b"half"
    finally:
        proc.stdin.close()
        proc.wait(30)
