"""Run records: a session's model, quantized model, mode, image, edits and results in one file.

A record stores the (customized) float model and quantized model, the network input tensor and
the original image (lossless PNG) with its file name, the mode and mixed-precision override, the
position reached, the edit history (descriptions; the undo journal is not kept), the per-layer
statistics and the detections. This module only writes and reads the file: `Session.open_record`
builds the Session from what `read_record` returns (its outputs are recomputed, the engine being
deterministic, and equal the saved statistics).
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.darknet.image import RESIZE_MODES, Preprocessed
from engine.errors import EngineError, RecordError
from engine.model import model_from_arrays
from engine.npzfile import SubReader
from engine.quant.qmodel import QuantizedModel

RECORD_FORMAT = "qwidgets-run-record/1"
MAX_SIDE = 65536                   # image sizes a record may claim (engine.darknet.image refuses more pixels)
MAX_IMAGE_BYTES = 64 << 20         # the embedded PNG


def save_record(session, path: str | Path) -> Path:
    from engine.model import atomic_savez
    from engine.npzfile import text_array
    stats = []
    for i in range(session.position + 1):
        s = session.summary(i).to_dict()
        s["precision"] = session.records[i].precision
        s["record"] = {k: v for k, v in session.records[i].stats.items() if isinstance(v, (int, float, str))}
        stats.append(s)
    meta = {"mode": session.mode, "float_layers": sorted(session.float_layers), "position": session.position,
            "resize": session.pre.resize, "image_w": session.pre.image_w, "image_h": session.pre.image_h,
            "thresh": session.thresh, "nms": session.nms, "edits": session.edits(), "stats": stats,
            "detections": [d.to_dict() for d in session.detections()] if session.done else None,
            "model_name": session.model.graph.name, "image_name": getattr(session, "image_name", None)}
    arrays = {"format": text_array(RECORD_FORMAT), "meta": text_array(json.dumps(meta, default=float)), "input": session.pre.x}
    if getattr(session, "image", None) is not None:
        buf = io.BytesIO()
        session.image.convert("RGB").save(buf, format="PNG")
        arrays["image_png"] = np.frombuffer(buf.getvalue(), np.uint8)
    arrays.update({f"model/{k}": v for k, v in session.model.to_arrays().items()})
    if session.qmodel is not None:
        arrays.update({f"qmodel/{k}": v for k, v in session.qmodel.to_arrays().items()})
    return atomic_savez(path, arrays)


@dataclass
class RecordContents:
    model: Any                   # engine.model.Model
    qmodel: Any                  # QuantizedModel or None
    pre: Preprocessed            # the network input and how it was made
    meta: dict                   # mode, float_layers, position, thresh, nms, edits, stats, detections, ...
    image_png: bytes | None      # the original image, lossless


def is_record(path: str | Path) -> bool:
    """Whether `path` is a run record file (its format member says so); False for anything unreadable."""
    from engine.npzfile import NpzReader
    try:
        with NpzReader(Path(path), str(path), error=RecordError, what="run record", kind="record") as z:
            return "format" in z and _text_or_none(z, "format") == RECORD_FORMAT
    except (OSError, EngineError):
        return False


def read_record(path: str | Path) -> RecordContents:
    """The contents of a run record, every value checked before use (see engine.npzfile for the
    member sizes). Raises RecordError (a WeightsError) naming the file for a truncated, empty,
    malformed or implausible record; never a raw zip / JSON / decoding error."""
    from engine.npzfile import NpzReader
    p = Path(path)
    label = str(p)
    with NpzReader(p, label, error=RecordError, what="run record", kind="record") as z:
        if "format" not in z or _text_or_none(z, "format") != RECORD_FORMAT:
            raise RecordError(f"{p}: not a run record (expected format {RECORD_FORMAT})")
        try:
            meta = json.loads(z.text("meta")) if "meta" in z else None
        except (ValueError, RecursionError) as err:   # RecursionError: '[[[[...' nested deep
            raise RecordError(f"{p}: run record meta is not JSON ({err})") from None
        try:
            model = model_from_arrays(z, label, prefix="model/")
            qkeys = [k for k in z.keys() if k.startswith("qmodel/")]
            qmodel = QuantizedModel.from_arrays(SubReader(z, "qmodel/"), label) if qkeys else None
        except RecordError:
            raise
        except EngineError as err:  # the embedded model or quantized model is damaged
            raise RecordError(str(err) if label in str(err) else f"{p}: {err}") from None
        meta = check_meta(meta, model, label)
        if "input" not in z:
            raise RecordError(f"{p}: run record lacks its input tensor")
        if z.shape("input") != tuple(model.input_shape) or z.dtype("input") != np.float32:
            raise RecordError(f"{p}: input is {z.dtype('input')} {z.shape('input')}; this model expects "
                              f"float32 {tuple(model.input_shape)}")
        x = z.read("input")
        if not np.isfinite(x).all():
            raise RecordError(f"{p}: input holds {int((~np.isfinite(x)).sum())} NaN/Inf values")
        png = None
        if "image_png" in z:
            if z.dtype("image_png") != np.uint8 or len(z.shape("image_png")) != 1:
                raise RecordError(f"{p}: image_png must be PNG bytes (a uint8 vector)")
            png = z.read("image_png", MAX_IMAGE_BYTES).tobytes()
    pre = Preprocessed(x, meta["image_w"], meta["image_h"], meta["resize"])
    return RecordContents(model, qmodel, pre, meta, png)


def _text_or_none(z, key: str) -> str | None:
    try:
        return z.text(key, 1024)
    except RecordError:
        return None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_meta(meta, model, label: str) -> dict:
    """The record's meta object with every field Session.open_record uses checked: type and range."""
    from engine.quant.modes import MODES
    if not isinstance(meta, dict):
        raise RecordError(f"{label}: run record meta must be a JSON object, got {type(meta).__name__}")
    n = len(model.layers)
    checks = {
        "mode": (lambda v: v in MODES, f"one of {', '.join(MODES)}"),
        "float_layers": (lambda v: isinstance(v, list) and all(_is_int(i) and 0 <= i < n for i in v),
                         f"a list of layer indices 0..{n - 1}"),
        "position": (lambda v: _is_int(v) and -1 <= v < n, f"a layer index -1..{n - 1}"),
        "resize": (lambda v: v in RESIZE_MODES, f"one of {', '.join(RESIZE_MODES)}"),
        "image_w": (lambda v: _is_int(v) and 1 <= v <= MAX_SIDE, f"an image width 1..{MAX_SIDE}"),
        "image_h": (lambda v: _is_int(v) and 1 <= v <= MAX_SIDE, f"an image height 1..{MAX_SIDE}"),
        "thresh": (lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]"),
        "nms": (lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]"),
        "edits": (lambda v: isinstance(v, list) and all(isinstance(e, str) for e in v), "a list of strings"),
        "stats": (lambda v: isinstance(v, list) and all(isinstance(e, dict) for e in v), "a list of objects"),
    }
    for key, (ok, expected) in checks.items():
        if key not in meta:
            raise RecordError(f"{label}: run record meta lacks '{key}'")
        if not ok(meta[key]):
            raise RecordError(f"{label}: run record meta '{key}' = {str(meta[key])[:60]!r}; expected {expected}")
    for key in ("image_name", "model_name"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise RecordError(f"{label}: run record meta '{key}' must be a string")
    if meta.get("detections") is not None and not isinstance(meta["detections"], list):
        raise RecordError(f"{label}: run record meta 'detections' must be a list")
    return meta
