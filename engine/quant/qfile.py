"""Validation of a quantized model file's arrays before anything uses them.

A quantized model file comes from disk, a workspace upload or a run record: it may be truncated,
hand-edited or made for another cfg. Every field is checked against its type and against the cfg
text the file carries (layer kinds and weight shapes), so a bad file is refused with one
WeightsError naming the file and the field, instead of a KeyError / AttributeError deep inside a
forward pass, or NaN scales that quietly turn every output into garbage.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from engine.errors import EngineError, WeightsError

META_TYPES: dict[str, type | tuple[type, ...]] = {
    "method": str, "settings": dict, "per_channel": bool, "scales": dict, "thresholds": dict,
    "model_name": str, "fingerprint": str, "float_layers": list, "in_scales": dict, "schemes": dict}


def _positive(value: Any, zero_ok: bool = False) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and (value >= 0 if zero_ok else value > 0))


def read_meta(z: dict, label: str) -> dict:
    """The meta JSON object with every required key of the right type. Raises WeightsError."""
    try:
        meta = json.loads(bytes(z["meta"]).decode("utf-8"))
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as err:
        raise WeightsError(f"{label}: quantized model meta is missing or not JSON ({err})") from None
    if not isinstance(meta, dict):
        raise WeightsError(f"{label}: quantized model meta must be a JSON object, got {type(meta).__name__}")
    for key, kind in META_TYPES.items():
        if key not in meta:
            raise WeightsError(f"{label}: quantized model meta lacks '{key}'")
        if not isinstance(meta[key], kind):
            raise WeightsError(f"{label}: quantized model meta '{key}' must be {getattr(kind, '__name__', kind)}, "
                               f"got {type(meta[key]).__name__}")
    for key in ("scales", "thresholds", "in_scales"):
        zero_ok = key == "thresholds"          # an all-zero tensor calibrates to threshold 0
        bad = [k for k, v in meta[key].items() if not _positive(v, zero_ok)]
        if bad:
            raise WeightsError(f"{label}: {key} of {', '.join(bad[:5])} must be finite and "
                               f"{'>= 0' if zero_ok else '> 0'}, got {meta[key][bad[0]]!r}")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in meta["float_layers"]):
        raise WeightsError(f"{label}: float_layers must be layer indices, got {meta['float_layers']!r}")
    _check_profile(meta, label)
    return meta


def _check_profile(meta: dict, label: str) -> None:
    """The optional device-profile fields (absent in files written before profiles: 'qwidgets')."""
    from engine.quant.profiles import PROFILES
    profile = meta.get("profile", "qwidgets")
    if not isinstance(profile, str) or profile not in PROFILES:
        raise WeightsError(f"{label}: quantized model meta 'profile' is {profile!r}; known profiles: "
                           f"{', '.join(PROFILES.names())}")
    lo, hi = (0, 255) if PROFILES.get(profile).asymmetric else (0, 0)
    for key in ("zero_points", "pre_zero_points"):
        zps = meta.get(key, {})
        if not isinstance(zps, dict):
            raise WeightsError(f"{label}: quantized model meta '{key}' must be dict, got {type(zps).__name__}")
        bad = [k for k, v in zps.items() if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi)]
        if bad:
            raise WeightsError(f"{label}: {key} of {', '.join(bad[:5])} must be integers in [{lo}, {hi}] for "
                               f"profile '{profile}', got {zps[bad[0]]!r}")
    pre = meta.get("pre_scales", {})
    if not isinstance(pre, dict) or not all(_positive(v) for v in pre.values()):
        raise WeightsError(f"{label}: quantized model meta 'pre_scales' must map layers to finite scales > 0")


def check_layers(z: dict, meta: dict, cfg_text: str, label: str) -> None:
    """int8 weights / int32 biases / scales of every quantized layer against the file's own cfg."""
    from engine.darknet.cfg import parse_cfg
    from engine.darknet.build import build_layers
    try:
        layers = build_layers(parse_cfg(cfg_text, f"{label} (embedded cfg)"))
    except EngineError as err:
        raise WeightsError(f"{label}: the embedded cfg does not build: {err}") from None
    expected_ids = {"input"} | {str(layer.index) for layer in layers}
    for key in ("scales", "zero_points", "pre_scales", "pre_zero_points"):
        unknown = sorted(set(meta.get(key, {})) - expected_ids, key=str)
        if unknown:
            raise WeightsError(f"{label}: {key} name tensors the cfg does not have: {', '.join(unknown[:5])}")
    from engine.quant.profiles import PROFILES
    if PROFILES.get(meta.get("profile", "qwidgets")).asymmetric:
        need = [str(layer.index) for layer in layers if layer.kind == "convolutional" and layer.activation == "leaky"
                and str(layer.index) in meta["scales"]]
        lacking = [i for i in need if i not in meta.get("pre_scales", {}) or i not in meta.get("pre_zero_points", {})]
        if lacking:
            raise WeightsError(f"{label}: profile '{meta['profile']}' needs the pre-activation grid (pre_scales, "
                               f"pre_zero_points) of leaky conv layers {', '.join(lacking[:5])}")
    for key, scheme in meta["schemes"].items():
        if key not in meta["in_scales"] or not isinstance(scheme, str):
            raise WeightsError(f"{label}: schemes/in_scales disagree at layer {key!r}")
    for key in meta["in_scales"]:
        if not key.isdigit() or int(key) >= len(layers):
            raise WeightsError(f"{label}: quantized layer {key!r} is not a layer of the cfg (0..{len(layers) - 1})")
        layer = layers[int(key)]
        where = f"{label}: layer {key} [{layer.kind}]"
        if not layer.int8_weights:
            raise WeightsError(f"{where} has no weights to quantize")
        arrays = {}
        for name in ("w_q", "w_scale", "b_q"):
            if f"layer{key}/{name}" not in z:
                raise WeightsError(f"{where}: array {name} is missing")
            arrays[name] = np.asarray(z[f"layer{key}/{name}"])
        w_q, w_scale, b_q = arrays["w_q"], arrays["w_scale"], arrays["b_q"]
        shape = dict(layer.param_shapes())["weights"]
        if w_q.dtype != np.int8 or tuple(w_q.shape) != tuple(shape):
            raise WeightsError(f"{where}: w_q must be int8 of shape {tuple(shape)}, got {w_q.dtype} {tuple(w_q.shape)}")
        if w_q.size and int(w_q.min()) < -127:
            raise WeightsError(f"{where}: w_q holds -128; symmetric int8 weights are in [-127, 127]")
        n = shape[0]
        if b_q.dtype != np.int32 or b_q.shape != (n,):
            raise WeightsError(f"{where}: b_q must be int32 of shape ({n},), got {b_q.dtype} {tuple(b_q.shape)}")
        if w_scale.dtype.kind != "f" or w_scale.ndim != 1 or w_scale.size not in (1, n):
            raise WeightsError(f"{where}: w_scale must be 1 or {n} floats, got {w_scale.dtype} {tuple(w_scale.shape)}")
        if not (np.isfinite(w_scale).all() and (w_scale > 0).all()):
            raise WeightsError(f"{where}: w_scale must be finite and > 0")
