"""Device profiles: the integer arithmetic a deployment target runs, one module per profile.

    from engine.quant.profiles import get_profile, PROFILES
    get_profile("onnxruntime").rules["requantization"]

`qwidgets` (the default) is the engine's own rules; `onnxruntime` is bit-exact with ONNX Runtime's
CPU integer kernels on the graph `export --format onnx-int8` writes; `avx2_u8s8` is the same runtime
with signed 8-bit weights on an AVX2 CPU without VNNI (int16-saturating pair sums), `ort_reduce_range`
the same with 7-bit weights, as ONNX Runtime advises for such CPUs; `qwidgets_asym` the engine's own
rules with uint8 activations and zero points (leaky folded); `yolo2_light`
is that engine's INT path. docs/profiles.md has every rule and its source.
"""
from __future__ import annotations

from engine.errors import EngineError
from engine.quant.profiles.base import RULES, Profile
from engine.registry import Registry

PROFILES: Registry[Profile] = Registry("device profile")
DEFAULT = "qwidgets"


def get_profile(name: str | None) -> Profile:
    """The profile registered as `name` (None: the default). Raises EngineError naming the known ones."""
    try:
        return PROFILES.get(name or DEFAULT)
    except KeyError as err:
        raise EngineError(f"profile {name!r}: {err.args[0]}") from None


def _register() -> None:
    from engine.quant.profiles.avx2_u8s8 import Avx2U8S8Profile, OrtReduceRangeProfile
    from engine.quant.profiles.onnxruntime import OrtProfile
    from engine.quant.profiles.qwidgets import QwidgetsProfile
    from engine.quant.profiles.qwidgets_asym import QwidgetsAsymProfile
    from engine.quant.profiles.yolo2_light import Yolo2LightProfile
    for cls in (QwidgetsProfile, QwidgetsAsymProfile, OrtProfile, Avx2U8S8Profile, OrtReduceRangeProfile, Yolo2LightProfile):
        PROFILES.register(cls.name)(cls())


_register()
__all__ = ["PROFILES", "DEFAULT", "RULES", "Profile", "get_profile"]
