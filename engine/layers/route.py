"""Darknet [route]: channel concatenation of earlier outputs, optionally one channel group of each.

AB's `groups`/`group_id` take channels [group_id*C/g, (group_id+1)*C/g) of every input
(yolov4-tiny: the second half); pj ignores these keys, which gives wrong shapes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from engine.kernels.threads import own_threads, parallel_for
from engine.layers.base import LAYERS, BuildContext, Layer, Scratch, check_shape, darknet_keys


def route_slices(in_shapes, groups: int, group_id: int) -> list[slice]:
    return [slice(group_id * (c // groups), (group_id + 1) * (c // groups)) for c, _, _ in in_shapes]


def concat_channels(parts: list[np.ndarray]) -> np.ndarray:
    """np.concatenate(parts, axis=0) of (C_i, H, W) arrays, copied by ranges of output channels on
    the kernel threads (yolov3-tiny's 384x26x26 route was a serial copy between two parallel convs)."""
    starts = np.cumsum([0] + [p.shape[0] for p in parts])
    y = np.empty((int(starts[-1]),) + parts[0].shape[1:], np.result_type(*parts))

    def run(lo: int, hi: int) -> None:
        for p, a, b in zip(parts, starts[:-1], starts[1:]):
            if a < hi and b > lo:
                y[max(lo, a):min(hi, b)] = p[max(lo, a) - a:min(hi, b) - a]

    with own_threads():
        parallel_for(y.shape[0], run, y.size)
    return y


def joined_count(shapes: Sequence[tuple[int, ...]]) -> int:
    """How many of a layer's inputs (their shapes, in order) its joined input holds: all of them when
    they are (C, H, W) tensors of one H, W (what a route concatenates along C), else the first alone
    (one input; or, say, a shortcut from another spatial size: its inputs cannot be one tensor)."""
    if len(shapes) > 1 and all(len(s) == 3 and tuple(s[1:]) == tuple(shapes[0][1:]) for s in shapes):
        return len(shapes)
    return 1


def joined_shape(shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """The shape of the joined input of tensors of these shapes (see `joined_count`)."""
    n = joined_count(shapes)
    return tuple(shapes[0]) if n == 1 else (sum(int(s[0]) for s in shapes), *shapes[0][1:])


def join_inputs(xs: Sequence[np.ndarray]) -> np.ndarray:
    """A layer's inputs as one tensor (what panels show as "the input"): the single one, or several
    concatenated along C as a route does (`concat_channels`) when `joined_count` says they join, else
    the first. The whole inputs, whatever a route's `groups` then takes of them."""
    if joined_count([x.shape for x in xs]) == 1:
        return xs[0]
    return concat_channels(list(xs))


@LAYERS.register("route")
@dataclass(kw_only=True)
class Route(Layer):
    kind = "route"
    passes_sign = True
    cfg_keys = darknet_keys("group_id groups layers stream wait_stream")
    layers: tuple[int, ...]     # absolute indices
    groups: int
    group_id: int

    @classmethod
    def build(cls, ctx: BuildContext) -> "Route":
        sec = ctx.section
        refs = sec.get_int_list("layers")
        if not refs:
            raise sec.error("layers= is empty; expected one or more layer references", "layers")
        srcs = tuple(ctx.resolve("layers", r) for r in refs)
        groups = sec.get_int("groups", 1, lo=1)
        group_id = sec.get_int("group_id", 0, lo=0, hi=groups - 1)
        shapes = tuple(ctx.shape_of(i) for i in srcs)
        h, w = shapes[0][1:]
        for i, s in zip(srcs, shapes):
            if s[1:] != (h, w):
                raise sec.error(f"layers={sec.raw('layers')}: layer {i} is {s[1]}x{s[2]} but layer {srcs[0]} is "
                                f"{h}x{w}; routed outputs must have the same spatial size", "layers")
            if s[0] % groups:
                raise sec.error(f"groups={groups} does not divide the {s[0]} channels of layer {i}", "groups")
        out = check_shape(sec, (sum(s[0] // groups for s in shapes), h, w))
        return cls(index=ctx.index, inputs=srcs, in_shapes=shapes, out_shape=out, line=sec.line, source=sec.path,
                   layers=srcs, groups=groups, group_id=group_id)

    def forward_float(self, xs: list[np.ndarray], prep: None, scratch: Scratch) -> np.ndarray:
        parts = [x[s] for x, s in zip(xs, route_slices(self.in_shapes, self.groups, self.group_id))]
        if len(parts) == 1 and self.groups == 1:
            return parts[0]  # outputs are read-only, so aliasing the input is safe
        return concat_channels(parts)
