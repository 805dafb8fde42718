"""The controls' Image picker and Upload, as a user meets them in JupyterLab (QA round 6, chromium): the picker
names the image the session really runs on, and a bad upload's error names the uploaded file."""
from __future__ import annotations

import engine
from helpers import IMAGES
from qwidgets import Explorer


def upload(ex: Explorer, name: str, data: bytes) -> None:
    """Set the FileUpload value the way the browser front end does (JSON state + buffers)."""
    ex.controls._upload.set_state({"value": [
        {"name": name, "type": "image/jpeg", "size": len(data), "last_modified": 0, "content": memoryview(data)}]})


def test_a_bad_upload_is_named_by_its_file_name(tiny, tiny_q):
    """Upload of a truncated photo said '<image bytes>: corrupt or truncated image data': which file?"""
    s = engine.Session(tiny, tiny_q, "int")
    ex = Explorer(s)
    upload(ex, "holiday.jpg", (IMAGES / "dog.jpg").read_bytes()[:5000])
    assert ex.status.startswith("error: holiday.jpg: corrupt or truncated image data"), ex.status
    assert "<image bytes>" not in ex.status and s.image_name == "dog.jpg"
    assert ex.controls._image_pick.label == "dog"        # not "(uploaded file)": the session still runs dog
    upload(ex, "notes.jpg", b"[net]\nwidth=416\n")
    assert ex.status.startswith("error: notes.jpg: not a decodable image"), ex.status


def test_a_good_upload_gives_the_session_its_file_name(tiny, tiny_q):
    """The session kept image_name None after an upload (its record then has no image name)."""
    s = engine.Session(tiny, tiny_q, "int")
    ex = Explorer(s)
    upload(ex, "my horses.jpg", (IMAGES / "horses.jpg").read_bytes())
    assert s.image_name == "my horses.jpg" and ex.controls.image_name == "my horses.jpg"
    assert ex.controls._image_pick.value == "(uploaded file)"


def test_the_picker_shows_the_sessions_image_not_always_dog(tiny, tiny_q):
    """An Explorer on a session over horses.jpg (tutorial 07's ex_kl) showed 'Image: dog'."""
    s = engine.Session(tiny, tiny_q, "int", image=str(IMAGES / "horses.jpg"))
    ex = Explorer(s)
    pick = ex.controls._image_pick
    assert pick.label == "horses" and s.image_name == "horses.jpg"
    # a session on an image that is not in the picker: no sample's name is shown for it
    s2 = engine.Session(tiny, tiny_q, "int", image=str(IMAGES / "scream.jpg"))
    ex2 = Explorer(s2)
    assert ex2.controls._image_pick.value == "(path below)"
    assert ex2.controls._image_path.value == "" and "scream.jpg" in ex2.controls._image_path.placeholder
    assert s2.image_name == "scream.jpg" and s2.position == -1


def test_the_picker_follows_an_image_switched_from_code(tiny, tiny_q):
    """session.reset(image=...) in a cell switched the image; the picker still said dog."""
    s = engine.Session(tiny, tiny_q, "int")
    ex = Explorer(s)
    pick = ex.controls._image_pick
    assert pick.label == "dog"
    s.reset(image=str(IMAGES / "person.jpg"))
    assert pick.label == "person" and s.image_name == "person.jpg"
    # the picker moving does not open the image again (nothing re-ran, the status is not an 'image ...' line)
    s.step()
    s.reset(image=str(IMAGES / "horses.jpg"))
    assert pick.label == "horses" and s.position == -1


def test_a_refused_upload_leaves_no_count_on_the_upload_button(tiny, tiny_q):
    """The button kept saying "Upload (1)" after the upload was refused, as if that file were open; a good
    upload keeps its file (the picker names it by that)."""
    s = engine.Session(tiny, tiny_q, "int")
    ex = Explorer(s)
    upload(ex, "holiday.jpg", (IMAGES / "dog.jpg").read_bytes()[:5000])
    assert ex.status.startswith("error: holiday.jpg:") and s.image_name == "dog.jpg"
    assert ex.controls._upload.value == () and ex.controls._upload.get_state()["value"] == []
    upload(ex, "my horses.jpg", (IMAGES / "horses.jpg").read_bytes())
    assert s.image_name == "my horses.jpg" and [f["name"] for f in ex.controls._upload.value] == ["my horses.jpg"]
