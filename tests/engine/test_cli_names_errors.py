"""--names FILE that cannot be opened is one line naming the file once: it read
"error: /x/coco.names: cannot read class names: [Errno 2] No such file or directory: '/x/coco.names'"."""
from __future__ import annotations

from helpers import IMAGES, TINY_CFG, TINY_WEIGHTS, cli


def test_a_missing_or_folder_names_file_is_named_once(capsys, tmp_path):
    missing = tmp_path / "coco.names"
    rc, out, err = cli(capsys, "detect", TINY_CFG, "--weights", TINY_WEIGHTS, IMAGES / "dog.jpg", "--names", missing)
    assert (rc, out) == (2, "")
    assert err == f"error: {missing}: cannot read class names: No such file or directory\n"
    rc, out, err = cli(capsys, "detect", TINY_CFG, "--weights", TINY_WEIGHTS, IMAGES / "dog.jpg", "--names", tmp_path)
    assert (rc, out) == (2, "")
    assert err == f"error: {tmp_path}: cannot read class names: not a regular file\n"
