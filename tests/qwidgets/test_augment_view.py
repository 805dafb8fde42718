"""AugmentView, headless: pick an image, move sliders, check thumbnails, save the set."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from engine.imaging.augment import BASIC, augment
from engine.workspace import Workspace
from qwidgets.augment_view import THUMB, AugmentView
from helpers import IMAGES



def make_view(tmp_path, *names: str) -> AugmentView:
    ws = Workspace(tmp_path / "ws")
    for n in names:
        ws.import_path(IMAGES / f"{n}.jpg")
    return AugmentView(ws)


def test_empty_workspace_says_what_to_do(tmp_path):
    view = make_view(tmp_path)
    assert view.image_name is None and "no image in the workspace" in view.status
    view._save.click()
    assert view.status == "pick an image first"


def test_preview_thumbnails_follow_image_and_sliders(tmp_path):
    view = make_view(tmp_path, "dog", "horses")
    assert view.image_name == "dog" and view.set_name == "dog-aug"
    assert set(view.thumbnails) == set(BASIC)
    for img in view.thumbnails.values():
        thumb = Image.open(io.BytesIO(img.value))
        assert thumb.format == "PNG" and max(thumb.size) == THUMB
    rotate_before, flip_before = view.thumbnails["rotate"].value, view.thumbnails["flip"].value
    view._angle.value = 45.0  # slider -> trait -> preview
    assert view.angle == 45.0 and view.thumbnails["rotate"].value != rotate_before
    assert view.thumbnails["flip"].value == flip_before  # flip does not depend on the angle
    view._picker.value = "horses"
    assert view.image_name == "horses" and view.images["original"].size == (773, 512)


def test_set_name_follows_the_picked_image_until_typed(tmp_path):
    # it kept the first image's name: horses' augmentations were offered for saving as "dog-aug"
    view = make_view(tmp_path, "dog", "horses")
    assert view.set_name == "dog-aug"
    view._picker.value = "horses"
    assert view.set_name == "horses-aug"
    view._save.click()
    assert view.status == "saved image set 'horses-aug': 5 images"
    assert view.workspace.info("horses-aug").files[0].startswith("horses")
    view._name.value = "my-set"
    view._picker.value = "dog"
    assert view.set_name == "my-set"                 # a name the user typed stays


def test_save_stores_full_size_set_matching_the_engine(tmp_path):
    view = make_view(tmp_path, "person")
    view.angle, view.blur_radius = -20.0, 3.0
    view.set_name = "person-calib"
    view._save.click()
    assert view.saved == "person-calib" and "5 images" in view.status
    entry = view.workspace.info("person-calib")
    assert (entry.kind, entry.parent, entry.meta["augment"]) == (
        "imageset", "person", {"angle": -20.0, "blur_radius": 3.0})
    expected = augment(IMAGES / "person.jpg", angle=-20.0, blur_radius=3.0)
    for key in BASIC:
        stored = np.asarray(Image.open(view.workspace.path_of("person-calib", f"person-{key}.png")))
        np.testing.assert_array_equal(stored, np.asarray(expected[key]), err_msg=key)


def test_save_errors_are_shown_not_raised(tmp_path):
    view = make_view(tmp_path, "dog")
    view._save.click()
    view._save.click()  # same name again
    assert view.status.startswith("error: entry 'dog-aug': already exists")
    view.set_name = "bad/name"
    view._save.click()
    assert "path separator" in view.status


def test_refresh_picks_up_new_images(tmp_path):
    view = make_view(tmp_path)
    view.workspace.import_path(IMAGES / "scream.jpg")
    view._refresh.click()
    assert view._picker.options == ("scream",) and view.image_name == "scream"
    assert view.thumbnails["original"].value


def test_thumbnails_say_which_mirror_and_save_keeps_its_whole_label(tmp_path):
    """qa4: "flip" and "flop" did not say which mirror each is; the Save button's default width cut its
    text to "Save as image ..." in the browser."""
    view = make_view(tmp_path, "dog")
    assert [view.captions[k].value for k in BASIC] == ["original", "rotate", "blur", "flip (top-bottom)",
                                                       "flop (left-right)"]
    assert view._save.description == "Save as image set"
    assert view._save.layout.width == "auto" and view._save.layout.min_width == "180px"
