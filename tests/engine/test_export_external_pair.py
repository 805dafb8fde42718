"""ONNX export with external data (models over ~1.8 GB keep their weights in a side file), forced on a
small model with `export_onnx(..., external_data_bytes=...)`: the ONNX file and its side file are written
to temp names, both fsynced, and put in place as a pair; a failure or a kill at any point leaves the old
pair (or nothing) and no file the sweep does not reclaim."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from engine.atomic import sweep_temp_files
from helpers import ROOT

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
import engine.export.onnx_float as of  # noqa: E402

CFG = ("[net]\nchannels=3\nheight=12\nwidth=12\n"
       "[convolutional]\nfilters=16\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky\n"
       "[convolutional]\nfilters=32\nsize=3\npad=1\nactivation=leaky\n")
SIDE = r"m\.onnx\.[0-9a-f]{8}\.data"


def small(seed: int = 0):
    from engine.model import from_cfg_text, normalise_random
    model = from_cfg_text(CFG)
    normalise_random(model, seed)
    return model


def listing(folder) -> list[str]:
    return sorted(os.listdir(folder))


def runs_like(path, model) -> bool:
    x = np.random.default_rng(1).standard_normal(model.input_shape).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x[None]})[0][0]
    return np.allclose(got, model.forward(x)[-1], rtol=1e-4, atol=1e-5)


def test_the_threshold_parameter_forces_a_side_file(tmp_path):
    model = small()
    of.export_onnx(model, tmp_path / "m.onnx", external_data_bytes=1000)
    names = listing(tmp_path)
    assert len(names) == 2 and names[0] == "m.onnx" and re.fullmatch(SIDE, names[1]), names
    assert runs_like(tmp_path / "m.onnx", model)
    of.export_onnx(model, tmp_path / "n.onnx")                        # the default: one file
    assert "n.onnx" in listing(tmp_path) and len(listing(tmp_path)) == 3


@pytest.mark.parametrize("old_pair", [False, True])
def test_a_failure_after_the_side_file_is_written_leaves_the_old_pair_and_nothing_else(tmp_path, monkeypatch,
                                                                                      old_pair):
    path = tmp_path / "m.onnx"
    old = small(seed=1)
    if old_pair:
        of.export_onnx(old, path, external_data_bytes=1000)
    before = listing(tmp_path)
    seen = []

    def crash(proto, f):
        seen.extend(n for n in listing(tmp_path) if re.fullmatch(r"\.m\.onnx\.[0-9a-f]{8}\.data\.qwtmp-.*", n))
        f.write(b"half an ONNX file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(of, "write_proto", crash)
    with pytest.raises(OSError, match="No space left"):
        of.export_onnx(small(), path, external_data_bytes=1000)
    assert len(seen) == 1, seen                       # the side file was complete (a temp) when the ONNX write failed
    assert listing(tmp_path) == before                 # no temp, no new side file, old pair untouched
    if old_pair:
        assert runs_like(path, old)


def test_a_failure_putting_the_onnx_file_in_place_removes_the_new_side_file(tmp_path, monkeypatch):
    import engine.atomic
    path = tmp_path / "m.onnx"
    old = small(seed=1)
    of.export_onnx(old, path, external_data_bytes=1000)
    before = listing(tmp_path)
    real_replace = os.replace

    def replace(src, dst, **kw):
        if str(dst).endswith(".onnx"):
            raise PermissionError(13, "Permission denied")
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(engine.atomic.os, "replace", replace)
    with pytest.raises(Exception, match="Permission denied"):
        of.export_onnx(small(), path, external_data_bytes=1000)
    monkeypatch.undo()
    assert listing(tmp_path) == before and runs_like(path, old)


def child(folder, kill_at: str) -> subprocess.CompletedProcess:
    """Export in a child process killed (os._exit) while writing the ONNX file, or between its two renames."""
    code = textwrap.dedent(f"""
        import os
        import engine.atomic, engine.export.onnx_float as of
        from engine.model import from_cfg_text, normalise_random
        model = from_cfg_text({CFG!r})
        normalise_random(model, 0)
        if {kill_at!r} == "write":
            of.write_proto = lambda proto, f: os._exit(3)
        else:
            real = os.replace
            def replace(src, dst, **kw):
                if str(dst).endswith(".onnx"):
                    os._exit(3)
                return real(src, dst, **kw)
            engine.atomic.os.replace = replace
        of.export_onnx(model, {str(folder / 'm.onnx')!r}, external_data_bytes=1000)
    """)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_writer_killed_while_writing_leaves_only_temps_the_sweep_reclaims(tmp_path):
    old = small(seed=1)
    of.export_onnx(old, tmp_path / "m.onnx", external_data_bytes=1000)
    before = listing(tmp_path)
    res = child(tmp_path, "write")
    assert res.returncode == 3, res.stderr
    left = sorted(set(listing(tmp_path)) - set(before))
    assert len(left) == 2 and all(".qwtmp-" in n for n in left), left    # the side file's and the ONNX file's
    assert sorted(p.name for p in sweep_temp_files(tmp_path)) == left
    assert listing(tmp_path) == before and runs_like(tmp_path / "m.onnx", old)


def test_a_side_file_orphaned_between_the_two_renames_goes_with_the_next_export(tmp_path):
    keep = ["m.onnx.notes.data", "other.onnx.0123abcd.data", "m.onnx.0123abcd.data.bak"]
    for n in keep:
        (tmp_path / n).write_bytes(b"a user's file")
    of.export_onnx(small(seed=1), tmp_path / "m.onnx", external_data_bytes=1000)
    res = child(tmp_path, "rename")
    assert res.returncode == 3, res.stderr
    sides = [n for n in listing(tmp_path) if re.fullmatch(SIDE, n)]
    assert len(sides) == 2                                 # the old pair's and the orphan
    model = small(seed=2)
    of.export_onnx(model, tmp_path / "m.onnx", external_data_bytes=1000)
    names = listing(tmp_path)
    assert [n for n in names if n not in keep][0] == "m.onnx" and len(names) == len(keep) + 2, names
    assert not set(sides) & set(names) and runs_like(tmp_path / "m.onnx", model)


def test_the_folder_lock_excludes_another_process_on_this_machine(tmp_path):
    # what docs/reliability.md promises (one machine); across NFS clients the lock is each client's own
    from engine.atomic import folder_lock
    code = textwrap.dedent(f"""
        import errno, fcntl, os, sys
        fd = os.open({str(tmp_path)!r}, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            sys.exit(3 if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else 4)
        sys.exit(0)""")
    with folder_lock(tmp_path) as held:
        assert held
        inside = subprocess.run([sys.executable, "-c", code], timeout=60).returncode
    assert inside == 3 and subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_where_flock_on_the_folder_fails_only_the_previous_side_file_is_removed(tmp_path, monkeypatch):
    import errno
    import fcntl

    import engine.atomic as atomic
    of.export_onnx(small(seed=1), tmp_path / "m.onnx", external_data_bytes=1000)
    assert child(tmp_path, "rename").returncode == 3       # an orphan side file beside the old pair
    sides = [n for n in listing(tmp_path) if re.fullmatch(SIDE, n)]
    previous = of._external_location(tmp_path / "m.onnx")
    real = fcntl.flock

    def no_folder_flock(fd, op):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOLCK, "no locks available")
        return real(fd, op)
    monkeypatch.setattr(atomic.fcntl, "flock", no_folder_flock)
    model = small(seed=2)
    of.export_onnx(model, tmp_path / "m.onnx", external_data_bytes=1000)
    names = listing(tmp_path)
    assert previous not in names and set(sides) - {previous} <= set(names)   # the orphan stays
    assert runs_like(tmp_path / "m.onnx", model)


def test_on_a_network_file_system_the_folder_lock_holds_nothing(tmp_path, monkeypatch):
    # Linux NFS takes a folder's flock in the client kernel alone: the lock "succeeded" on every machine at
    # once, and the wider clean-up under it could delete another machine's new side file between its renames
    import engine.atomic as atomic
    from engine.atomic import folder_lock
    monkeypatch.setattr(atomic, "mount_type", lambda _p: "nfs4")
    with folder_lock(tmp_path) as held:
        assert held is False
    monkeypatch.setattr(atomic, "mount_type", lambda _p: "ext4")
    with folder_lock(tmp_path) as held:
        assert held is True


def test_mount_type_takes_the_longest_mount_point_above_a_path(tmp_path):
    from engine.mounts import mount_type
    share = tmp_path / "my share"
    (share / "runs").mkdir(parents=True)
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nsrv:/x {str(share).replace(' ', chr(92) + '040')} nfs4 rw 0 0\n"
                      f"tmpfs {tmp_path}/my tmpfs rw 0 0\n")
    assert mount_type(share / "runs", str(mounts)) == "nfs4"
    assert mount_type(tmp_path / "my", str(mounts)) == "tmpfs"
    assert mount_type(tmp_path, str(mounts)) == "ext4"
    assert mount_type(tmp_path, str(tmp_path / "missing")) == ""
