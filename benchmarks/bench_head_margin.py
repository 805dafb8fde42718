"""Is the INT score error near the threshold biased, and what does a recall margin buy? (docs/quantization.md,
"Lost detections, round 5".)

Calibrates yolov3-tiny (minmax, per channel, `qwidgets_asym` unless --profile) on the 4 photos, then:
1. measures, per head, the INT - FLOAT objectness and best-class logits and the objectness-equivalent error e
   (engine/quant/refine/margin.py) at the positions whose FLOAT score is in the band, on the fitting set
   (the photos + valset.random_variants(seed 1)) and on each validation set, with a bootstrap over images
   of the mean (is the bias real?);
2. for each setting (k of the margin by round 5's objectness rule or round 11's per-logit rule over every class,
   or the near-threshold bias correction of objectness / class), fits
   the shifts on the fitting set only and reports INT mAP@[.5:.95], mAP@0.5, lost and extra on the
   validation sets: valset.variants ("first"), second_variants ("second") and random_variants(seed 2)
   ("third"), and random_variants(seed 3) ("fourth": the final check, run once k was fixed at 2).
Head logits are cached per image (FLOAT and INT once); a shift of a head's logits is what the same shift in
its int32 bias gives (to half an accumulator step), checked with a real INT run of the quantized twin.

    python benchmarks/bench_head_margin.py [--ks 0,0.5,1,1.5,2] [--leave-one-out] [--base asym|asym+head|asym+gptq|sym]
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
from engine.layers.yolo import yolo_activate  # noqa: E402
from engine.model import load  # noqa: E402
from engine.quant.autoquant import quantize  # noqa: E402
from engine.quant.executor import Executor, FloatView  # noqa: E402
from engine.quant.explain import box_iou, match_detections  # noqa: E402
from engine.quant.fitness import detection_agreement  # noqa: E402
from engine.quant.refine import gptq_rounding, head_bias_correction  # noqa: E402
from engine.quant.refine.headbias import head_convs  # noqa: E402
from engine.quant.refine.margin import (NearErrors, fit_logit_shifts, fit_shifts, margin_stats, near_errors,  # noqa: E402
                                        shift_heads)
from engine.quant.valset import fitting_images, random_variants, second_variants, variants  # noqa: E402

SHARED = Path(os.environ.get("QW_SHARED", ROOT.parent / "shared"))


class Outs:
    """The outputs detect_outputs reads (the [yolo] layers) from cached head-conv logits plus a shift."""

    def __init__(self, model, logits: dict, shift: dict):
        self.model, self.logits, self.shift = model, logits, shift

    def __len__(self):
        return len(self.model.layers)

    def __getitem__(self, i):
        layer = self.model.layers[i]
        c = layer.inputs[0]
        x = self.logits[c]
        if c in self.shift:
            x = x + self.shift[c][:, None, None].astype(np.float32)
        return yolo_activate(x, len(layer.mask), layer.classes, layer.scale_x_y, layer.new_coords)


class Cached:
    """FLOAT and INT head logits of one image set for one quantized model."""

    def __init__(self, model, qm, items, heads):
        self.model, self.heads = model, heads
        self.pre = [model.preprocess(getattr(i, "image", i), "letterbox") for i in items]
        self.names = [getattr(i, "name", str(k)) for k, i in enumerate(items)]
        ex = Executor(model, qm, "int")
        self.f, self.q = [], []
        for p in self.pre:
            fo, qo = model.forward(p.x), FloatView(ex.run(p.x)[0])
            self.f.append({c: np.asarray(fo[c]).copy() for c, _, _ in heads})
            self.q.append({c: np.asarray(qo[c]).copy() for c, _, _ in heads})
        self.truth = [detect_outputs(model, Outs(model, f, {}), p, 0.25, 0.45) for f, p in zip(self.f, self.pre)]

    def errors(self, band, every_class=False):
        return {c: [near_errors(f[c], q[c], a, k, band, every_class) for f, q in zip(self.f, self.q)]
                for c, a, k in self.heads}

    def score(self, shift, show=False):
        dets = [detect_outputs(self.model, Outs(self.model, q, shift), p, 0.25, 0.45) for q, p in zip(self.q, self.pre)]
        if show:                                   # each lost detection: FLOAT score -> best same-class INT score
            for name, truth, q, p, at in zip(self.names, self.truth, self.q, self.pre, dets):
                low = detect_outputs(self.model, Outs(self.model, q, shift), p, 0.01, 0.45)
                for m in match_detections(truth, at).matches:
                    if m.status == "lost":
                        near = [(o.score, box_iou(m.det, o)) for o in low if o.class_id == m.det.class_id]
                        sc, iou = max([c for c in near if c[1] >= 0.5] or [(0.0, 0.0)])
                        print(f"      lost: {name} {m.det.name} FLOAT {m.det.score:.4f} -> INT {sc:.4f} (IoU {iou:.2f})")
        return detection_agreement(self.truth, dets)


def vector(heads, shifts):
    """{conv: (obj, cls)} -> {conv: per-channel shift vector}."""
    out = {}
    for c, a, k in heads:
        v = np.zeros((a, 5 + k))
        v[:, 4], v[:, 5:] = shifts[c]
        out[c] = v.ravel()
    return out


def bootstrap_ci(per_image: list[np.ndarray], rng, n=400):
    """95% interval of the pooled mean, resampling images (positions of one image are correlated)."""
    sizes = np.array([len(v) for v in per_image])
    sums = np.array([v.sum() for v in per_image])
    idx = rng.integers(0, len(per_image), (n, len(per_image)))
    means = sums[idx].sum(1) / np.maximum(sizes[idx].sum(1), 1)
    return np.percentile(means, [2.5, 97.5])


def measure(name, cached, band, rng):
    per = cached.errors(band)
    for c, parts in per.items():
        v = NearErrors.concat(parts)
        st = margin_stats(v)
        line = f"  {name:<7} head {c}: n {st['n']:5d}"
        for key in ("dobj", "dcls", "e"):
            lo, hi = bootstrap_ci([getattr(p, key) for p in parts], rng)
            line += f" | {key} {st[key][0]:+.3f} [{lo:+.3f},{hi:+.3f}] sd {st[key][1]:.3f}"
        line += f" | e median {st['e_robust'][0]:+.3f} rsd {st['e_robust'][1]:.3f}"
        print(line, flush=True)
    return per


def settings(errs: dict, ks, obj_only=(), every=None) -> dict:
    """name -> {conv: (obj shift, cls shift)} fitted on the fitting set's errors ({conv: NearErrors}):
    "bias" = the near-threshold bias correction (fit_shifts with k = 0: objectness and class means),
    "margin k" = fit_shifts(k) (what `--refine margin` wrote in rounds 5-9, `rule="objectness"`),
    "logits k" = fit_logit_shifts(k) on `every` (the errors of every class in the band: what `--refine margin`
    writes since round 11), "obj margin k" = objectness only, k robust deviations of the uncorrected e (no
    class correction)."""
    out = {"none": {c: (0.0, 0.0) for c in errs}}
    out["bias"] = {c: fit_shifts(v, 0.0)[:2] for c, v in errs.items()}
    for k in ks:
        out[f"margin k={k:g}"] = {c: fit_shifts(v, k)[:2] for c, v in errs.items()}
        if every is not None:
            out[f"logits k={k:g}"] = {c: fit_logit_shifts(v, k)[:2] for c, v in every.items()}
    for k in obj_only:
        out[f"obj margin k={k:g}"] = {c: (k * margin_stats(v)["e_robust"][1] - margin_stats(v)["e_robust"][0], 0.0)
                                      for c, v in errs.items()}
    return out


def run(model, photos, fit_items, sets, ks, band, base, label, verify, show=(), obj_only=()):
    stats = collect(model, photos, progress=False, keep=(keep := FloatOutputs(model)))
    qm = quantize(model, stats, "minmax", per_channel=True,
                  profile="qwidgets" if "sym" in base.split("+") else "qwidgets_asym")
    if "gptq" in base.split("+"):             # the CLI's order: gptq, then head, then the margin
        qm = gptq_rounding(model, qm, keep)
    if "head" in base.split("+"):
        qm = head_bias_correction(model, qm, floats=keep)
    heads = head_convs(model, qm)
    rng = np.random.default_rng(0)
    print(f"== {label}: base {base}, band {band}", flush=True)
    fit = Cached(model, qm, fit_items, heads)
    fit_err = measure("fit", fit, band, rng)
    cached = {k: Cached(model, qm, v, heads) for k, v in sets.items()}
    for k, c in cached.items():
        measure(k, c, band, rng)
    errs = {c: NearErrors.concat(p) for c, p in fit_err.items()}
    every = {c: NearErrors.concat(p) for c, p in fit.errors(band, every_class=True).items()}
    print("  fit, after the bias correction: " + ", ".join(
        f"head {c} e median {r['after_bias']['e_robust'][0]:+.3f} rsd {r['after_bias']['e_robust'][1]:.3f}"
        for c, r in ((c, fit_shifts(v, 0.0)[2]) for c, v in errs.items())))
    rows = {}
    for name, sh in settings(errs, ks, obj_only, every).items():
        desc = ", ".join(f"{c}: {o:+.3f}/{cl:+.3f}" for c, (o, cl) in sh.items())
        res = {k: c.score(vector(heads, sh), show=name in show) for k, c in cached.items()}
        rows[name] = res
        print(f"  {name:<14} [{desc}] " + " | ".join(
            f"{k} {a.map50_95:.3f} {a.map50:.3f} lost {a.missed} extra {a.extra}" for k, a in res.items()), flush=True)
        if verify and name == verify:              # the same shift in the int32 biases, a real INT run
            twin = shift_heads(model, qm, sh, "head_margin", {})
            k0 = next(iter(cached))
            ex = Executor(model, twin, "int")
            dets = [detect_outputs(model, FloatView(ex.run(p.x)[0]), p, 0.25, 0.45) for p in cached[k0].pre]
            a = detection_agreement(cached[k0].truth, dets)
            print(f"  verify {name} on {k0}, real INT run with the int32 biases moved: {a.map50_95:.3f} "
                  f"{a.map50:.3f} lost {a.missed} extra {a.extra}", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", default="0,0.5,1,1.5,2,3")
    ap.add_argument("--obj-only", default="", help="k values of the objectness-only margin (no class correction)")
    ap.add_argument("--band", default="0.15,0.40")
    ap.add_argument("--base", default="asym")
    ap.add_argument("--fit-per-photo", type=int, default=20)
    ap.add_argument("--sets", default="first,second,third")
    ap.add_argument("--leave-one-out", action="store_true")
    ap.add_argument("--verify", default="", help="setting name to check with a real INT run (first set)")
    ap.add_argument("--show", default="", help="comma-separated setting names whose lost detections are printed")
    ap.add_argument("--images", default=str(SHARED / "images"))
    ap.add_argument("--models", default=str(SHARED / "models"))
    args = ap.parse_args(argv)
    model = load(Path(args.models) / "yolov3-tiny.cfg", Path(args.models) / "yolov3-tiny.weights")
    photos = image_list(args.images)
    ks = [float(k) for k in args.ks.split(",") if k]
    band = tuple(float(b) for b in args.band.split(","))
    make = {"first": lambda: variants(args.images), "second": lambda: second_variants(args.images),
            "third": lambda: random_variants(args.images, 10, seed=2),
            "fourth": lambda: random_variants(args.images, 10, seed=3)}
    sets = {k: make[k]() for k in args.sets.split(",") if k}
    runs = [(photos, "all 4 photos")]
    if args.leave_one_out:
        runs = [([p for p in photos if p != out], f"without {out.name}") for out in photos]
    for cal, label in runs:
        fit_items = fitting_images(cal, args.fit_per_photo, seed=1)
        run(model, cal, fit_items, sets, ks, band, args.base, label, args.verify, args.show.split(","),
            [float(k) for k in args.obj_only.split(",") if k])
    return 0


if __name__ == "__main__":
    sys.exit(main())
