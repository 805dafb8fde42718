"""Session.explain: the Explainer over a session's run, reusing the outputs the session holds when current.

The Explainer's base run (the session's executor on its input) and FLOAT forward are the session's kept
outputs when they describe the session as it is now (`kept_run_outputs`: every layer run, none stale;
`kept_float_outputs`: dropped by a float edit, another image or model), so explaining right after a Run
computes neither again; the results are the same bits either way.
"""
from __future__ import annotations

from typing import Any, Callable

from engine.darknet.detect import Detection
from engine.errors import EngineError
from engine.quant.explain import Explainer
from engine.quant.modes import Mode


def session_explainer(session) -> Explainer:
    """The Explainer of the session's run (mode, quantized model, FLOAT layers, image, thresholds).

    Raises:
        EngineError: the session runs FLOAT or has no quantized model."""
    if session.mode == Mode.FLOAT or session.qmodel is None:
        raise EngineError("explain compares an INT or HYBRID run with FLOAT: set_mode('int') (or 'hybrid') "
                          "with a quantized model first")
    return Explainer(session.model, session.qmodel, Mode(session.mode).value, session.pre, thresh=session.thresh,
                     nms=session.nms, float_layers=sorted(session.float_layers),
                     run_values=session.kept_run_outputs(), float_outputs=session.kept_float_outputs(compute=True))


def explain(session, detection=None, on_progress: Callable[[int, int], Any] | None = None):
    """`Session.explain` (see there)."""
    ex = session_explainer(session)
    if detection is None:
        return ex.explain_all(on_progress)
    matches = ex.diff().matches
    if isinstance(detection, Detection):
        found = [m for m in matches if m.det == detection]
        if not found:
            raise EngineError(f"explain: {detection.name} {detection.score:.2f} is not one of this image's "
                              f"{len(matches)} FLOAT detections (pass an index or a float_detections() item)")
        return ex.explain(found[0])
    k = int(detection)
    if not 0 <= k < len(matches):
        raise EngineError(f"explain: detection {k} does not exist; this image has FLOAT detections "
                          f"0..{len(matches) - 1}")
    done = [0]

    def step() -> None:
        done[0] += 1
        if on_progress is not None:
            on_progress(done[0], len(ex.candidates))
    return ex.explain(matches[k], step)
