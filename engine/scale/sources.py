"""What a worker loads, and loads once per process: models (from a `ModelSource`) and quantized models.

Workers never receive the 35 MB model: they get a `ModelSource` (zoo name, engine `.npz`, or
cfg + `.weights`) and load it once per process (`load_source`, an LRU keyed by each file's `file_stamp`).
A quantized model travels as a reference (`resolve_qmodel`): its file path, or its arrays
broadcast once by the backend and rebuilt once per content token.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.scale.filestamp import file_stamp


@dataclass(frozen=True)
class ModelSource:
    """What a worker loads: a zoo name, an engine `.npz`, or a cfg (+ `weights`).

    `size=(width, height)` overrides the cfg's input size (the same weights at another
    resolution, multiples of 32 for YOLO). `fingerprint` (sha256 of the float params, as in
    QuantizedModel) is checked once per worker when given, so an edited model is never replaced
    by a stale file silently.
    """
    path: str
    weights: str | None = None
    size: tuple[int, int] | None = None
    fingerprint: str | None = None

    def stamp(self) -> tuple:
        files = [p for p in (self.path, self.weights) if p and Path(p).exists()]
        return tuple(file_stamp(p) for p in files)


def as_source(src: Any, size: tuple[int, int] | None = None) -> "ModelSource | Any":
    """A ModelSource from a zoo name / path / (cfg, weights) / ModelSource; a Model passes through."""
    if isinstance(src, ModelSource):
        return replace(src, size=size) if size else src
    if isinstance(src, (str, Path)):
        return ModelSource(str(src), None, size)
    if isinstance(src, tuple) and len(src) == 2:
        return ModelSource(str(src[0]), str(src[1]), size)
    if hasattr(src, "forward") and hasattr(src, "cfg"):
        return src
    raise TypeError(f"model source {type(src).__name__}: expected a zoo name, a path, (cfg, weights), "
                    "a ModelSource or a Model")


def source_of(model) -> ModelSource:
    """The files a worker can load `model` from (raises ValueError if it has none, e.g. random weights)."""
    cfg, weights = model.cfg.file, model.source
    if weights and Path(weights).is_file() and cfg and Path(cfg).is_file():
        src = ModelSource(cfg, None if weights == cfg else weights)
    elif weights and Path(weights).is_file():
        src = ModelSource(weights)
    else:
        raise ValueError(f"model {model.graph.name!r} (source {weights!r}) has no file a worker can load; "
                         "save it first (model.save('m.npz')) and pass the path")
    c, h, w = model.input_shape
    from engine.quant.qmodel import fingerprint
    return replace(src, size=(w, h), fingerprint=fingerprint(model))


@lru_cache(maxsize=2)
def _load_cached(src: ModelSource, stamp: tuple):
    from engine.darknet.cfg import parse_cfg, read_cfg, with_input_size
    from engine.darknet.build import build_layers
    from engine.model import Model, is_model_file, load
    from engine.darknet.weights import read_weights
    path = Path(src.path)
    if not path.exists() and src.weights is None:
        from engine.zoo import fetch
        cfg_path, weights = fetch(src.path, download=False)
        src, path = replace(src, path=str(cfg_path), weights=str(weights)), cfg_path
    if src.size is None or is_model_file(path):
        model = load(path, weights=src.weights)
        if src.size is not None:        # as engine.load(model_file, size=...) runs it in the client (--size)
            model = model.resized(*src.size)
    else:
        cfg = parse_cfg(with_input_size(read_cfg(path).text, *src.size), str(path))
        layers = build_layers(cfg)
        header, params = read_weights(src.weights, layers)
        model = Model(cfg, layers, params, header, source=str(src.weights))
    if src.fingerprint is not None:
        from engine.quant.qmodel import fingerprint
        if fingerprint(model) != src.fingerprint:
            raise ValueError(f"{src.path}: the file's parameters differ from the client's model "
                             "(edited in memory?); save the edited model and pass that file")
    return model


def load_source(src: Any):
    """The Model for a source, loaded once per process (LRU of 2, keyed by the files' `file_stamp`)."""
    src = as_source(src)
    if not isinstance(src, ModelSource):
        return src
    return _load_cached(src, src.stamp())


@dataclass(frozen=True)
class Payload:
    """One shared object as one task argument and result (Dask would look inside a dict or list for futures)."""
    obj: Any


def unwrap(x: Any) -> Any:
    return x.obj if isinstance(x, Payload) else x


def held(payload: Payload) -> Payload:
    """The task whose result is a shared object (DaskBackend.share): the scheduler can run it again."""
    return payload


def token(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()


@lru_cache(maxsize=4)
def _qmodel_from_file(path: str, stamp: tuple):
    from engine.quant.qmodel import QuantizedModel
    return QuantizedModel.load(path)


_QCACHE: dict[tuple, Any] = {}


def worker_cached(key: tuple, make: Callable[[], Any], keep: int = 8) -> Any:
    """make(), kept per process under `key` (the `keep` most recent): a worker rebuilds a shared
    object once, not once per task."""
    if key not in _QCACHE:
        while len(_QCACHE) >= keep:
            _QCACHE.pop(next(iter(_QCACHE)))
        _QCACHE[key] = make()
    return _QCACHE[key]


def resolve_qmodel(ref: Any):
    """The QuantizedModel a reference stands for: ("path", p), or a path itself, is loaded once per process
    (until the file changes: `file_stamp`), ("arrays", token, arrays) is rebuilt once per token; objects pass
    through. (References are tuples because Dask replaces futures inside tuples, not inside other objects.)"""
    if isinstance(ref, (str, Path)):
        ref = ("path", str(ref))
    if not isinstance(ref, tuple):
        return ref
    if ref[0] == "path":
        return _qmodel_from_file(ref[1], file_stamp(ref[1]))
    from engine.quant.qmodel import QuantizedModel
    return worker_cached(("qmodel", ref[1]), lambda: QuantizedModel.from_arrays(unwrap(ref[2])))
