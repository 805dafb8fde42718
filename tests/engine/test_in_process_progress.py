"""In-process runs under a progress bar go in batches, so the bar moves while they run (one batch of every
image left it at 0 until the end: evaluate / montecarlo / collect_stats with progress=True), with the same
results as one batch."""
from __future__ import annotations

from engine.scale.backends import PROGRESS_BATCH, InProcess
from engine.scale.evaluate import evaluate
from helpers import IMAGES


def test_a_progress_bar_gets_batches_and_no_bar_one_batch(capsys):
    items = list(range(2 * PROGRESS_BATCH + 3))
    for progress, sizes in ((True, [PROGRESS_BATCH, PROGRESS_BATCH, 3]), (False, [len(items)])):
        seen = []
        out = InProcess().map_batches(lambda b: seen.append(len(b)) or [x * 2 for x in b], items, progress=progress)
        assert seen == sizes and [x for part in out for x in part] == [x * 2 for x in items]
    assert f"{len(items)}/{len(items)}" in capsys.readouterr().err        # the bar reached the end


def test_evaluate_under_a_progress_bar_gives_the_same_detections(tiny, tiny_q):
    photos = sorted(IMAGES.glob("*.jpg"))
    images = photos + photos[:1] * (PROGRESS_BATCH - len(photos) + 1)      # more than one batch
    quiet = evaluate(tiny, tiny_q, images, ("int",), progress=False)
    shown = evaluate(tiny, tiny_q, images, ("int",), progress=True)
    for mode in ("float", "int"):
        for a, b in zip(quiet.detections[mode], shown.detections[mode]):
            assert len(a) == len(b) and all(tuple(x) == tuple(y) for x, y in zip(a, b))
    assert quiet.agreement["int"].map50 == shown.agreement["int"].map50
