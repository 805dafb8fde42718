"""Where the lost detections are: per FLOAT detection, the INT score it ends at, on both variant sets.

Calibrates yolov3-tiny (per channel) on the 4 photos of ../shared/images and, for each config, prints on
valset.variants and valset.second_variants: INT mAP@[.5:.95], lost and extra (as bench_calibrators.py),
then a continuous measure of score agreement that lost counts are too coarse to show: for every FLOAT
detection (score >= 0.25) the score of its best same-class INT box at IoU >= 0.5 read at threshold 0.01
(0 if none), and the RMS and mean of (INT - FLOAT) over all of them and over those with FLOAT < 0.30;
then each lost detection: variant, class, FLOAT score, INT score (its IoU).

    python benchmarks/bench_lost.py [--method minmax] [--configs asym,asym+gptq,...]

configs: `+`-joined parts, `asym` (profile qwidgets_asym), `gptq`, `eq`, `bias`, `head` (engine/quant/refine;
`headbox`: head with the box channels corrected too), applied in that order; `wonly` = only the weights int8
(the conv weights replaced by their dequantized int8 values, activations FLOAT: what weight rounding alone costs).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.calib.collect import collect, image_list  # noqa: E402
from engine.calib.floats import FloatOutputs  # noqa: E402
from engine.darknet.detect import detect_outputs  # noqa: E402
from engine.layers.convolutional import BN_EPS  # noqa: E402
from engine.model import load  # noqa: E402
from engine.quant.autoquant import quantize  # noqa: E402
from engine.quant.executor import Executor, FloatView  # noqa: E402
from engine.quant.explain import box_iou, match_detections  # noqa: E402
from engine.quant.fitness import detection_agreement  # noqa: E402
from engine.quant.refine import bias_correction, eq_search, gptq_rounding, head_bias_correction  # noqa: E402
from engine.quant.scoring import Scorer  # noqa: E402
from engine.quant.valset import second_variants, variants  # noqa: E402

SHARED = Path(os.environ.get("QW_SHARED", ROOT.parent / "shared"))


def weights_only(model, qm):
    """A float model whose conv weights are the quantized model's dequantized int8 weights."""
    twin = model.shallow_copy()
    for i, lq in qm.layers.items():
        p, wdq = twin.params[i], lq.dequantized_weights().astype(np.float64)
        if model.layers[i].batch_normalize:          # fused = W * gamma / (sqrt(var) + eps): undo the gain
            gain = p["scales"].astype(np.float64) / (np.sqrt(p["rolling_variance"].astype(np.float64)) + BN_EPS)
            wdq = wdq / gain.reshape(-1, 1, 1, 1)
        twin.replace_param(i, "weights", wdq.astype(np.float32))
    return twin


def outputs(scorer, qm, twin):
    ex = None if twin is not None else Executor(scorer.model, qm, "int")
    for p in scorer.inputs:
        yield p, (twin.forward(p.x) if twin is not None else FloatView(ex.run(p.x)[0]))


def report(scorer, names, qm, twin=None):
    pairs, lost, dets = [], [], []
    for (p, outs), truth, name in zip(outputs(scorer, qm, twin), scorer.truth, names):
        at, low = detect_outputs(scorer.model, outs, p, 0.25, 0.45), detect_outputs(scorer.model, outs, p, 0.01, 0.45)
        dets.append(at)
        for t in truth:
            near = [(o.score, box_iou(t, o)) for o in low if o.class_id == t.class_id and box_iou(t, o) >= 0.5]
            pairs.append((t.score, max(near, default=(0.0, 0.0))[0]))
        for m in match_detections(truth, at).matches:
            if m.status == "lost":
                near = [(o.score, box_iou(m.det, o)) for o in low if o.class_id == m.det.class_id]
                s, iou = max([c for c in near if c[1] >= 0.5] or [(0.0, 0.0)])
                lost.append(f"{name} {m.det.name} FLOAT {m.det.score:.3f} -> INT {s:.3f} (IoU {iou:.2f})")
    return detection_agreement(scorer.truth, dets), np.array(pairs), lost


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", default="minmax")
    ap.add_argument("--configs", default="asym,asym+gptq")
    ap.add_argument("--images", default=str(SHARED / "images"))
    ap.add_argument("--models", default=str(SHARED / "models"))
    args = ap.parse_args(argv)
    model = load(Path(args.models) / "yolov3-tiny.cfg", Path(args.models) / "yolov3-tiny.weights")
    photos = image_list(args.images)
    keep = FloatOutputs(model)
    stats = collect(model, photos, progress=False, keep=keep)
    sets = {"first": variants(args.images), "second": second_variants(args.images)}
    scorers = {k: Scorer(model, v) for k, v in sets.items()}
    for config in [c for c in args.configs.split(",") if c]:
        parts = set(config.split("+"))
        qm = quantize(model, stats, args.method, per_channel=True,
                      profile="qwidgets_asym" if "asym" in parts else "qwidgets")
        if "gptq" in parts:
            qm = gptq_rounding(model, qm, keep)
        if "eq" in parts:
            qm = eq_search(model, qm, keep)
        if "bias" in parts:
            qm = bias_correction(model, qm, floats=keep)
        if parts & {"head", "headbox", "headslope"}:
            qm = head_bias_correction(model, qm, floats=keep, boxes="headbox" in parts,
                                      weighting="slope" if "headslope" in parts else "score")
        twin = weights_only(model, qm) if "wonly" in parts else None
        for k, scorer in scorers.items():
            a, d, lost = report(scorer, [v.name for v in sets[k]], qm, twin)
            diff = d[:, 1] - d[:, 0]
            low = d[:, 0] < 0.30
            print(f"{args.method} {config:<16}{k:<7} INT mAP {a.map50_95:.3f} lost {a.missed} extra {a.extra} | "
                  f"INT-FLOAT score: rms {np.sqrt((diff ** 2).mean()):.4f} mean {diff.mean():+.4f}; FLOAT < .30 "
                  f"({low.sum()}): rms {np.sqrt((diff[low] ** 2).mean()):.4f} mean {diff[low].mean():+.4f}", flush=True)
            for line in lost:
                print("    lost:", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
