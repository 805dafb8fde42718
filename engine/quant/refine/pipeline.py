"""The refinements that run after calibration, in one order for every caller: `quantize --refine`,
`compare --refine` and `Session.compare_methods(refine=...)`.

GPTQ rounds the weights first (EQ then searches thresholds for those weights), bias correction follows
the thresholds it corrects for, and the heads' corrections (`head`, `margin`) are measured last, through
the INT network as it will run. `cle` / `cle_act` change the float model before calibration: they are
the caller's business (engine/cli/quantize.py), not this module's.
"""
from __future__ import annotations

from collections.abc import Sequence

from engine.errors import ArgumentError

AFTER = ("gptq", "eq", "bias", "head", "margin")     # in the order they run
BEFORE = ("cle", "cle_act")                          # before calibration
FLOAT_INPUTS = ("gptq", "eq", "bias", "head")        # they read the calibration images' FLOAT outputs
# `margin`'s k (robust deviations of each logit's error): 2.5 recovers two of the best configuration's four
# lost detections over 19 validation sets (and the one of fresh seeds 25-30) at equal or better mAP, for a
# fifth more extra detections (docs/quantization.md, round 13); --margin-k 2 is rounds 5-12's default
MARGIN_K = 2.5


def check(refine: Sequence[str], allowed: Sequence[str] = AFTER + BEFORE, where: str = "refine") -> tuple[str, ...]:
    """The refinement names, validated (unknown or not allowed here: an ArgumentError naming them)."""
    if isinstance(refine, str):                       # refine="eq": one name, not its letters
        refine = [refine]
    names = tuple(dict.fromkeys(str(r).strip() for r in refine))
    bad = [r for r in names if r not in allowed]
    if bad:
        extra = "; cle / cle_act equalize the float model before calibration: use quantize --refine" \
            if set(bad) & set(BEFORE) else ""
        raise ArgumentError(f"{where}: unknown or unsupported {', '.join(map(repr, bad))}; "
                            f"expected any of {', '.join(allowed)}{extra}")
    if "cle" in names and "cle_act" in names:
        raise ArgumentError(f"{where}: cle and cle_act are two ways to equalize the same layers: choose one")
    return names


# where a quantized model's meta records each refinement (the refinement modules write these keys); a
# refinement not listed here records itself under its own name
RECORDED = {"gptq": "gptq", "eq": "eq", "bias": "bias_correction", "head": "head_bias", "margin": "head_margin"}


def recorded(meta: dict) -> tuple[str, ...]:
    """The refinements a quantized model's `meta` records, in the order they ran: `cle` or `cle_act`
    (meta["equalization"], its mode in meta["equalization_mode"]) first, then AFTER's order."""
    before = ()
    if "equalization" in meta:
        before = ("cle_act" if meta.get("equalization_mode") == "activations" else "cle",)
    return before + tuple(name for name in AFTER if RECORDED.get(name, name) in meta)


def needs_float_inputs(refine: Sequence[str]) -> bool:
    return bool(set(FLOAT_INPUTS) & set(refine))


def refine_after(model, qmodel, refine: Sequence[str], images, floats=None, resize: str = "letterbox",
                 margin_k: float = MARGIN_K):
    """`qmodel` with the refinements of `refine` that run after calibration applied, in AFTER's order.

    images: the calibration images; floats: their FLOAT outputs kept by the calibration pass
    (engine.calib.floats.FloatOutputs), or None (one FLOAT pass over `images` then serves all of them).
    `margin` fits on the images plus random augmentations of them (valset.fitting_images)."""
    from engine.quant.refine import bias_correction, eq_search, gptq_rounding, head_bias_correction, head_margin
    names = set(check(refine))
    if floats is None and needs_float_inputs(names):
        from engine.calib.floats import float_outputs
        floats = float_outputs(model, images, resize)       # one FLOAT pass for all of them
    qm = qmodel
    if "gptq" in names:
        qm = gptq_rounding(model, qm, floats, resize=resize)
    if "eq" in names:
        qm = eq_search(model, qm, floats, resize=resize)
    if "bias" in names:
        qm = bias_correction(model, qm, images, resize, floats=floats)
    if "head" in names:
        qm = head_bias_correction(model, qm, floats=floats, images=images, resize=resize)
    if "margin" in names:
        from engine.quant.valset import fitting_images
        qm = head_margin(model, qm, fitting_images(images), margin_k, resize)
    return qm
