"""Score quantized models against FLOAT on a fixed image set (FLOAT run once, reused by every score).

What benchmarks, `auto` and the mixed-precision search share: `Scorer(model, images)` preprocesses
the images and keeps FLOAT detections; `score(qmodel, mode, float_layers)` runs the quantized
network and returns its `Agreement` (COCO mAP@0.5, mAP@[.5:.95], lost and extra detections).
"""
from __future__ import annotations

from typing import Iterable, Sequence

from engine.quant.executor import Executor, FloatView
from engine.quant.fitness import Agreement, detection_agreement


def _as_input(item):
    return getattr(item, "image", item)          # a valset.Variant or any ImageLike


class Scorer:
    """`backend`: "numpy" | "onnxruntime" | "auto", where FLOAT and the scored runs execute
    (engine/export/ort_backend.py): with "onnxruntime" a run ORT cannot compute exactly (HYBRID, another
    profile, layers kept FLOAT between int8 layers) raises EngineError; "auto" runs those on NumPy."""

    def __init__(self, model, images: Sequence, resize: str = "letterbox", thresh: float = 0.25,
                 nms: float = 0.45, backend: str = "numpy") -> None:
        from engine.export.ort_backend import check_backend, forward_on
        self.model, self.thresh, self.nms, self.backend = model, thresh, nms, check_backend(backend)
        self.inputs = [model.preprocess(_as_input(i), resize) for i in images]
        self.names = [getattr(i, "name", str(k)) for k, i in enumerate(images)]
        self.truth = self._detect(forward_on(backend, model, None, "float"))

    def _detect(self, run) -> list:
        from engine.export.ort_backend import detect_each     # ORT: in batches; NumPy: images side by side
        return detect_each(self.model, run, self.inputs, self.thresh, self.nms)

    @property
    def n_truth(self) -> int:
        return sum(len(t) for t in self.truth)

    def detections(self, qmodel, mode: str = "int", float_layers: Iterable[int] | None = None) -> list:
        from engine.export.ort_backend import ORT, ort_forward, resolve
        if float_layers is not None:
            float_layers = list(float_layers)
        if self.backend != "numpy" and resolve(self.backend, self.model, qmodel, mode, float_layers) == ORT:
            return self._detect(ort_forward(self.model, qmodel, mode, float_layers))
        ex = Executor(self.model, qmodel, mode, float_layers)
        from engine.export.ort_backend import detect_each     # images side by side on the kernel threads
        return detect_each(self.model, lambda x: FloatView(ex.run(x)[0]), self.inputs, self.thresh, self.nms)

    def score(self, qmodel, mode: str = "int", float_layers: Iterable[int] | None = None) -> Agreement:
        return detection_agreement(self.truth, self.detections(qmodel, mode, float_layers))
