"""Calibration methods x refinements on a validation set of variants of the shared photos.

Calibrates yolov3-tiny (per channel) on the 4 photos of ../shared/images, scores INT and HYBRID
detections against FLOAT's (thresh 0.25) on variants of them (engine/quant/valset.py: crops, a
mirror, scale, brightness, contrast, noise, JPEG, blur, 2x2 mosaics): COCO mAP@0.5, mAP@[.5:.95],
lost (FLOAT detections with no match at IoU 0.5) and extra, and the calibration time (statistics +
thresholds + refinements) over a plain FLOAT pass on the same photos.

    python benchmarks/bench_calibrators.py [--methods kl,log2,...] [--configs plain,rules,...]

configs: `plain` (every tensor on its own |x| histogram, the former behaviour), `rules` (the default
calibration rules, engine/calib/views.py), `bias` (rules + bias correction), `mixed` (rules + the mixed-precision search for
--target on the first half of the variants, scored on all); refinements combine with `+`:
`cle` (cross-layer equalization, weight ranges), `cle_act` (CLE on activation ranges), `eq` (the EQ
threshold search, engine/quant/refine/eq.py), `gptq` (GPTQ weight rounding, engine/quant/refine/gptq.py), `asym` (uint8 activations with zero points, profile
qwidgets_asym), `ort` (profile onnxruntime), e.g. `cle+asym+bias`, `eq+bias`; `plain+asym` without
the rules. Bias correction and eq read the FLOAT outputs the calibration pass kept.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.model import load  # noqa: E402
from engine.calib.collect import collect, image_list  # noqa: E402
from engine.quant.mixed import search  # noqa: E402
from engine.quant.autoquant import quantize  # noqa: E402
from engine.calib.floats import FloatOutputs  # noqa: E402
from engine.quant.refine import attach_equalization, bias_correction, eq_search, equalize, gptq_rounding  # noqa: E402
from engine.quant.scoring import Scorer  # noqa: E402
from engine.quant.valset import second_variants, variants  # noqa: E402

SHARED = Path(os.environ.get("QW_SHARED", ROOT.parent / "shared"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="minmax,mse,percentile,kl,log2,yolo2_light,auto")
    p.add_argument("--configs", default="plain,rules")
    p.add_argument("--images", default=str(SHARED / "images"))
    p.add_argument("--models", default=str(SHARED / "models"))
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--second", action="store_true",
                   help="score on valset.second_variants (other parameters and seeds) instead: a check for overfitting")
    args = p.parse_args(argv)
    model = load(Path(args.models) / "yolov3-tiny.cfg", Path(args.models) / "yolov3-tiny.weights")
    photos = image_list(args.images)
    t0 = time.perf_counter()
    for f in photos:
        model.forward(model.preprocess(f).x)
    float_pass = time.perf_counter() - t0
    vs = second_variants(args.images) if args.second else variants(args.images)
    scorer = Scorer(model, vs)
    print(f"validation: {len(vs)} variants of {len(photos)} photos, {scorer.n_truth} FLOAT detections at 0.25; "
          f"FLOAT pass over the photos {float_pass:.2f} s")
    head = (f"{'method':<12}{'config':<16}{'INT mAP50':>10}{'INT mAP':>9}{'lost':>6}{'extra':>6}"
            f"{'HYB mAP50':>10}{'HYB mAP':>9}{'lost':>6}{'calib/FLOAT':>13}")
    print(head)
    for method in [m for m in args.methods.split(",") if m]:
        for config in [c for c in args.configs.split(",") if c]:
            if method == "yolo2_light" and config != "plain":
                continue                      # yolo2_light has no rules: it is the exact reproduction
            parts = set(config.split("+"))
            t = time.perf_counter()
            qmodel_of = model
            spec = None
            if parts & {"cle", "cle_act"}:
                mode = "activations" if "cle_act" in parts else "weights"
                qmodel_of, spec = equalize(model, mode, photos)
            keep = FloatOutputs(qmodel_of) if parts & {"bias", "eq", "gptq"} else None
            stats = collect(qmodel_of, photos, progress=False, keep=keep)
            kw = {"rules": ()} if "plain" in parts else {}
            if method == "auto":
                kw["images"] = photos
            if "asym" in parts:
                kw["profile"] = "qwidgets_asym"
            if "ort" in parts:
                kw["profile"] = "onnxruntime"
            qm = quantize(qmodel_of, stats, method, per_channel=True, **kw)
            if spec is not None:
                qm = attach_equalization(qm, spec, mode, model, qmodel_of)
            if "gptq" in parts:
                qm = gptq_rounding(model, qm, keep)
            if "eq" in parts:
                qm = eq_search(model, qm, keep)
            if "bias" in parts:
                qm = bias_correction(model, qm, photos, floats=keep)
            calib = time.perf_counter() - t
            note = ""
            if "mixed" in parts:
                half = Scorer(model, vs[::2])
                res = search(model, qm, half, target=args.target)
                qm = res.apply(qm)
                note = f"  float_layers={list(qm.float_layers)}"
            a, h = scorer.score(qm, "int"), scorer.score(qm, "hybrid")
            print(f"{method:<12}{config:<16}{a.map50:>10.3f}{a.map50_95:>9.3f}{a.missed:>6}{a.extra:>6}"
                  f"{h.map50:>10.3f}{h.map50_95:>9.3f}{h.missed:>6}{calib / float_pass:>12.1f}x{note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
