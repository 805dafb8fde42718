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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import WeightsError
from engine.darknet.image import Preprocessed

RECORD_FORMAT = "qwidgets-run-record/1"


def save_record(session, path: str | Path) -> Path:
    from engine.model import _text, atomic_savez
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
    arrays = {"format": _text(RECORD_FORMAT), "meta": _text(json.dumps(meta, default=float)), "input": session.pre.x}
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


def read_record(path: str | Path) -> RecordContents:
    """The contents of a run record. Raises WeightsError for a file that is not one."""
    from engine.model import model_from_arrays
    from engine.quant.qmodel import QuantizedModel
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise WeightsError(f"{p}: cannot read run record: {err}") from err
    if "format" not in arrays or bytes(arrays["format"]).decode() != RECORD_FORMAT:
        raise WeightsError(f"{p}: not a run record (expected format {RECORD_FORMAT})")
    meta = json.loads(bytes(arrays["meta"]).decode())
    model = model_from_arrays(arrays, str(p), prefix="model/")
    qarrays = {k[len("qmodel/"):]: v for k, v in arrays.items() if k.startswith("qmodel/")}
    qmodel = QuantizedModel.from_arrays(qarrays, str(p)) if qarrays else None
    pre = Preprocessed(arrays["input"], meta["image_w"], meta["image_h"], meta["resize"])
    png = arrays["image_png"].tobytes() if "image_png" in arrays else None
    return RecordContents(model, qmodel, pre, meta, png)
