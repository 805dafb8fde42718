"""Score quantized models against FLOAT on a fixed image set (FLOAT run once, reused by every score).

What benchmarks, `auto` and the mixed-precision search share: `Scorer(model, images)` preprocesses
the images and keeps FLOAT detections; `score(qmodel, mode, float_layers)` runs the quantized
network and returns its `Agreement` (COCO mAP@0.5, mAP@[.5:.95], lost and extra detections).
Both take `cancel` (engine.quant.progress): asked between images (between batches on ONNX Runtime), so a
Cancel need not wait for a whole run over the set; a cancelled run raises `Cancelled` and changes nothing.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from engine.quant.executor import Executor, FloatView
from engine.quant.fitness import Agreement, detection_agreement
from engine.quant.progress import CancelHook, stop_hook


def _as_input(item):
    return getattr(item, "image", item)          # a valset.Variant or any ImageLike


class Scorer:
    """`backend`: "numpy" | "onnxruntime" | "auto", where FLOAT and the scored runs execute
    (engine/export/ort_backend.py): with "onnxruntime" a run ORT cannot compute exactly (HYBRID, another
    profile, layers kept FLOAT between int8 layers) raises EngineError; "auto" runs those on NumPy."""

    def __init__(self, model, images: Sequence, resize: str = "letterbox", thresh: float = 0.25,
                 nms: float = 0.45, backend: str = "numpy", *, cancel: CancelHook = None) -> None:
        """Preprocess `images` and run FLOAT on them (`cancel` asked between images).

        Raises:
            ArgumentError: `cancel` is neither None, an event nor callable.
            Cancelled: `cancel` answered True before the last image started."""
        from engine.export.ort_backend import check_backend, forward_on
        stop = stop_hook(cancel)
        self.model, self.thresh, self.nms, self.backend = model, thresh, nms, check_backend(backend)
        self.inputs = [model.preprocess(_as_input(i), resize) for i in images]
        self.names = [getattr(i, "name", str(k)) for k, i in enumerate(images)]
        self.truth = self._detect(forward_on(backend, model, None, "float"), stop)

    def _detect(self, run, stop=None) -> list:
        from engine.export.ort_backend import detect_each     # ORT: in batches; NumPy: images side by side
        return detect_each(self.model, run, self.inputs, self.thresh, self.nms, stop)

    @property
    def n_truth(self) -> int:
        return sum(len(t) for t in self.truth)

    def detections(self, qmodel, mode: str = "int", float_layers: Iterable[int] | None = None, *,
                   cancel: CancelHook = None) -> list:
        """Each image's detections by `qmodel` in `mode` (`cancel` asked between images / ORT batches).

        Raises:
            ArgumentError: `cancel` is neither None, an event nor callable.
            Cancelled: `cancel` answered True before the last image started (nothing is changed)."""
        from engine.export.ort_backend import ORT, ort_forward, resolve
        stop = stop_hook(cancel)
        if float_layers is not None:
            float_layers = list(float_layers)
        if self.backend != "numpy" and resolve(self.backend, self.model, qmodel, mode, float_layers) == ORT:
            return self._detect(ort_forward(self.model, qmodel, mode, float_layers), stop)
        ex = Executor(self.model, qmodel, mode, float_layers)
        return self._detect(lambda x: FloatView(ex.run(x)[0]), stop)    # images side by side on the kernel threads

    def score(self, qmodel, mode: str = "int", float_layers: Iterable[int] | None = None, *,
              cancel: CancelHook = None) -> Agreement:
        """The agreement of `qmodel`'s detections with FLOAT's (`detections`; same `cancel` and Raises)."""
        return detection_agreement(self.truth, self.detections(qmodel, mode, float_layers, cancel=cancel))
