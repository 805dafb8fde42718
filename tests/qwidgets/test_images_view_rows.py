"""A row of the Images tab opens the image it names, also after a later ranking failed (the view used to
take the new set's list before the ranking ran: the horses row opened the new folder's second image,
the third row raised IndexError)."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

import engine
from helpers import IMAGES
from qwidgets.images_view import PATH, SAMPLES, WorstImagesView


def test_rows_of_the_shown_ranking_open_their_images_after_a_failed_ranking(tiny, tiny_q, tmp_path):
    for name, photo in [("a.jpg", "scream.jpg"), ("b.jpg", "dog.jpg")]:
        (tmp_path / name).symlink_to(IMAGES / photo)
    s = engine.Session(tiny, tiny_q, "int")
    view = WorstImagesView(s, background=False)
    view._set.value = SAMPLES
    view.rank_button.click()
    rows = {label.split(":")[0]: index for label, index in view.pick.options}
    assert len(rows) == 3
    view._set.value, view._path.value = PATH, str(tmp_path)
    view.backend.value = "onnxruntime"              # refused by the engine for this profile
    view.rank_button.click()
    assert view.status.startswith("error: backend='onnxruntime'")
    for name, index in rows.items():
        view.pick.value = None
        view.pick.value = index
        assert view.status.startswith(f"opened {name}"), view.status
        with Image.open(view._items[index]) as im:
            assert Path(view._items[index]).name == name and (s.pre.image_w, s.pre.image_h) == im.size


def test_the_ranking_says_which_run_it_ranked(tiny, tiny_q):
    # QA round 6 (JupyterLab): ranked in HYBRID, then the mode switched to INT: the table, its chart and the
    # status said "mAP@0.5 vs FLOAT" with nothing telling HYBRID from INT
    s = engine.Session(tiny, tiny_q, "hybrid")
    view = WorstImagesView(s, images=[IMAGES / "dog.jpg"], background=False)
    view.rank_button.click()
    assert view.status.startswith("ranked 1 image (HYBRID, minmax vs FLOAT); worst: dog.jpg"), view.status
    assert "<caption>HYBRID, minmax run vs FLOAT, worst first</caption>" in view.table.value
    s.set_mode("int")
    view.rank_button.click()
    assert view.status.startswith("ranked 1 image (INT, minmax vs FLOAT)") and "<caption>INT, minmax" in view.table.value
