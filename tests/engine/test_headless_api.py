"""A model without a detection head (a classifier, a backbone: here one conv) is refused by the Python entry
points that score detections, as the CLI refuses it: run_montecarlo and rank_images (in this process and on a
backend) scored every image as agreeing perfectly with FLOAT, no detections on either side."""
from __future__ import annotations

import pytest

from engine.errors import EngineError
from engine.quant.worst_images import rank_images as rank_here
from engine.scale.backends import InProcess
from engine.scale.montecarlo import run_montecarlo
from engine.scale.worst import rank_images
from helpers import IMAGES, one_conv_session

HEADLESS = r"needs a detection head \(\[detection\], \[region\] or \[yolo\]\) and this model has none"


@pytest.fixture(scope="module")
def headless(tmp_path_factory):
    s = one_conv_session(tmp_path_factory.mktemp("headless"))      # one conv: a backbone without a head
    return s.model, s.qmodel


def test_montecarlo_refuses_a_model_without_a_head(headless):
    model, qm = headless
    with pytest.raises(EngineError, match="run_montecarlo " + HEADLESS):
        run_montecarlo(model, qm, [IMAGES / "dog.jpg"], n_variants=1, modes=("int",))


@pytest.mark.parametrize("where", ["here", "numpy", "backend"])
def test_rank_images_refuses_a_model_without_a_head(headless, where):
    model, qm = headless
    with pytest.raises(EngineError, match="rank_images " + HEADLESS):
        if where == "here":
            rank_here(model, qm, "int", [IMAGES / "dog.jpg"])
        else:
            rank_images(model, qm, "int", [IMAGES / "dog.jpg"],
                        backend=InProcess() if where == "backend" else "numpy")
