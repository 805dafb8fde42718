"""The sweep judges a writer by its pid AND its start time (/proc/PID/stat field 22), recorded in the temp
name (`-s<start>`) and in workspace staging names: a pid reused by another process neither keeps a dead
writer's temp file forever nor passes for the writer. Names without a start time (earlier versions)
are judged by the pid alone, as before."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine.atomic import (_HOST, atomic_write, own_start, process_start, sweep_temp_files, temp_path,
                           writer_alive)

pytestmark = pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/stat"), reason="needs Linux /proc")
DEAD = 99_999_999     # above any pid_max: no such process


@pytest.fixture
def other():
    """A live process that is not this one (its pid and start time)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc.pid, process_start(proc.pid)
    finally:
        proc.kill()
        proc.wait(10)


def name(pid: int, tail: str) -> str:
    return f".m.npz.qwtmp-{pid}-{pid}-{_HOST}abcdef{tail}"


def test_process_start_reads_field_22_of_proc_stat(other):
    pid, start = other
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    assert start == int(fields[22 - 3]) and own_start() == process_start(os.getpid()) > 0
    assert process_start(DEAD) is None


def test_temp_names_record_the_writers_start_time():
    n = temp_path("/tmp/some model.npz").name
    assert n.startswith(f".some model.npz.qwtmp-{os.getpid()}-") and n.endswith(f"-s{own_start()}")
    assert len(temp_path("/tmp/" + "n" * 250).name.encode()) <= 240


def test_a_live_pid_with_another_start_time_is_a_dead_writer(tmp_path, other):
    pid, start = other
    reused = [name(pid, f"-s{start + 1}"),                     # that pid now belongs to a later process
              name(os.getpid(), f"-s{own_start() - 1}")]      # an earlier process that had this pid
    live = [name(pid, f"-s{start}"), name(os.getpid(), f"-s{own_start()}"),
            name(pid, ""), name(os.getpid(), "")]             # earlier versions' names: the pid alone, as before
    gone = [name(DEAD, ""), name(DEAD, "-s12345")]
    for n in reused + live + gone:
        (tmp_path / n).write_bytes(b"half")
    assert sorted(p.name for p in sweep_temp_files(tmp_path)) == sorted(reused + gone)
    assert sorted(os.listdir(tmp_path)) == sorted(live)
    assert not writer_alive(pid, start + 1) and writer_alive(pid, start) and writer_alive(pid, None)


def test_atomic_write_never_takes_its_own_temp_file_for_a_dead_writers(tmp_path):
    mine = temp_path(tmp_path / "m.npz")
    mine.write_bytes(b"being written by this process")
    atomic_write(tmp_path / "m.npz", b"new")
    assert mine.exists()


def test_workspace_staging_folders_are_judged_by_pid_and_start_time(tmp_path, other):
    from engine.workspace import Workspace
    pid, start = other
    ws = Workspace(tmp_path / "ws")
    staging = ws.root / ".qw-staging"
    staging.mkdir(exist_ok=True)
    reused = [f"{pid}-0123456789ab-s{start + 1}", f"{pid}-trash-0123456789ab-s{start + 1}"]
    live = [f"{pid}-0123456789ab-s{start}", f"{pid}-ba9876543210", f"{pid}-trash-ba9876543210"]
    for n in reused + live:
        (staging / n).mkdir()
        (staging / n / "data.txt").write_text("x")
    ws.save_bytes("after", "record", {"a.txt": b"a"})          # every writer sweeps the staging folder
    assert sorted(os.listdir(staging)) == sorted(live)
    ws.save_bytes("again", "record", {"a.txt": b"a"})           # its own staging folder was its own
    assert sorted(os.listdir(staging)) == sorted(live)
