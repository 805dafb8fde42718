"""`auto`: per tensor, the calibrator whose threshold causes the least error downstream.

A threshold that is best for a tensor's own histogram (least local MSE, least KL) is not always
best for the detections: the error it causes is amplified or absorbed by the layers after it.
`auto` measures that directly. Starting from `minmax` everywhere, it visits the scale groups
(tensors sharing one scale, engine/calib/views.py) in network order and, for each, tries every
candidate method's threshold with the rest of the network as chosen so far; it keeps the one with
the least error at the detection heads' inputs (sum over heads of |INT - FLOAT|^2 / |FLOAT|^2,
INT mode, on a few calibration images). One sweep, coordinate-descent style; the choice per
tensor is stored in the quantized model's meta["auto"]. The search runs the int8 network, so it
lives in engine/quant/autoquant.py; this module only declares the method and its settings.
"""
from __future__ import annotations

from engine.calib.base import CALIBRATORS, Calibrator, int_setting, make
from engine.calib.histogram import AbsHistogram
from engine.errors import ArgumentError, EngineError

CANDIDATES = ("minmax", "percentile", "mse", "kl")


@CALIBRATORS.register("auto")
class AutoCalibrator(Calibrator):
    name = "auto"
    needs_images = True           # engine.quant.autoquant.quantize(..., images=...) runs the choice

    def __init__(self, candidates: str = ",".join(CANDIDATES), probe_images: int = 2, **settings) -> None:
        names = [c.strip() for c in str(candidates).split(",") if c.strip()]
        bad = [c for c in names if c not in CALIBRATORS or c == "auto"]
        if bad or not names:
            raise ArgumentError(f"auto candidates {bad or names}: expected calibration methods other than auto")
        probe_images = int_setting("auto", "probe_images", probe_images, 1, 1_000_000)
        super().__init__(**({"candidates": ",".join(names)} if names != list(CANDIDATES) else {}),
                         **({"probe_images": probe_images} if probe_images != 2 else {}), **settings)
        self.candidates, self.probe_images = names, probe_images

    def weight_rounding(self, reads_image: bool) -> str:
        # the weights are the first candidate's (autoquant quantizes with it, then only moves activation scales)
        return make(self.candidates[0]).weight_rounding(reads_image)

    def threshold(self, h: AbsHistogram) -> float:
        raise EngineError("method 'auto' chooses per tensor by running the model: call "
                          "engine.quant.autoquant.quantize(model, stats, 'auto', images=...) (the CLI passes the "
                          "calibration images)")
