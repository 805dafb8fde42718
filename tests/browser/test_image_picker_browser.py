"""The Explorer's Image picker and Upload as a user sees them in JupyterLab + chromium (QA round 6).

notebooks/image_picker.ipynb opens an Explorer on an INT session over horses.jpg: the picker shows
"horses" (it showed "dog", whatever the session ran on); a cell switching the session to person.jpg
moves it to "person"; uploading a truncated photo through the Upload button's file chooser puts one
error line naming that file in the status line (it said "<image bytes>"), and the picker goes on showing
the image the session kept (not "(uploaded file)").
No traceback or "Error displaying widget" in the notebook. Screenshots in the artifacts folder.
"""
from __future__ import annotations

import re

import pytest

from helpers import IMAGES
from notebook_page import kernel_line, open_and_run, rerun_cell, wait_for_graph_nodes
from test_explorer_round2_browser import STATUS

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

PICKED = ("Array.from(document.querySelectorAll('.qw-explorer .qw-controls select'))"
          ".map(e => e.options[e.selectedIndex] ? e.options[e.selectedIndex].text : '')")


def picked_image(page) -> str:
    """The text the Image dropdown shows (the one whose options hold '(uploaded file)')."""
    return page.evaluate(f"""() => {{
        const sel = Array.from(document.querySelectorAll('.qw-explorer .qw-controls select'))
            .find(e => Array.from(e.options).some(o => o.text.replace(/\\u00a0/g, ' ') === '(uploaded file)'));
        return sel.options[sel.selectedIndex].text.replace(/\\u00a0/g, ' ');
    }}""")


def test_the_image_picker_names_the_sessions_image_and_a_bad_upload_its_file(page, lab, artifacts, tmp_path):
    open_and_run(page, lab, "image_picker.ipynb", 1400, 1100)
    wait_for_graph_nodes(page, 25, timeout=120_000)
    assert "image=horses.jpg" in kernel_line(page, r"QW run=1 ", timeout=120_000)
    assert picked_image(page) == "horses"
    page.locator(".qw-explorer").first.screenshot(path=str(artifacts / "picker-horses.png"))
    rerun_cell(page, 2)
    assert "image=person.jpg" in kernel_line(page, r"QW run=2 ")
    page.wait_for_function(f"() => {PICKED}.includes('person')", timeout=30_000)
    page.locator(".qw-explorer").first.screenshot(path=str(artifacts / "picker-person.png"))

    bad = tmp_path / "holiday.jpg"
    bad.write_bytes((IMAGES / "dog.jpg").read_bytes()[:5000])
    with page.expect_file_chooser() as chooser:
        page.locator(".qw-explorer .qw-controls button", has_text=re.compile(r"Upload")).first.click()
    chooser.value.set_files(str(bad))
    page.wait_for_function(f"() => {STATUS}.startsWith('error: holiday.jpg: corrupt or truncated image data')",
                           timeout=30_000)
    page.locator(".qw-explorer").first.screenshot(path=str(artifacts / "upload-error.png"))
    assert picked_image(page) == "person"          # the session kept its image: not "(uploaded file)"
    text = page.locator(".jp-Notebook").inner_text()
    assert "Traceback" not in text and "Error displaying widget" not in text
