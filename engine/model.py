"""A loaded Darknet model: graph + layers + float parameters, FLOAT forward, model files.

`load(path, weights=None)` accepts a cfg (+ `.weights`) or an engine model file (`.npz`, no pickle).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engine.atomic import atomic_savez  # noqa: F401  (the one writer; re-exported for callers)
from engine.darknet.cfg import Cfg, names_from_bytes, parse_cfg, read_cfg
from engine.errors import CfgError, EngineError, WeightsError
from engine.darknet.build import build_at_size, build_graph, build_layers
from engine.graph import Graph
from engine.npzfile import text_array
from engine.darknet.image import ImageLike, Preprocessed, preprocess
from engine.layers import Layer, Scratch
from engine.layers.activations import activate
from engine.layers.base import Params
from engine.kernels.scratch import mine, thread_scratch
from engine.kernels.threads import in_part
from engine.darknet.weights import WeightsHeader, random_params, read_weights, split_params, write_weights

MODEL_FORMAT = "qwidgets-engine-model/1"
DATA_DIR = Path(__file__).parent / "data"


class Model:
    """A Darknet network in NumPy. `forward(x)` returns every layer's output (index = layer)."""

    def __init__(self, cfg: Cfg, layers: list[Layer], params: list[Params], header: WeightsHeader | None = None,
                 *, name: str | None = None, names: Sequence[str] | None = None, source: str = "") -> None:
        self.cfg = cfg
        self.layers = layers
        self.params = params
        self.header = header or WeightsHeader()
        self.source = source
        self.graph: Graph = build_graph(name or Path(cfg.path).stem, self.input_shape, layers)
        self.class_names = list(names) if names is not None else default_names(self.num_classes)
        self.scratch = Scratch()
        self._prepared: dict[int, Any] = {}

    # ----------------------------------------------------------------- structure
    @property
    def input_shape(self) -> tuple[int, int, int]:
        net = self.cfg.net
        return (net.get_int("channels", 3), net.get_int("height"), net.get_int("width"))

    @property
    def num_classes(self) -> int:
        heads = [l for l in self.layers if l.is_head]
        return getattr(heads[0], "classes", 0) if heads else self.layers[-1].out_shape[0]

    def layer(self, key: int | str) -> Layer:
        return self.layers[self.graph.node(key).index]

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        c, h, w = self.input_shape
        n = len(self.layers)    # quant.progress.counted's rule, spelled here: quant sits above model in the diagram
        return (f"<Model {self.graph.name}: {n} layer{'' if n == 1 else 's'}, input {c}x{h}x{w}, "
                f"{self.graph.total_params:,} params, {self.graph.total_macs / 1e9:.2f} GMACs>")

    # ----------------------------------------------------------------- params
    def prepared(self, index: int) -> Any:
        """Kernel-ready params of a layer (BN folded), cached until the params change."""
        if index not in self._prepared:
            self._prepared[index] = self.layers[index].prepare(self.params[index])
        return self._prepared[index]

    def set_param(self, index: int, name: str, value: np.ndarray) -> None:
        """Replace one parameter array (same shape, finite) and drop the cached kernel form."""
        if not isinstance(index, (int, np.integer)) or not 0 <= index < len(self.layers):
            raise KeyError(f"layer {index} does not exist; this model has layers 0..{len(self.layers) - 1}")
        layer = self.layers[index]
        old = self.params[index].get(name)
        if old is None:
            raise KeyError(f"layer {index} [{layer.kind}] has no parameter {name!r}; "
                           f"it has {', '.join(self.params[index]) or 'none'}")
        raw = np.asarray(value)
        if raw.dtype.kind not in "biuf":
            raise ValueError(f"layer {index} [{layer.kind}] {name}: expected real numbers, got dtype {raw.dtype}")
        value = raw.astype(np.float32)
        if value.shape != old.shape:
            raise ValueError(f"layer {index} [{layer.kind}] {name}: shape {value.shape} given, {old.shape} expected")
        if not np.isfinite(value).all():
            raise ValueError(f"layer {index} [{layer.kind}] {name}: values must be finite (NaN/Inf given)")
        self.replace_param(index, name, value.copy())

    def replace_param(self, index: int, name: str, value: np.ndarray) -> None:
        """Swap in an array this model held or set_param validated (undo / redo restore snapshots):
        no copy, no check; the cached kernel form of the layer is dropped."""
        self.params[index] = {**self.params[index], name: value}
        self._prepared.pop(index, None)

    def resized(self, width: int, height: int) -> "Model":
        """The same weights at another input size (a new Model; arrays shared). Raises WeightsError
        when a layer's parameters depend on the size ([connected] after convolutions)."""
        if self.input_shape[1:] == (height, width):
            return self
        cfg, layers = build_at_size(self.cfg, width, height, self.layers)
        for layer, params in zip(layers, self.params):
            for name, shape in layer.param_shapes():
                if params[name].shape != tuple(shape):
                    raise WeightsError(f"{layer.where()}: {name} must be {tuple(shape)} at {width}x{height} but the "
                                       f"model holds {params[name].shape}; a model with [{layer.kind}] layers runs "
                                       "at its own input size only")
        return Model(cfg, layers, self.params, self.header, name=self.graph.name, names=self.class_names,
                     source=self.source)

    def shallow_copy(self) -> "Model":
        """A copy whose parameter edits (`set_param`) never reach this model; arrays are shared until
        replaced (set_param swaps in new arrays, never writes into old ones)."""
        twin = Model(self.cfg, self.layers, list(self.params), self.header, name=self.graph.name,
                     names=self.class_names, source=self.source)
        twin._prepared = dict(self._prepared)
        return twin

    def copy(self) -> "Model":
        """An independent copy (params copied), e.g. to edit without touching the original."""
        params = [{k: v.copy() for k, v in p.items()} for p in self.params]
        return Model(self.cfg, self.layers, params, self.header, name=self.graph.name, names=self.class_names,
                     source=self.source)

    # ----------------------------------------------------------------- inference
    def check_input(self, x: np.ndarray, batch: bool = False) -> np.ndarray:
        """A read-only float32 view of one input (C, H, W) (or, with `batch`, also (N, C, H, W));
        ValueError otherwise."""
        x = np.asarray(x)
        batched = batch and x.ndim == 4 and x.shape[1:] == self.input_shape and x.shape[0] > 0
        if x.shape != self.input_shape and not batched:
            c, h, w = self.input_shape
            also = f" or a batch (N, {c}, {h}, {w}) with N >= 1" if batch else ""
            raise ValueError(f"input tensor has shape {x.shape}; this model expects ({c}, {h}, {w}) float32 "
                             f"(C, H, W){also}")
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise ValueError("input tensor contains NaN/Inf")
        x = x.view()
        x.flags.writeable = False  # a read-only view: layers may alias it, the caller's array stays untouched
        return x

    def work_buffers(self) -> Scratch:
        """The model's buffers; this thread's own in a part of a parallel job or another thread (`mine`)."""
        return thread_scratch() if in_part() else mine(self.scratch)

    def run_layer(self, index: int, xs: list[np.ndarray]) -> np.ndarray:
        """Run one layer in float on its inputs; the result is marked read-only."""
        y = self.layers[index].forward_float(xs, self.prepared(index), self.work_buffers())
        y.flags.writeable = False  # later layers and viewers must never modify a kept output
        return y

    def run_layer_batch(self, index: int, xs: list[np.ndarray]) -> np.ndarray:
        """Run one layer on batched inputs (N, C, H, W each): output (N, C', H', W'), read-only.

        Image k of the result equals run_layer on image k bit for bit: a layer with a
        `forward_float_batch` (channel-wise layers: the batch is more channels) runs the batch at
        once; any other runs image by image with the very kernels and GEMM shapes of a single
        forward (BLAS sums a wider GEMM in another order, so batching convs into one GEMM would
        change bits).
        """
        layer, prep = self.layers[index], self.prepared(index)
        batch = getattr(layer, "forward_float_batch", None)
        if batch is not None:
            y = batch(xs, prep, self.work_buffers())
        else:
            n = xs[0].shape[0]
            scratch = self.work_buffers()
            first = layer.forward_float([x[0] for x in xs], prep, scratch)
            y = np.empty((n,) + first.shape, first.dtype)
            y[0] = first
            for k in range(1, n):
                y[k] = layer.forward_float([x[k] for x in xs], prep, scratch)
        y.flags.writeable = False
        return y

    def inputs_of(self, index: int, x: np.ndarray, outs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [x if i < 0 else outs[i] for i in self.layers[index].inputs]

    def forward(self, x: np.ndarray, stop: int | None = None) -> list[np.ndarray]:
        """FLOAT forward; returns outputs of layers 0..stop (default all).

        x: one (3, H, W) float32 tensor (outputs (C, H, W)), or a batch (N, 3, H, W) (outputs
        (N, C, H, W), image k bit-identical to a forward of image k alone).
        """
        if stop is not None and not (isinstance(stop, (int, np.integer)) and 0 <= stop < len(self.layers)):
            raise ValueError(f"stop={stop}: expected a layer index 0..{len(self.layers) - 1}")
        x = self.check_input(x, batch=True)
        last = len(self.layers) - 1 if stop is None else stop
        if x.ndim == 4 and x.shape[0] > 1:
            return self._forward_images(x, last)
        run = self.run_layer_batch if x.ndim == 4 else self.run_layer
        pairs = self.tail_pairs() if x.ndim == 3 else ()
        outs: list[np.ndarray] = []
        for i in range(last + 1):
            if i - 1 in pairs and len(outs) == i + 1:   # computed by layer i - 1's kernel
                continue
            y = None
            if i in pairs and i < last:
                nxt = self.layers[i + 1]
                tail = nxt.tail([outs[j] for j in nxt.inputs[1:]])
                y = self.layers[i].forward_float_tail(self.inputs_of(i, x, outs), self.prepared(i),
                                                      self.work_buffers(), tail)
            outs.extend([y, tail.out] if y is not None else [run(i, self.inputs_of(i, x, outs))])
            for y in outs[i:]:
                y.flags.writeable = False
        return outs

    def tail_pairs(self) -> frozenset[int]:
        """Layers whose next layer runs as a tail of their kernel (`Layer.is_tail`: a [shortcut] adding
        an earlier output to theirs): one pass, one hand-off to the kernel threads instead of two."""
        if "_tail_pairs" not in self.__dict__:
            ls = self.layers
            self._tail_pairs = frozenset(i for i in range(len(ls) - 1) if ls[i + 1].is_tail and
                                         ls[i + 1].inputs[0] == i and i not in ls[i + 1].inputs[1:])
        return self._tail_pairs

    def _forward_images(self, xb: np.ndarray, last: int) -> list[np.ndarray]:
        """A batch as whole single-image forwards, one image per kernel thread at a time.

        Each image runs every layer in its thread with BLAS and the kernels single-threaded (the
        very GEMMs and passes of a single forward: bit-identical by construction), so the threads
        never wait on each other inside a layer; each layer's output goes straight into the batch's
        (N, C, H, W) array, whose image-k view the later layers read.
        """
        from engine.kernels.threads import own_threads, parallel_items
        n = xb.shape[0]
        for i in range(last + 1):
            self.prepared(i)                  # prepared once, before the threads share them
        outs = [np.empty((n,) + tuple(self.layers[i].out_shape), np.float32) for i in range(last + 1)]
        scratches = (self.__dict__.setdefault("_part_scratch", {0: self.scratch})  # kept: no page faults per call
                     if mine(self.scratch) is self.scratch else {0: thread_scratch()})  # another thread's: its own
        nested = in_part()                    # a batch inside a part of another job: its images run here, inline

        def image(part: int, k: int) -> None:
            scratch = self.work_buffers() if nested else scratches.setdefault(part, Scratch())
            mine: list[np.ndarray] = []
            for i in range(last + 1):
                xs = [xb[k] if j < 0 else mine[j] for j in self.layers[i].inputs]
                y = self.layers[i].forward_float(xs, self._prepared[i], scratch)
                outs[i][k] = y
                mine.append(outs[i][k])

        with own_threads():
            parallel_items(n, image)
        for y in outs:
            y.flags.writeable = False
        return outs

    def preprocess(self, image: ImageLike, resize: str = "letterbox") -> Preprocessed:
        _, h, w = self.input_shape
        return preprocess(image, w, h, resize)

    def detect(self, image: ImageLike, thresh: float = 0.25, nms: float = 0.45, resize: str = "letterbox"):
        """Preprocess, FLOAT forward, decode, NMS: a list of Detection in original-image pixels."""
        from engine.darknet.detect import detect_outputs
        pre = self.preprocess(image, resize)
        return detect_outputs(self, self.forward(pre.x), pre, thresh, nms)

    # ----------------------------------------------------------------- files
    def save(self, path: str | Path, *, exclusive: bool = False) -> Path:
        """Write the engine model file (.npz: cfg text, graph JSON, header, params; loads without pickle).
        `exclusive`: never replace an existing file (FileError instead), even one created meanwhile."""
        return atomic_savez(path, self.to_arrays(), exclusive=exclusive)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The model file's arrays (also embedded in run records)."""
        arrays: dict[str, np.ndarray] = {
            "format": text_array(MODEL_FORMAT), "cfg": text_array(self.cfg.text),
            "graph": text_array(json.dumps(self.graph.to_dict())),
            "meta": text_array(json.dumps({"name": self.graph.name, "class_names": self.class_names,
                                           "cfg_path": self.cfg.path, "source": self.source})),
            "header": np.array([self.header.major, self.header.minor, self.header.revision, self.header.seen],
                               np.uint64),
        }
        for layer, p in zip(self.layers, self.params):
            for name, arr in p.items():
                arrays[f"layer{layer.index}/{name}"] = np.asarray(arr, np.float32)
        return arrays

    def save_weights(self, path: str | Path, *, exclusive: bool = False) -> None:
        write_weights(path, self.layers, self.params, self.header, exclusive=exclusive)


def default_names(classes: int) -> list[str]:
    """COCO names for 80 classes, VOC for 20, else class_<k>."""
    for fname, n in (("coco.names", 80), ("voc.names", 20)):
        if classes == n:
            return (DATA_DIR / fname).read_text().splitlines()[:n]
    return [f"class_{k}" for k in range(classes)]


def read_names(path: str | Path) -> list[str]:
    from engine.npzfile import open_regular   # a FIFO must not hang, /dev/zero must not fill memory
    try:
        with open_regular(path) as f:
            data = f.read((16 << 20) + 1)
    except OSError as err:      # its strerror: str(err) repeats the path after "[Errno 2]"
        raise EngineError(f"{path}: cannot read class names: {err.strerror or err}") from err
    if len(data) > 16 << 20:
        raise EngineError(f"{path}: cannot read class names: more than 16 MiB; expected one name per line")
    return names_from_bytes(data, str(path))


def is_model_file(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def load_model_file(path: str | Path) -> Model:
    """An engine model file, read member by member with every size checked before reading (see
    engine.npzfile). Raises WeightsError (or CfgError for its embedded cfg) naming the file."""
    from engine.npzfile import NpzReader
    with NpzReader(path, str(path), what="engine model file", kind="model") as z:
        return model_from_arrays(z, str(path))


def model_from_arrays(z, label: str, prefix: str = "") -> Model:
    """A Model from model-file arrays: an NpzReader or a mapping, keys optionally under `prefix`
    (as inside run records). Shapes and dtypes are checked against the embedded cfg before an
    array is read, so a forged multi-GB member costs nothing."""
    from engine.npzfile import as_reader
    r = as_reader(z, label, what="engine model file", prefix=prefix)
    p = Path(label)
    for key in ("format", "cfg", "header"):
        if key not in r:
            raise WeightsError(f"{p}: not an engine model file (missing '{key}'; expected {MODEL_FORMAT})")
    fmt = r.text("format", 1024)
    if fmt != MODEL_FORMAT:
        raise WeightsError(f"{p}: format {fmt!r}, expected {MODEL_FORMAT!r}")
    try:
        meta = json.loads(r.text("meta")) if "meta" in r else {}
    except (ValueError, RecursionError) as err:   # RecursionError: '[[[[...' nested 100,000 deep
        raise WeightsError(f"{p}: cannot read engine model file: 'meta' is not JSON ({err})") from None
    if not isinstance(meta, dict):
        raise WeightsError(f"{p}: 'meta' must be a JSON object, got {type(meta).__name__}")
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise WeightsError(f"{p}: meta 'class_names' must be a list of strings")
    cfg_path = meta.get("cfg_path", p.name)
    cfg = parse_cfg(r.text("cfg"), cfg_path if isinstance(cfg_path, str) else p.name)
    layers = build_layers(cfg)
    if r.dtype("header").kind not in "iu" or math.prod(r.shape("header")) != 4:
        raise WeightsError(f"{p}: 'header' holds {r.dtype('header')} {r.shape('header')}; expected 4 "
                           "integers (major, minor, revision, seen)")
    h = [int(v) for v in r.read("header").ravel()]
    params: list[Params] = []
    for layer in layers:
        lp: Params = {}
        for name, shape in layer.param_shapes():
            key = f"layer{layer.index}/{name}"
            if key not in r:
                raise WeightsError(f"{p}: missing array {key} for layer {layer.index} [{layer.kind}]")
            if r.shape(key) != tuple(shape) or r.dtype(key) != np.float32:
                raise WeightsError(f"{p}: {key} is {r.dtype(key)}{r.shape(key)}, expected float32{tuple(shape)}")
            lp[name] = r.read(key)
        params.append(lp)
    from engine.darknet.weights import check_finite
    check_finite(params, layers, p.name)
    name = meta.get("name")
    return Model(cfg, layers, params, WeightsHeader(*h), name=name if isinstance(name, str) else None,
                 names=names, source=str(p))


def load(path: str | Path, weights: str | Path | None = None, *, names: str | Path | Sequence[str] | None = None,
         random_weights: bool | int = False, size: int | str | Sequence[int] | None = None) -> Model:
    """Load a model: a cfg with `weights=` (or `random_weights=seed`), or an engine model file.

    `size`: run at another input size than the cfg's [net] width/height: 320, "320x256" (width x
    height) or (320, 256); the weights are the same (Darknet's `-width -height`).
    Raises: CfgError / WeightsError naming the file and what was expected; ArgumentError for a bad size.
    """
    if size is not None:
        from engine.darknet.cfg import parse_size
        width, height = parse_size(size)
        return load(path, weights, names=names, random_weights=random_weights).resized(width, height)
    p = Path(path)
    if not p.exists():
        raise CfgError(f"{p}: no such model file")
    if not (p.is_file() or p.is_dir()):   # opening a FIFO would block forever, /dev/zero never ends
        raise CfgError(f"{p}: cannot read cfg: not a regular file (a FIFO, socket or device); expected a "
                       ".cfg or an engine model file")
    if isinstance(names, (str, Path)):      # a names file: read, then its count checked against the classes
        from engine.darknet.detect import checked_names
        return checked_names(load(p, weights, names=read_names(names), random_weights=random_weights), names)
    if is_model_file(p):
        if weights is not None:
            raise ValueError(f"{p} is an engine model file (it contains its weights); do not pass weights=")
        model = load_model_file(p)
        if names is not None:
            model.class_names = list(names)
        return model
    cfg = read_cfg(p)
    layers = build_layers(cfg)
    if weights is not None:
        header, params = read_weights(weights, layers)
        source = str(weights)
    elif random_weights is not False:
        model = Model(cfg, layers, random_params(layers, int(random_weights)), names=names,
                      source=f"random(seed={int(random_weights)})")
        normalise_random(model, seed=int(random_weights))
        return model
    else:
        raise ValueError(f"{p} is a cfg: pass weights= (a .weights file) or random_weights=SEED")
    return Model(cfg, layers, params, header, names=names, source=source)


def normalise_random(model: Model, seed: int = 0) -> None:
    """Rescale random parameters layer by layer so every conv/connected pre-activation has unit std
    on a random input (LSUV). Without it, random weights on deep residual nets (yolov3: 23 shortcuts)
    overflow to Inf/NaN, which tests nothing useful."""
    x = model.check_input(np.random.default_rng(seed).random(model.input_shape, dtype=np.float32))
    outs: list[np.ndarray] = []
    for i, layer in enumerate(model.layers):
        xs = model.inputs_of(i, x, outs)
        if not hasattr(layer, "linear_float"):
            outs.append(model.run_layer(i, xs))
            continue
        pre = layer.linear_float(xs[0], model.prepared(i), model.scratch)
        std = float(np.std(pre))
        gain = np.float32(1.0 / std) if std > 0 and np.isfinite(std) else np.float32(1.0)
        p = model.params[i]
        # scaling (scales, biases) with BN, or (weights, biases) without, scales the whole
        # pre-activation by `gain`, so the new output is activation(pre * gain): no second conv
        for name in (("scales", "biases") if "scales" in p else ("weights", "biases")):
            model.set_param(i, name, p[name] * gain)
        y = activate(pre * gain, layer.activation)
        y.flags.writeable = False
        outs.append(y)


def from_cfg_text(text: str, params_flat: np.ndarray | None = None, name: str = "<cfg>") -> Model:
    """Build a model from cfg text and an optional flat float32 parameter vector (tests, fuzzing)."""
    cfg = parse_cfg(text, name)
    layers = build_layers(cfg)
    params = random_params(layers) if params_flat is None else split_params(
        np.asarray(params_flat, np.float32), layers, WeightsHeader(), name)
    return Model(cfg, layers, params)
