"""Layer base class, the layer registry and the build context shared by every layer module.

A layer is built from its cfg section and the shapes of the layers before it. It knows its
Darknet semantics (shapes, parameter layout in `.weights`, MACs, float forward); which precision
runs it is session policy, not the layer's business.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from engine.darknet.cfg import Section
from engine.kernels.scratch import Scratch
from engine.errors import CfgError, UnsupportedError
from engine.registry import Registry

Shape = tuple[int, int, int]
Params = dict[str, np.ndarray]
MAX_ELEMENTS = 1 << 31  # a single activation bigger than this is a cfg mistake, not a model

LAYERS: Registry[type["Layer"]] = Registry("layer type")


def darknet_keys(names: str) -> frozenset[str]:
    """A `cfg_keys` trait from the keys' names, space-separated."""
    return frozenset(names.split())


# keys parse_network_cfg (pj and AlexeyAB) reads in every layer section, whatever its type
EVERY_SECTION_KEYS = darknet_keys(
    "burnin_update clip dont_update dontload dontloadscales dontsave learning_rate numload onlyforward "
    "show_receptive_field smooth stopbackward train_only_bn truth")


@dataclass
class BuildContext:
    """What a layer needs to know about the network while it is being built."""
    index: int
    section: Section
    net_shape: Shape
    shapes: list[Shape]        # out shapes of layers 0..index-1

    def previous(self) -> tuple[int, Shape]:
        """The default input: the previous layer's output, or the network input for layer 0."""
        if self.index == 0:
            return -1, self.net_shape
        return self.index - 1, self.shapes[self.index - 1]

    def resolve(self, key: str, ref: int) -> int:
        """Turn a relative (<0) or absolute layer reference into an absolute index before this layer."""
        target = self.index + ref if ref < 0 else ref
        if target < 0:
            raise self.section.error(f"{key}={ref}: points before layer 0 (this is layer {self.index})", key)
        if target >= self.index:
            raise self.section.error(
                f"{key}={ref}: refers to layer {target}, which is not before this layer {self.index} "
                "(references must point backwards)", key)
        return target

    def shape_of(self, index: int) -> Shape:
        return self.net_shape if index < 0 else self.shapes[index]


@dataclass(kw_only=True)
class Layer:
    """Common fields. Subclasses add their cfg keys as dataclass fields (Darknet spelling)."""
    kind: ClassVar[str] = "layer"
    # Kind traits: what the rest of the engine asks of a layer type (no lists of kinds elsewhere).
    is_head: ClassVar[bool] = False       # a detection head: its output is decoded into boxes
    float_only: ClassVar[bool] = False    # runs in float in every mode and is never calibrated
    int8_weights: ClassVar[bool] = False  # its weights have an int8 form in a quantized model
    shape_only: ClassVar[bool] = False    # selects or moves input values (no arithmetic): an int8
    #                                       output keeps its input's scale
    is_loss: ClassVar[bool] = False       # training only: never chosen as the network output
    keeps_scale: ClassVar[bool] = False   # INT runs it on its input's codes and grid, so calibration gives the
    #                                       two one scale (engine/calib/views.py)
    passes_sign: ClassVar[bool] = False   # its outputs are its inputs' values (selected, moved, concatenated):
    #                                       one-sided inputs give a one-sided output (engine/calib/collect.py)
    commutes_channel_scale: ClassVar[bool] = False   # f(s * x) = s * f(x) for a positive per-channel s, channels
    #                                       in place: cross-layer equalization moves scales through it
    # the keys Darknet's parser.c reads in this section besides EVERY_SECTION_KEYS (training options too);
    # any other key is ignored by Darknet with 'Unused field', and warned about here (engine.darknet.cfg_keys)
    cfg_keys: ClassVar[frozenset[str]] = frozenset()
    index: int
    inputs: tuple[int, ...]                  # producer layer indices; -1 is the network input
    in_shapes: tuple[Shape, ...]
    out_shape: Shape
    line: int = 0
    source: str = field(default="", repr=False)

    @classmethod
    def build(cls, ctx: BuildContext) -> "Layer":
        raise NotImplementedError

    def where(self) -> str:
        return f"{self.source}:{self.line} [{self.kind}] (layer {self.index})"

    def attrs(self) -> dict[str, Any]:
        """cfg keys with defaults filled in (for info tables and the graph view)."""
        skip = {"index", "inputs", "in_shapes", "out_shape", "line", "source"}
        return {k: v for k, v in self.__dict__.items() if k not in skip and not k.startswith("_")}

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Parameter arrays in `.weights` file order."""
        return []

    @property
    def num_params(self) -> int:
        return int(sum(np.prod(s) for _, s in self.param_shapes()))

    @property
    def macs(self) -> int:
        return 0

    def prepare(self, params: Params) -> Any:
        """Kernel-ready form of the params (e.g. BN folded into GEMM weights); cached by the model."""
        return None

    def forward_float(self, xs: list[np.ndarray], prep: Any, scratch: Scratch) -> np.ndarray:
        raise NotImplementedError

    # A layer and the next one can run as one pass (Model.forward fuses them, engine.kernels.tails):
    @property
    def is_tail(self) -> bool:
        """Whether this layer's float forward can run as a tail on the pieces of its first input,
        elementwise or on disjoint blocks, in the work items of the kernel that writes them."""
        return False

    def tail(self, others: list[np.ndarray]) -> Any:
        """The `engine.kernels.tails.Tail` that computes this layer (is_tail) into a new output array;
        `others`: its inputs after the first."""
        raise NotImplementedError

    def forward_float_tail(self, xs: list[np.ndarray], prep: Any, scratch: Scratch, tail: Any) -> np.ndarray | None:
        """forward_float(...) that also runs the next layer's `tail` on each piece of its output, or
        None if this layer cannot; the pair has the very bits of the two layers run one after the other."""
        return None


def check_shape(sec: Section, shape: tuple[int, ...], what: str = "output") -> Shape:
    """Refuse empty or absurdly large shapes with the layer's location."""
    c, h, w = (int(v) for v in shape)
    if c < 1 or h < 1 or w < 1:
        raise sec.error(f"gives an empty {what} shape {c}x{h}x{w} (C x H x W); check size/stride/padding "
                        "against the input")
    if c * h * w > MAX_ELEMENTS:
        raise sec.error(f"{what} shape {c}x{h}x{w} has {c * h * w} values, more than the limit {MAX_ELEMENTS}")
    return (c, h, w)


def single_input(cls: type[Layer], ctx: BuildContext, **fields) -> Layer:
    """A layer reading the previous layer's output, with its own `out_shape` (default: the same shape)."""
    src, shape = ctx.previous()
    out = fields.pop("out_shape", shape)
    return cls(index=ctx.index, inputs=(src,), in_shapes=(shape,), out_shape=out, line=ctx.section.line,
               source=ctx.section.path, **fields)


def refuse(sec: Section, key: str, default: str) -> None:
    """Raise UnsupportedError if `key` is set to anything but its inert default."""
    if sec.has(key) and sec.raw(key) != default:
        raise UnsupportedError(f"{sec.where(key)} {key}={sec.raw(key)} is valid Darknet but not "
                               f"supported by this engine (only {key}={default})")


__all__ = ["LAYERS", "Layer", "BuildContext", "Scratch", "Shape", "Params", "check_shape", "single_input", "refuse", "CfgError",
           "EVERY_SECTION_KEYS", "darknet_keys"]
