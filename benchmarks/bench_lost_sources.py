"""Where the INT score error of near-threshold FLOAT detections comes from: each rounding alone.

For the FLOAT detections scoring .25-.35 on both variant sets (valset.variants / second_variants), the score
of their best same-class box at IoU >= .5 (read at threshold .01) in FLOAT runs with *one* source of int8
rounding switched on: the activation grid of one tensor (fake quantization with the quantized model's scale and
zero point, FLOAT weights), or the int8 weights of one conv (dequantized, FLOAT activations). Printed: RMS and
mean of (run - FLOAT) score per source, and for the runs with every activation / every weight / both (the last
approximates the INT run: the integer path's only other roundings are the 15-bit requantization multipliers).
Each line also splits ln score = ln objectness + ln class probability: the RMS of each part's change (which logit
the error sits in). The sum of the per-source variances against the all-on variance says whether the sources add up independently.
Also the FLOAT score histogram near .25 and, for an unbiased error of RMS s, the expected lost count
sum_d P(score_d + e < .25), e ~ N(0, s): what spread 0 lost on both sets asks for.

`--regrid ID:F,...` instead: the uint8 grid of tensor ID (and the tensors sharing it) with its upper end times F,
the lower end kept (at least -F hi), consumers' int32 biases re-derived; `--act-eq P:A,...`: producer P's output
channels equalized on their activation ranges m_c (s_c = (m_c / max m)^A, the consumers' input channels
multiplied back: a finer shared grid for the small channels) before calibration. Each prints INT mAP@[.5:.95],
lost, extra and the score RMS / mean on both sets (as bench_lost.py).

    python benchmarks/bench_lost_sources.py [--method minmax] [--config asym|asym+gptq|sym|sym+gptq] [--per-layer]
    python benchmarks/bench_lost_sources.py --config asym+gptq --exact 0,1      (conv 0's output unrounded)
    python benchmarks/bench_lost_sources.py --config asym --leave-one-out    (calibrated on 3 of the 4 photos)
    python benchmarks/bench_lost_sources.py --regrid 0:0.7,0:0.5,13:0.7 | --act-eq 0:0.5,0:1
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_lost import report, weights_only  # noqa: E402
from engine.calib.collect import collect, image_list  # noqa: E402
from engine.calib.floats import FloatOutputs  # noqa: E402
from engine.darknet.detect import detect_outputs  # noqa: E402
from engine.model import load  # noqa: E402
from engine.quant.asym import asym_params  # noqa: E402
from engine.quant.autoquant import quantize  # noqa: E402
from engine.quant.executor import Executor, FloatView, head_feeders  # noqa: E402
from engine.quant.layerquant import LayerQuant  # noqa: E402
from engine.quant.qmodel import fused_params, input_id, quantize_bias  # noqa: E402
from engine.quant.explain import box_iou  # noqa: E402
from engine.quant.refine import gptq_rounding  # noqa: E402
from engine.quant.refine.equalize import attach, channel_maxima, equalized, pairs  # noqa: E402
from engine.quant.scoring import Scorer  # noqa: E402
from engine.quant.valset import second_variants, variants  # noqa: E402

SHARED = Path(os.environ.get("QW_SHARED", ROOT.parent / "shared"))
LO, HI = 0.25, 0.35


def grid_points(model, qm) -> dict[int, tuple[float, int, int, int]]:
    """Layer index -> (scale, zero point, qmin, qmax) of every int8 activation tensor (not the heads' int32)."""
    asym = bool(qm.zero_points)
    feeders = head_feeders(model)
    out = {}
    for i, layer in enumerate(model.layers):
        if str(i) not in qm.scales or i in feeders or getattr(layer, "is_head", False):
            continue
        zp = int(qm.zero_points.get(str(i), 0))
        out[i] = (float(qm.scales[str(i)]), zp, 0 if asym else -127, 255 if asym else 127)
    return out


def fake(x: np.ndarray, g) -> np.ndarray:
    s, zp, lo, hi = g
    return ((np.clip(np.rint(x / np.float32(s)) + zp, lo, hi) - zp) * np.float32(s)).astype(np.float32)


def forward(model, x, grids: dict, in_grid=None) -> list[np.ndarray]:
    if in_grid is not None:
        x = fake(x, in_grid)
    outs: list[np.ndarray] = []
    for i in range(len(model.layers)):
        o = model.run_layer(i, model.inputs_of(i, x, outs))
        outs.append(fake(o, grids[i]) if i in grids else o)
    return outs


def near_scores(model, scorer, picks, run) -> np.ndarray:
    """(score, objectness) of the picked FLOAT detections [(image, det)] in `run(x) -> outs`: (n, 2)."""
    res, cache = [], {}
    for k, t in picks:
        if k not in cache:
            p = scorer.inputs[k]
            cache[k] = detect_outputs(model, run(p.x), p, 0.01, 0.45)
        near = [(o.score, o.objectness) for o in cache[k] if o.class_id == t.class_id and box_iou(t, o) >= 0.5]
        res.append(max(near, default=(0.0, 0.0)))
    return np.array(res)


def regrid(model, qm, gid: str, f: float):
    """`qm` with the uint8 grid of tensor `gid` (and every tensor on the same grid) reaching f x its upper end."""
    s0, zp0 = qm.scales[gid], qm.zero_points[gid]
    lo0, hi0 = -zp0 * s0, (255 - zp0) * s0
    s, zp = asym_params(max(lo0, -hi0 * f), hi0 * f)
    t = qm.copy()
    for n in [k for k in qm.scales if qm.scales[k] == s0 and qm.zero_points.get(k) == zp0]:
        t.scales[n], t.zero_points[n] = s, zp
    for i, lq in qm.layers.items():
        s_in = t.scales[input_id(model.layers[i])]
        if s_in != lq.in_scale:
            b = fused_params(model, i)[1]
            t.layers[i] = LayerQuant(lq.w_q, lq.w_scale, quantize_bias(b, s_in, lq.w_scale), s_in, lq.scheme)
    return t


def act_equalized(model, photos, p: int, alpha: float, method: str, gptq: bool):
    """Producer p's channels equalized on their output ranges (s_c = (m_c / max m)^alpha), calibrated, quantized."""
    m = np.maximum(channel_maxima(model, photos, {p: pairs(model)[p]})[p], 1e-6)
    spec = {str(p): [float(v) for v in (m / m.max()) ** alpha]}
    twin = equalized(model, spec)
    keep = FloatOutputs(twin)
    stats = collect(twin, photos, progress=False, keep=keep)
    qm = attach(quantize(twin, stats, method, per_channel=True, profile="qwidgets_asym"), spec, "activations",
                model, twin)
    return gptq_rounding(model, qm, keep) if gptq else qm


def expected_lost(scores: np.ndarray, s: float, bias: float = 0.0) -> float:
    return float(sum(0.5 * (1 + math.erf((0.25 - v - bias) / (s * math.sqrt(2)))) for v in scores))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", default="minmax")
    ap.add_argument("--config", default="asym")
    ap.add_argument("--per-layer", action="store_true", help="also each activation tensor / conv alone")
    ap.add_argument("--regrid", default="", help="ID:F,... (see the module doc)")
    ap.add_argument("--act-eq", default="", help="P:A,... (see the module doc)")
    ap.add_argument("--exact", default="", help="tensor ids left unrounded in the simulated runs (e.g. 0,1: what a "
                    "wider grid for them would leave)")
    ap.add_argument("--leave-one-out", action="store_true", help="INT lost / score RMS on both sets when the "
                    "config is calibrated on each 3 of the 4 photos: how much the counts move with the calibration")
    ap.add_argument("--images", default=str(SHARED / "images"))
    ap.add_argument("--models", default=str(SHARED / "models"))
    args = ap.parse_args(argv)
    model = load(Path(args.models) / "yolov3-tiny.cfg", Path(args.models) / "yolov3-tiny.weights")
    keep = FloatOutputs(model)
    stats = collect(model, image_list(args.images), progress=False, keep=keep)
    parts = set(args.config.split("+"))
    qm = quantize(model, stats, args.method, per_channel=True,
                  profile="qwidgets_asym" if "asym" in parts else "qwidgets")
    if "gptq" in parts:
        qm = gptq_rounding(model, qm, keep)
    if args.leave_one_out:
        photos = image_list(args.images)
        sets = {"first": variants(args.images), "second": second_variants(args.images)}
        scorers = {k: Scorer(model, v) for k, v in sets.items()}
        for out in range(len(photos)):
            some = photos[:out] + photos[out + 1:]
            kp = FloatOutputs(model)
            q = quantize(model, collect(model, some, progress=False, keep=kp), args.method, per_channel=True,
                         profile="qwidgets_asym" if "asym" in parts else "qwidgets")
            q = gptq_rounding(model, q, kp) if "gptq" in parts else q
            for k, scorer in scorers.items():
                a, d, _ = report(scorer, [v.name for v in sets[k]], q)
                diff = d[:, 1] - d[:, 0]
                print(f"{args.config} without {Path(photos[out]).name:<14}{k:<7} INT mAP {a.map50_95:.3f} lost "
                      f"{a.missed} extra {a.extra} | score rms {np.sqrt((diff ** 2).mean()):.4f} mean "
                      f"{diff.mean():+.4f}", flush=True)
        return 0
    if (args.regrid or args.act_eq) and "asym" not in parts:
        ap.error("--regrid / --act-eq move uint8 zero-point grids: use them with --config asym[+gptq]")
    if args.regrid or args.act_eq:
        sets = {"first": variants(args.images), "second": second_variants(args.images)}
        scorers = {k: Scorer(model, v) for k, v in sets.items()}
        runs = [(f"regrid {g}", lambda g=g: regrid(model, qm, *g.split(":")[:1], float(g.split(":")[1])))
                for g in args.regrid.split(",") if g]
        runs += [(f"act-eq {e}", lambda e=e: act_equalized(model, image_list(args.images), int(e.split(":")[0]),
                                                            float(e.split(":")[1]), args.method, "gptq" in parts))
                 for e in args.act_eq.split(",") if e]
        for label, make in [("start", lambda: qm)] + runs:
            q = make()
            for k, scorer in scorers.items():
                a, d, _ = report(scorer, [v.name for v in sets[k]], q)
                diff, low = d[:, 1] - d[:, 0], d[:, 0] < 0.30
                print(f"{args.config} {label:<14}{k:<7} INT mAP {a.map50_95:.3f} lost {a.missed} extra {a.extra} | "
                      f"score rms {np.sqrt((diff ** 2).mean()):.4f}; FLOAT < .30: rms "
                      f"{np.sqrt((diff[low] ** 2).mean()):.4f} mean {diff[low].mean():+.4f}", flush=True)
        return 0
    grids = grid_points(model, qm)
    for i in [int(v) for v in args.exact.split(",") if v]:
        grids.pop(i, None)
    s_in = float(qm.scales["input"])
    in_grid = (s_in, int(qm.zero_points.get("input", 0)), *((0, 255) if qm.zero_points else (-127, 127)))
    twin = weights_only(model, qm)
    for name, imgs in (("first", variants(args.images)), ("second", second_variants(args.images))):
        scorer = Scorer(model, imgs)
        allf = np.array([t.score for ts in scorer.truth for t in ts])
        print(f"{name}: {len(allf)} FLOAT detections; in [.25,.26) {((allf < .26)).sum()}, [.26,.28) "
              f"{((allf >= .26) & (allf < .28)).sum()}, [.28,.30) {((allf >= .28) & (allf < .30)).sum()}; "
              f"under .26: {', '.join(f'{v:.4f}' for v in sorted(allf[allf < .26]))}")
        for s in (0.03, 0.02, 0.01, 0.005, 0.002):
            print(f"    expected lost if unbiased spread {s}: {expected_lost(allf, s):.2f}")
        picks = [(k, t) for k, ts in enumerate(scorer.truth) for t in ts if LO <= t.score < HI]
        ref = np.array([t.score for _, t in picks])
        obj = np.array([t.objectness for _, t in picks])

        def line(label, run, out=None):
            got = near_scores(model, scorer, picks, run)
            d = got[:, 0] - ref
            var = float((d ** 2).mean())
            ok = got[:, 1] > 0               # log split of score = objectness * class probability
            lo_ = np.log(got[ok, 1] / obj[ok])
            lc = np.log(got[ok, 0] / ref[ok]) - lo_
            print(f"  {label:<22} rms {math.sqrt(var):.4f} mean {d.mean():+.4f} under .25: {(ref + d < .25).sum()}"
                  f" | d ln obj rms {np.sqrt((lo_ ** 2).mean()):.4f}, d ln class rms {np.sqrt((lc ** 2).mean()):.4f}",
                  flush=True)
            if out is not None:
                out.append(var)
            return var
        print(f"  {len(picks)} FLOAT detections in [{LO}, {HI})")
        ex = Executor(model, qm, "int")
        line("INT (integer path)", lambda x: FloatView(ex.run(x)[0]))
        line("all act + all weights", lambda x: forward(twin, x, grids, in_grid))
        va = line("activations only", lambda x: forward(model, x, grids, in_grid))
        vw = line("weights only", lambda x: forward(twin, x, {}))
        if args.per_layer:
            acts, ws = [], []
            for i, g in grids.items():
                line(f"act {i} ({model.layers[i].kind[:4]})", lambda x, i=i, g=g: forward(model, x, {i: g}), acts)
            for i in sorted(qm.layers):
                one = model.shallow_copy()
                one.replace_param(i, "weights", twin.params[i]["weights"])
                line(f"weights {i}", lambda x, one=one: forward(one, x, {}), ws)
            print(f"  sum of per-tensor act variances {sum(acts):.5f} vs all {va:.5f}; "
                  f"weights {sum(ws):.5f} vs all {vw:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
