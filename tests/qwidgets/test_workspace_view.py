"""WorkspaceView, headless: build it on a temporary workspace, click buttons, check traits and files."""
from __future__ import annotations

import base64
import io
import struct
import zipfile

import pytest

from engine.workspace import Workspace
from qwidgets.workspace_view import WorkspaceView
from helpers import IMAGES

CFG = b"[net]\nwidth=32\nheight=32\nchannels=3\n\n[convolutional]\nfilters=2\nsize=1\n"
WEIGHTS = struct.pack("<3iq", 0, 2, 5, 0) + struct.pack("<8f", *range(8))   # the conv's 2 biases and 6 weights


def upload(view: WorkspaceView, files: dict[str, bytes]) -> None:
    """Set the FileUpload value the way the browser front end does (JSON state + buffers)."""
    view._upload.set_state({"value": [
        {"name": n, "type": "", "size": len(d), "last_modified": 0, "content": memoryview(d)}
        for n, d in files.items()]})


@pytest.fixture
def view(tmp_path) -> WorkspaceView:
    ws = Workspace(tmp_path / "ws")
    ws.import_path(IMAGES / "dog.jpg")
    ws.save_bytes("run1", "record", {"run.json": b'{"map": 0.41}'})
    return WorkspaceView(ws)


def test_lists_entries_and_filters_by_kind(view):
    assert view.entries == ["dog", "run1"]
    view.kind_filter = "record"
    assert view.entries == ["run1"]
    view._kind.value = "image"  # the dropdown is linked to the trait
    assert (view.kind_filter, view.entries) == ("image", ["dog"])


def test_selecting_shows_metadata(view):
    view._list.value = "dog"
    assert view.selected == "dog"
    assert "import:" in view._info.value and "image" in view._info.value


def test_upload_adds_entries_and_clears_the_widget(view):
    upload(view, {"tiny.cfg": CFG, "tiny.weights": WEIGHTS, "horses.jpg": (IMAGES / "horses.jpg").read_bytes()})
    assert view.entries == ["dog", "horses", "run1", "tiny"]
    assert view.workspace.info("tiny").kind == "model"
    assert view.status.startswith("uploaded:") and view._upload.value == ()


def test_upload_as_one_image_set(view):
    # qa4: the "as" box shows "auto" selected at first (it was blank: value=None selected no option)
    assert (view._upload_kind.index, view._upload_kind.label, view._upload_kind.value) == (0, "auto", None)
    view._upload_kind.value = "imageset"
    upload(view, {"a.jpg": (IMAGES / "person.jpg").read_bytes(), "b.jpg": (IMAGES / "scream.jpg").read_bytes()})
    assert view.entries == ["a-set", "dog", "run1"]
    assert view.workspace.info("a-set").files == ("a.jpg", "b.jpg")


def test_bad_upload_shows_error_and_saves_nothing(view):
    upload(view, {"evil.png": b"not a png at all"})
    assert view.status.startswith("error: ") and "evil.png" in view.status
    assert view.entries == ["dog", "run1"]
    upload(view, {"../../etc/x.png": b"x"})
    assert "path separator" in view.status and view.entries == ["dog", "run1"]


def test_import_from_path(view):
    view._path.value = str(IMAGES / "scream.jpg")
    view._import.click()
    assert "scream" in view.entries and view.selected == "scream"
    view._path.value = "/no/such/file.png"
    view._import.click()
    assert view.status == "error: import /no/such/file.png: no such file or directory"


def test_rename(view):
    view._list.value = "run1"
    view._new_name.value = "baseline"
    view._rename.click()
    assert view.entries == ["baseline", "dog"] and view.selected == "baseline"
    view._new_name.value = "../escape"
    view._rename.click()
    assert view.status.startswith("error: new entry name '../escape'")
    assert view.entries == ["baseline", "dog"]


def test_delete_needs_confirmation(view):
    view._delete.click()
    assert view.status == "select an entry to delete"
    view._list.value = "dog"
    view._delete.click()
    assert view.pending_delete == "dog" and view._confirm_row.layout.display == "flex"
    assert view.workspace.exists("dog")  # nothing deleted yet
    view._cancel.click()
    assert view.pending_delete is None and view.workspace.exists("dog")
    view._delete.click()
    view._confirm.click()
    assert not view.workspace.exists("dog") and view.entries == ["run1"]
    assert view.status == "deleted 'dog'" and view._confirm_row.layout.display == "none"


def test_export_gives_a_download_link(view):
    view._list.value = "run1"
    view._export.click()
    href = view._link.value.split('href="', 1)[1].split('"', 1)[0]
    assert href.startswith("data:application/zip;base64,")
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(href.split(",", 1)[1]))) as zf:
        assert zf.read("run1/run.json") == b'{"map": 0.41}'
    assert (view.workspace.root / "exports" / "run1.zip").is_file()


def test_open_fires_callbacks_with_the_entry(view):
    seen = []
    view.on_open(seen.append)
    view._open.click()
    assert seen == [] and view.status == "select an entry to open"
    view._list.value = "dog"
    view._open.click()
    assert [e.name for e in seen] == ["dog"] and seen[0].kind == "image"


def test_refresh_sees_other_writers_and_survives_a_corrupt_index(view):
    Workspace(view.workspace.root).save_bytes("from-other-kernel", "record", {"r.txt": b"x"})
    view.refresh()
    assert "from-other-kernel" in view.entries
    (view.workspace.root / ".qw-index.json").write_text("garbage")
    view.refresh()
    assert view.status.startswith("error: ") and "unreadable workspace index" in view.status


def test_export_read_errors_and_bugs_show_in_the_status(view, monkeypatch):
    view._list.value = "run1"
    vanished = view.workspace.root / "exports" / "gone.zip"
    monkeypatch.setattr(view.workspace, "export", lambda name: vanished)     # written, then removed by someone
    view._export.click()
    assert view.status.startswith("error: [Errno 2] No such file or directory") and view._link.value == ""

    def bug(name):
        raise TypeError("unsupported operand (simulated)")
    monkeypatch.setattr(view.workspace, "export", bug)
    view._export.click()
    assert view.status == "error: TypeError: unsupported operand (simulated)"
    assert "Traceback" in view.error_details and view._details.layout.display == "flex"


def test_open_callback_errors_stay_in_the_view(view):
    def broken(entry):
        raise RuntimeError("callback failed (simulated)")
    view.on_open(broken)
    view._list.value = "dog"
    view._open.click()
    assert view.status == "error: RuntimeError: callback failed (simulated)"
