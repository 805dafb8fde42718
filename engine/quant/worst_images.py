"""Which images of a set an INT / HYBRID model gets most wrong: per-image agreement with FLOAT.

`rank_images(model, qmodel, mode, images)`: for every image, FLOAT and the quantized run's detections,
COCO mAP@0.5 and mAP@[.5:.95] of the run against FLOAT (FLOAT as ground truth, engine/quant/metrics.py),
and the lost / shifted / extra counts of `match_detections`; sorted worst first (lowest mAP@0.5, then
mAP@[.5:.95], then most lost).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from engine.darknet.detect import require_head
from engine.quant.explain import match_detections
from engine.quant.fitness import detection_agreement


@dataclass
class ImageAgreement:
    index: int                 # position in the given image list
    name: str
    map50: float
    map50_95: float
    n_float: int
    lost: int
    shifted: int
    extra: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def image_name(image, k: int) -> str:
    """A file's name, a PIL image's file name, else 'image k'."""
    if isinstance(image, (str, Path)):
        return Path(image).name
    name = getattr(image, "filename", None)
    return Path(name).name if name else f"image {k}"


def rank_images(model, qmodel, mode: str, images: Sequence, *, float_layers: Sequence[int] = (),
                resize: str = "letterbox", thresh: float = 0.25, nms: float = 0.45,
                on_progress: Callable[[int, int], Any] | None = None, backend: str = "numpy") -> list[ImageAgreement]:
    """Per-image agreement of the quantized run with FLOAT, worst first (see the module doc).
    on_progress(done, total) after each image (it may raise to cancel). backend: "numpy" |
    "onnxruntime" | "auto", where FLOAT and the quantized run execute (engine/export/ort_backend.py;
    EngineError when ORT cannot run `mode` with "onnxruntime"). Over many images on Dask:
    engine.scale.worst.rank_images (the same rows)."""
    return worst_first(image_agreements(model, qmodel, mode, images, float_layers=float_layers, resize=resize,
                                        thresh=thresh, nms=nms, on_progress=on_progress, backend=backend))


def worst_first(rows: Sequence[ImageAgreement]) -> list[ImageAgreement]:
    """Lowest mAP@0.5 first, then mAP@[.5:.95], then most lost, then the image's position."""
    return sorted(rows, key=lambda r: (r.map50, r.map50_95, -r.lost, r.index))


def image_agreements(model, qmodel, mode: str, images: Sequence, *, float_layers: Sequence[int] = (),
                     resize: str = "letterbox", thresh: float = 0.25, nms: float = 0.45,
                     on_progress: Callable[[int, int], Any] | None = None,
                     backend: str = "numpy") -> list[ImageAgreement]:
    """`rank_images`' rows in the images' order (a batch of a larger set: `index` counts from 0 here)."""
    require_head(model, "rank_images")     # else every image agrees "perfectly": no detections on either side
    from engine.export.ort_backend import detect_each, feed_size, forward_on
    run_float = forward_on(backend, model, None, "float")
    run = forward_on(backend, model, qmodel, mode, float_layers)
    rows = []
    size = feed_size(run_float, run)              # ORT runs images in batches, NumPy one at a time
    for start in range(0, len(images), size):
        pres = [model.preprocess(image, resize) for image in images[start:start + size]]
        fs = detect_each(model, run_float, pres, thresh, nms)
        for k, (f, d) in enumerate(zip(fs, detect_each(model, run, pres, thresh, nms)), start):
            a = detection_agreement([f], [d])
            c = match_detections(f, d).counts()
            rows.append(ImageAgreement(k, image_name(images[k], k), float(a.map50), float(a.map50_95), len(f),
                                       c["lost"], c["shifted"], c["extra"]))
            if on_progress is not None:
                on_progress(k + 1, len(images))
    return rows
