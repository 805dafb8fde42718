"""The FLOAT inputs of every int8 layer, kept from the calibration pass for the refinements.

Bias correction and the EQ threshold search (engine/quant/refine) compare each conv's int8 output
with FLOAT on the calibration images. The statistics pass has already computed those FLOAT
inputs: keeping them (about 36 MB per 416x416 image on yolov3-tiny) spares a second FLOAT pass.
Past `max_bytes` no more images are kept and `complete` turns False: bias correction then runs
FLOAT again over all images (its result does not depend on the cap); EQ uses the kept ones (ncnn
also searches on at most 50 images).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

MAX_BYTES = 1 << 30


def weight_input_ids(model) -> list[int]:
    """Producers (-1 = the image) of the layers with int8 weights and those layers themselves: the
    tensors refinements read (inputs to quantize, outputs to compare with)."""
    ws = [layer for layer in model.layers if layer.int8_weights]
    return sorted({layer.inputs[0] for layer in ws} | {layer.index for layer in ws})


class FloatOutputs:
    """Per kept image, {producer id (-1 = the image): FLOAT output} for the inputs of int8-weight layers."""

    def __init__(self, model, max_bytes: int = MAX_BYTES) -> None:
        self.ids = weight_input_ids(model)
        self.max_bytes = max_bytes
        self.images: list[dict[int, np.ndarray]] = []
        self.nbytes = 0
        self.complete = True

    def add(self, x: np.ndarray, outs: Sequence[np.ndarray]) -> None:
        kept = {i: (x if i < 0 else outs[i]) for i in self.ids}
        size = sum(a.nbytes for a in kept.values())
        if self.nbytes + size > self.max_bytes:
            self.complete = False
            return
        self.images.append(kept)      # the forward's own arrays: no copy (the pass does not reuse them)
        self.nbytes += size

    def inputs(self, producer: int) -> list[np.ndarray]:
        return [img[producer] for img in self.images]

    def __len__(self) -> int:
        return len(self.images)


def float_outputs(model, images, resize: str = "letterbox", max_images: int | None = None,
                  forward=None) -> FloatOutputs:
    """A FLOAT pass over `images` (folder, file or list) keeping what the refinements read; for callers
    that did not keep the calibration pass's outputs. `forward`: as in engine.calib.collect.collect."""
    from engine.calib.collect import image_list, network_input
    forward = model.forward if forward is None else forward
    keep = FloatOutputs(model)
    items = image_list(images)
    for item in items[:max_images]:
        x = network_input(model, item, resize)
        keep.add(x, forward(x))
    keep.complete = keep.complete and (max_images is None or len(items) <= max_images)
    return keep
