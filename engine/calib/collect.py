"""One calibration pass: FLOAT forward over images, a histogram of |x| per tensor.

Tensors are the network input ("input") and every layer output that a quantized path can
quantize (heads such as [yolo] stay float); leaky / relu outputs also get a histogram of their
positive side (key "<id>+"), what the one-sided rule of engine/calib/views.py reads. Statistics merge exactly, so batches can be
collected anywhere (in-process or on Dask workers) and added up.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from engine.calib.histogram import AbsHistogram
from engine.errors import EngineError
from engine.kernels.threads import own_threads, parallel_items
from engine.darknet.image import ImageLike

ONE_SIDED_ACTIVATIONS = ("leaky", "relu", "relu6")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class CalibrationStats:
    hists: dict[str, AbsHistogram] = field(default_factory=dict)
    images: int = 0

    def merge(self, other: "CalibrationStats") -> "CalibrationStats":
        keys = self.hists.keys() | other.hists.keys()
        empty = AbsHistogram()
        return CalibrationStats({k: self.hists.get(k, empty).merge(other.hists.get(k, empty)) for k in keys},
                                self.images + other.images)

    def to_arrays(self, prefix: str = "calib") -> dict[str, np.ndarray]:
        out = {f"{prefix}/images": np.array([self.images], np.int64)}
        for k, h in self.hists.items():
            for name, arr in h.to_arrays().items():
                out[f"{prefix}/{k}/{name}"] = arr
        return out

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "calib") -> "CalibrationStats":
        keys = {k.split("/")[1] for k in arrays if k.startswith(prefix + "/") and k.count("/") == 2}
        hists = {k: AbsHistogram.from_arrays(arrays[f"{prefix}/{k}/counts"], arrays[f"{prefix}/{k}/meta"])
                 for k in keys}
        images = np.asarray(arrays[f"{prefix}/images"])
        if images.shape != (1,) or images.dtype.kind not in "iu" or int(images[0]) < 0:
            raise ValueError(f"images must be one count >= 0, got {images!r}")
        return cls(hists, int(images[0]))


def quantizable_ids(model) -> list[str]:
    return ["input"] + [str(l.index) for l in model.layers if not l.float_only]


def positive_key(nid: str) -> str:
    """Key of a tensor's positive-side histogram (values > 0 only) in CalibrationStats."""
    return nid + "+"


def one_sided_ids(model) -> set[str]:
    """Tensors whose negatives are small by construction: leaky / relu outputs and the layers that
    only move or select them. Their positive side is histogrammed too (engine/calib/views.py)."""
    out: set[str] = set()
    for layer in model.layers:
        if layer.int8_weights:
            if getattr(layer, "activation", None) in ONE_SIDED_ACTIVATIONS:
                out.add(str(layer.index))
        elif layer.passes_sign and layer.inputs and all(s >= 0 and str(s) in out for s in layer.inputs):
            out.add(str(layer.index))
    return out


def observe(model, x: np.ndarray, stats: CalibrationStats, outs: Sequence[np.ndarray] | None = None) -> None:
    """Add one input tensor's activations to `stats` (runs the FLOAT forward unless outs are given)."""
    from engine.kernels.threads import own_threads, parallel_items
    outs = model.forward(x) if outs is None else outs
    sided = one_sided_ids(model)
    ids = quantizable_ids(model)
    for nid in ids:                      # created here, filled by the workers: one tensor per work item
        stats.hists.setdefault(nid, AbsHistogram())
        if nid in sided:
            stats.hists.setdefault(positive_key(nid), AbsHistogram())
    tensors = [x if nid == "input" else outs[int(nid)] for nid in ids]
    order = sorted(range(len(ids)), key=lambda k: -tensors[k].size)     # largest first: balanced threads

    def one(_part: int, k: int) -> None:
        nid, y = ids[order[k]], tensors[order[k]]
        if nid in sided:
            stats.hists[nid].observe_with_positive(stats.hists[positive_key(nid)], y)
        else:
            stats.hists[nid].observe(y)

    with own_threads():                  # each histogram filled by one thread: same counts in any order
        parallel_items(len(ids), one)
    stats.images += 1


def image_list(source: str | Path | Iterable[ImageLike], what: str = "calibration") -> list[ImageLike]:
    """A folder (its images, sorted), one image file, or a list of images / paths (a folder in the list
    stands for its images). `what` names the set in errors (calibration, validation, evaluation images)."""
    if isinstance(source, (list, tuple)) and len(source) == 1 and isinstance(source[0], (str, Path)):
        source = source[0]  # the CLI's nargs="+" with one folder
    if isinstance(source, (list, tuple)) and any(isinstance(s, (str, Path)) and Path(s).is_dir() for s in source):
        # folders (each its images, sorted) and image files, in the order given: `--images DIR a.jpg`
        return [f for s in source for f in
                (image_list(s, what) if isinstance(s, (str, Path)) and Path(s).is_dir() else [s])]
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise EngineError(f"{p}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            return files
        if p.is_file():
            return [p]
        raise EngineError(f"{p}: no such {what} image or folder")
    items = list(source)
    if not items:
        raise EngineError(f"{what} needs at least one image")
    return items


def network_input(model, item: ImageLike, resize: str = "letterbox") -> np.ndarray:
    """The (C, H, W) float32 network input of one item of an image list: an array of the model's input
    shape is one already; anything else (a path, a PIL image, an (H, W, 3) photo array) is preprocessed.
    Every FLOAT pass over an image list (calibration, the refinements', method auto's probes) reads items
    this one way."""
    if isinstance(item, np.ndarray) and item.shape == model.input_shape:
        return item
    return model.preprocess(item, resize).x


def collect(model, images, resize: str = "letterbox", progress: bool = True,
            on_image: Callable[[int, int], object] | None = None, keep=None,
            forward: Callable[[np.ndarray], Sequence[np.ndarray]] | None = None) -> CalibrationStats:
    """Calibration statistics of `model` over images (folder, file or list), with a progress bar.

    `on_image(done, total)` is called after each image (for widgets' progress bars). `keep`: an
    engine.calib.floats.FloatOutputs that keeps the FLOAT inputs the refinements read. `forward`:
    what computes `model`'s FLOAT outputs of an input (default model.forward; a cross-layer-equalized
    twin's are its source's rescaled, engine/quant/refine/equalize.py `derived_forward`).
    """
    forward = model.forward if forward is None else forward
    items = image_list(images)
    stats = CalibrationStats()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(items), desc="calibrating", unit="img")
    try:
        for item in items:
            x = network_input(model, item, resize)
            outs = forward(x)
            observe(model, x, stats, outs)
            if keep is not None:
                keep.add(x, outs)
            if bar is not None:
                bar.update(1)
            if on_image is not None:
                on_image(stats.images, len(items))
    finally:
        if bar is not None:
            bar.close()
    return stats
