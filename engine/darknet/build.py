"""cfg -> layers -> graph: build every layer of a parsed cfg with up-front memory and compute guards.

The guards refuse a model before anything is allocated, naming the layer where an estimate
crosses its limit; `build_graph` turns the layers into the Node/Graph structure views show.
"""
from __future__ import annotations

import math

from engine.darknet.cfg import Cfg
from engine.darknet.cfg_keys import warn_unknown_keys
from engine.errors import CfgError
from engine.graph import Graph, Node, node_id
from engine.layers import LAYERS, BuildContext, Layer


# Up-front memory guard: a model whose float32 activations (all kept by `Model.forward`) + twice
# its parameters (raw + the cached BN-folded copy) + largest conv/maxpool workspace exceed this is refused
# at build time, before anything is allocated (yolov4 at 608: ~1.3 GiB, vgg-16: ~1.2 GiB).
MAX_MODEL_BYTES = 8 << 30


# Up-front compute guard: more multiply-adds (conv/connected) + comparisons (maxpool windows) than
# this would keep a kernel busy for many minutes per forward (yolov4 at 608: 6.4e10; at 1280: 2.8e11).
MAX_MODEL_OPS = 2 * 10 ** 12


def layer_bytes(layer: Layer) -> tuple[int, int, int]:
    """(activation, parameter, workspace) float32 bytes of one layer, in exact Python ints.

    The workspace is the conv im2col matrix or the maxpool padded input.
    """
    act = 4 * math.prod(layer.out_shape)
    par = 4 * sum(math.prod(s) for _, s in layer.param_shapes())
    work = 0
    if layer.kind == "convolutional":        # the im2col matrix
        c, _, h, w = layer.in_shapes[0][0], *layer.out_shape
        work = 4 * (c // layer.groups) * layer.size * layer.size * h * w
    elif layer.kind == "maxpool":             # the padded input
        work = 4 * layer.out_shape[0] * math.prod(_pool_padded(layer))
    return act, par, work


def layer_ops(layer: Layer) -> int:
    """Multiply-adds of conv/connected layers, window comparisons of maxpool (separable: rows, then
    columns); other layers are linear in their output size."""
    if layer.kind == "maxpool":
        c, ho, wo = layer.out_shape
        return c * ho * (_pool_padded(layer)[1] + wo) * layer.size
    return max(layer.macs, math.prod(layer.out_shape))


def _pool_padded(layer: Layer) -> tuple[int, int]:
    (_, h, w), (_, ho, wo) = layer.in_shapes[0], layer.out_shape
    k, s, top = layer.size, layer.stride, layer.padding // 2
    return max((ho - 1) * s + k, top + h), max((wo - 1) * s + k, top + w)


def build_layers(cfg: Cfg, max_bytes: int = MAX_MODEL_BYTES, max_ops: int = MAX_MODEL_OPS) -> list[Layer]:
    """Build every layer of a parsed cfg, computing shapes; errors name file:line [section].

    Raises: CfgError for a malformed cfg, or for a model whose estimated float32 memory
    (activations + 2 x parameters + the largest conv/maxpool workspace) exceeds `max_bytes`, or whose
    operations per forward pass exceed `max_ops`, naming the layer where an estimate crosses its limit.
    Warns (EngineWarning) about each key Darknet does not read in its section, as Darknet's parser does, once
    per cfg read from a file (`cfg.warn_unused_keys`) and before any refusal (a typo'd key is often its cause).
    """
    warn_unused_keys_once(cfg)
    net = cfg.net
    shape = (net.get_int("channels", 3, lo=1, hi=4096), net.get_int("height", lo=1, hi=1 << 16),
             net.get_int("width", lo=1, hi=1 << 16))
    total = 4 * math.prod(shape)
    if total > max_bytes:
        raise CfgError(f"{net.where()} input {shape[0]}x{shape[1]}x{shape[2]} (C x H x W) needs "
                       f"{_gib(total)} as float32, more than the limit {_gib(max_bytes)}")
    layers: list[Layer] = []
    shapes: list[tuple[int, int, int]] = []
    work = ops = 0
    for i, sec in enumerate(cfg.layers):
        if sec.name not in LAYERS:
            raise CfgError(f"{sec.where()} unknown section [{sec.name}]; known: {', '.join(sorted(LAYERS.names()))}")
        layer = LAYERS.get(sec.name).build(BuildContext(i, sec, shape, shapes))
        act, par, w = layer_bytes(layer)
        total += act + 2 * par
        work = max(work, w)
        if total + work > max_bytes:
            raise CfgError(f"{sec.where()} the model would need about {_gib(total + work)} of float32 memory "
                           f"up to this layer, more than the limit {_gib(max_bytes)} (this layer: output "
                           f"{'x'.join(map(str, layer.out_shape))} = {_gib(act)}, parameters {_gib(par)}, "
                           f"workspace {_gib(w)}); check width/height/filters/size")
        ops += layer_ops(layer)
        if ops > max_ops:
            raise CfgError(f"{sec.where()} the model would need about {ops:.3g} multiply-adds/comparisons per "
                           f"forward pass up to this layer, more than the limit {max_ops:.3g} (this layer: "
                           f"{layer_ops(layer):.3g}); check width/height/filters/size")
        layers.append(layer)
        shapes.append(layer.out_shape)
    _check_heads_agree(cfg, layers)
    return layers


def warn_unused_keys_once(cfg: Cfg) -> None:
    """The warnings of `engine.darknet.cfg_keys.warn_unknown_keys` for a cfg read from a file, the first time its
    layers (or a resized copy's, whose lines may have moved) are built; nothing for any other cfg."""
    if cfg.warn_unused_keys:
        cfg.warn_unused_keys = False
        warn_unknown_keys(cfg, stacklevel=4)        # the caller of build_layers / build_at_size


def build_at_size(cfg: Cfg, width: int, height: int, layers: list[Layer] | None = None) -> tuple[Cfg, list[Layer]]:
    """`cfg` at input width x height (`--size`, `size=`) and its layers. `layers`: cfg's own, if built.

    Raises: the CfgError of build_layers, prefixed with the size (the user chose it, not the cfg line the
    error names) and, when the size is no multiple of the factor by which the model's convolutions and
    maxpools divide their input (32 for yolov3-tiny: --size 300 fails at a [route]), the sizes that are.
    """
    warn_unused_keys_once(cfg)          # `info --size` builds only the resized copy
    resized = cfg.resized(width, height)
    try:
        return resized, build_layers(resized)
    except CfgError as err:
        hint = size_hint(cfg, layers if layers is not None else build_layers(cfg), width, height)
        raise type(err)(f"input size {width}x{height}: {err}{hint}") from None


def size_hint(cfg: Cfg, layers: list[Layer], width: int, height: int) -> str:
    """'; ... multiples of S (e.g. ...)' when width or height is no multiple of S, the largest factor by which
    a convolution or maxpool of `layers` (built from `cfg`) divides the input width; else ""."""
    w0 = cfg.net.get_int("width")
    factors = [w0 // l.out_shape[2] for l in layers if l.kind in ("convolutional", "maxpool")
               and len(l.out_shape) == 3 and l.out_shape[2] > 1 and w0 % l.out_shape[2] == 0]
    step = max(factors, default=1)
    if step == 1 or (width % step == 0 and height % step == 0):
        return ""
    near = sorted({max(step, v // step * step) for v in (width, height)} | {-(-v // step) * step for v in (width, height)})
    return (f"; this model divides its input by {step}: give a width and height that are multiples of {step} "
            f"(e.g. {' or '.join(map(str, near[:4]))})")


def _check_heads_agree(cfg: Cfg, layers: list[Layer]) -> None:
    """Detection heads are decoded into one (boxes, classes) table: their class counts must agree."""
    heads = [l for l in layers if l.is_head]
    for h in heads[1:]:
        if h.classes != heads[0].classes:
            raise CfgError(f"{cfg.layers[h.index].where('classes')} classes={h.classes}, but the first "
                           f"detection head (layer {heads[0].index}) has classes={heads[0].classes}; "
                           "all heads of a model must have the same number of classes")


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.3g} GiB" if n < (1 << 60) else f"{float(n):.3g} bytes"


def build_graph(name: str, input_shape: tuple[int, int, int], layers: list[Layer]) -> Graph:
    nodes = [Node(id=node_id(l.index), index=l.index, kind=l.kind, inputs=tuple(node_id(i) for i in l.inputs),
                  in_shapes=tuple(l.in_shapes), out_shape=l.out_shape, attrs=l.attrs(), params=l.num_params,
                  macs=l.macs, line=l.line) for l in layers]
    return Graph(name, input_shape, nodes, heads=tuple(node_id(l.index) for l in layers if l.is_head),
                 losses=tuple(node_id(l.index) for l in layers if l.is_loss))
