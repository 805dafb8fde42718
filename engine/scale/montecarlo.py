"""Monte Carlo validation: many seeded synthetic variants of a few images, HYBRID/INT vs FLOAT.

    res = run_montecarlo("yolov3-tiny", qmodel, images, n_variants=200, modes=("hybrid",), seed=0)
    print(res.report())                       # distribution of per-variant mAP@0.5 vs FLOAT
    save_worst_cases(res, Workspace(), "mc-worst")   # the worst variants as an image set

A variant is a source image plus parameters drawn from `numpy.random.default_rng(seed)`
(`make_variants`): rotation, Gaussian blur, brightness, contrast, Gaussian noise, scale (zoom
out onto a grey canvas, or zoom in by a centre crop) and the two mirrorings. Every parameter
is recorded, so any variant can be re-rendered exactly (`render`). Sources are first shrunk to
fit the network input (the letterbox would shrink them anyway), so blur radii and noise are in
network-input pixels and a variant costs little more than the two forward passes.
Per variant, FLOAT's detections are the ground truth of `detection_agreement`.
Batches of variants run through an `engine.scale.backends` backend (in-process or Dask).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from engine.imaging.augment import ROTATE_RESAMPLE, SCALE_RESAMPLE, add_noise, to_png
from engine.calib.collect import image_list
from engine.scale.backends import InProcess, label_of, qmodel_ref
from engine.export.ort_backend import detect_each, feed_size, forward_on, resolve, split_backend
from engine.scale.sources import load_source, resolve_qmodel, unwrap
from engine.darknet.detect import require_head
from engine.darknet.image import RESIZE_MODES, open_image
from engine.quant.fitness import detection_agreement
from engine.quant.modes import QUANT_MODES, float_layer_indices
from engine.quant.progress import counted

GREY = (127, 127, 127)
# name: (low, high) of a uniform draw; flips are Bernoulli with these probabilities
RANGES = {"angle": (-15.0, 15.0), "blur": (0.0, 2.0), "brightness": (0.6, 1.4), "contrast": (0.6, 1.4),
          "noise": (0.0, 12.0), "scale": (0.6, 1.25)}
FLIP_P, FLOP_P = 0.1, 0.5


@dataclass(frozen=True)
class Variant:
    """One synthetic variant: source image index + every rendering parameter."""
    index: int
    image: int
    angle: float            # degrees, counter-clockwise, size kept, corners black
    blur: float             # Gaussian radius (network-input pixels)
    brightness: float       # factor, 1 = unchanged
    contrast: float         # factor, 1 = unchanged
    noise: float            # Gaussian sigma in 0..255 units
    scale: float            # < 1: shrink onto a grey canvas; > 1: centre-crop zoom
    flip: bool              # top-bottom
    flop: bool              # left-right
    seed: int               # of the noise

    def to_dict(self) -> dict:
        return asdict(self)


def make_variants(n_images: int, n_variants: int, seed: int = 0, ranges: dict | None = None) -> list[Variant]:
    """`n_variants` variants cycling over the images, parameters from default_rng(seed) (reproducible)."""
    if n_images < 1 or n_variants < 0:
        raise ValueError(f"n_images={n_images}, n_variants={n_variants}: need >= 1 image and >= 0 variants")
    r = {**RANGES, **(ranges or {})}
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_variants):
        draw = {name: round(float(rng.uniform(lo, hi)), 4) for name, (lo, hi) in r.items()}
        flip, flop = bool(rng.random() < FLIP_P), bool(rng.random() < FLOP_P)
        out.append(Variant(k, k % n_images, flip=flip, flop=flop, seed=int(rng.integers(2**31)), **draw))
    return out


def fit_to(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Shrink (never enlarge) to fit inside size=(w, h), keeping the aspect ratio."""
    f = min(size[0] / im.width, size[1] / im.height)
    if f >= 1:
        return im
    return im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), SCALE_RESAMPLE)


def _rescale(im: Image.Image, s: float) -> Image.Image:
    w, h = im.size
    if s < 1:
        small = im.resize((max(1, round(w * s)), max(1, round(h * s))), SCALE_RESAMPLE)
        canvas = Image.new("RGB", (w, h), GREY)
        canvas.paste(small, ((w - small.width) // 2, (h - small.height) // 2))
        return canvas
    cw, ch = max(1, round(w / s)), max(1, round(h / s))
    box = ((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)
    return im.crop(box).resize((w, h), SCALE_RESAMPLE)


def render(source: Image.Image, v: Variant) -> Image.Image:
    """The variant's RGB image; order: scale, rotate, mirror, brightness, contrast, blur, noise."""
    im = _rescale(source, v.scale) if v.scale != 1 else source.copy()
    if v.angle:
        im = im.rotate(v.angle, resample=ROTATE_RESAMPLE, expand=False, fillcolor=(0, 0, 0))
    if v.flip:
        im = im.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if v.flop:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if v.brightness != 1:
        im = ImageEnhance.Brightness(im).enhance(v.brightness)
    if v.contrast != 1:
        im = ImageEnhance.Contrast(im).enhance(v.contrast)
    if v.blur > 0:
        im = im.filter(ImageFilter.GaussianBlur(v.blur))
    if v.noise > 0:
        im = add_noise(im, v.noise, v.seed)
    return im


@lru_cache(maxsize=16)
def _open_fitted(path: str, size: tuple[int, int]) -> Image.Image:
    return fit_to(open_image(path), size)


def source_image(sources: Sequence, k: int, size: tuple[int, int]) -> Image.Image:
    item = sources[k]
    if isinstance(item, (str, Path)):
        return _open_fitted(str(item), size)
    return fit_to(open_image(item), size)


def variant_batch(source: Any, qref: Any, sources_ref: Any, modes: tuple[str, ...], thresh: float, nms: float,
                  runtime: str, batch: list[Variant], *, float_layers: Sequence[int] | None = None,
                  resize: str = "letterbox") -> list[dict]:
    """Per variant: {mode: agreement dict (+ "float_dets")}; runs on a worker or in-process, FLOAT and
    each mode on `runtime` (numpy | onnxruntime | auto: engine/export/ort_backend.py). float_layers: the
    layers each mode keeps FLOAT (None: the quantized model's own); resize: how a variant becomes the
    network input (letterbox | stretch, as Model.preprocess)."""
    model = load_source(source)
    qm = resolve_qmodel(qref)
    sources = unwrap(sources_ref)
    _, h, w = model.input_shape
    float_run = forward_on(runtime, model, None, "float")
    runners = {m: forward_on(runtime, model, qm, m, float_layers) for m in modes}
    rows = []
    size = feed_size(float_run, *runners.values())      # ORT: variants in batches; NumPy: one per kernel thread
    for start in range(0, len(batch), size):
        pres = [model.preprocess(render(source_image(sources, v.image, (w, h)), v), resize)
                for v in batch[start:start + size]]
        truths = detect_each(model, float_run, pres, thresh, nms)
        chunk: list[dict[str, Any]] = [{"float_dets": len(t)} for t in truths]
        for m, run in runners.items():
            for row, truth, dets in zip(chunk, truths, detect_each(model, run, pres, thresh, nms)):
                a = detection_agreement([truth], [dets])
                row[m] = {"map50": a.map50, "map50_95": a.map50_95, "matched": a.matched, "missed": a.missed,
                          "extra": a.extra, "mean_iou": a.mean_iou}
        rows.extend(chunk)
    return rows


@dataclass
class MonteCarloResult:
    variants: list[Variant]
    rows: list[dict]                       # per variant: float_dets, {mode: agreement numbers}
    modes: tuple[str, ...]
    seed: int
    sources: list = field(repr=False, default_factory=list)
    labels: list[str] = field(default_factory=list)
    seconds: float = 0.0
    worst_k: int = 8
    size: tuple[int, int] = (416, 416)         # network input (w, h): sources are fitted to it
    float_layers: tuple[int, ...] = ()         # the layers the quantized runs kept FLOAT
    resize: str = "letterbox"                  # how each variant became the network input

    def scores(self, mode: str | None = None) -> np.ndarray:
        mode = mode or self.modes[-1]
        return np.array([r[mode]["map50"] for r in self.rows], np.float64)

    def summary(self, mode: str | None = None, bins: int = 10) -> dict:
        """Distribution of per-variant mAP@0.5: mean, std, min, percentiles, histogram on [0, 1]."""
        s = self.scores(mode)
        counts, edges = np.histogram(s, bins=bins, range=(0.0, 1.0))
        pct = {f"p{q}": float(np.percentile(s, q)) for q in (5, 25, 50, 75, 95)} if s.size else {}
        errors = {k: int(sum(r[mode or self.modes[-1]][k] for r in self.rows)) for k in ("matched", "missed", "extra")}
        coco = [r[mode or self.modes[-1]].get("map50_95", np.nan) for r in self.rows]
        return {"mode": mode or self.modes[-1], "n": int(s.size), "mean": float(s.mean()) if s.size else float("nan"),
                "std": float(s.std()) if s.size else float("nan"), "min": float(s.min()) if s.size else float("nan"),
                "mean_map50_95": float(np.mean(coco)) if coco else float("nan"), **pct,
                "perfect": float(np.mean(s == 1.0)) if s.size else float("nan"), **errors,
                "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}}

    def worst(self, k: int | None = None, mode: str | None = None) -> list[tuple[Variant, dict]]:
        """The k variants with the lowest mAP@0.5 (then most missed + extra, then index)."""
        mode = mode or self.modes[-1]
        def key(i: int) -> tuple:
            a = self.rows[i][mode]
            return (a["map50"], -(a["missed"] + a["extra"]), i)
        order = sorted(range(len(self.rows)), key=key)
        return [(self.variants[i], self.rows[i]) for i in order[: (k or self.worst_k)]]

    def report(self) -> str:
        how = "".join([f", layers {', '.join(map(str, self.float_layers))} kept FLOAT" if self.float_layers else "",
                       f", {self.resize}" if self.resize != "letterbox" else ""])     # what differs from a plain run
        lines = [f"Monte Carlo: {counted(len(self.rows), 'variant')} of {counted(len(self.sources), 'image')}, "
                 f"seed {self.seed}{how}, {self.seconds:.1f} s"]
        for m in self.modes:
            s = self.summary(m)
            lines.append(f"{m:<7} mAP50 mean {s['mean']:.3f}  mAP@[.5:.95] {s['mean_map50_95']:.3f}  "
                         f"std {s['std']:.3f}  min {s['min']:.3f}  "
                         f"p5 {s['p5']:.3f}  p50 {s['p50']:.3f}  perfect {100 * s['perfect']:.0f}%  "
                         f"missed {s['missed']}  extra {s['extra']}")
            counts = " ".join(f"{c}" for c in s["histogram"]["counts"])
            lines.append(f"        histogram {counts}  (10 bins on [0, 1])")
        lines.append(f"worst {self.modes[-1]}: " + ", ".join(
            f"#{v.index} ({self.labels[v.image]}, mAP {r[self.modes[-1]]['map50']:.2f})" for v, r in self.worst(5)))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"seed": self.seed, "modes": list(self.modes), "float_layers": list(self.float_layers),
                "resize": self.resize, "images": self.labels, "seconds": self.seconds,
                "summary": {m: self.summary(m) for m in self.modes},
                "variants": [{**v.to_dict(), **r} for v, r in zip(self.variants, self.rows)]}


def run_montecarlo(model_source: Any, qmodel: Any, images, n_variants: int = 200, modes: Sequence[str] = ("hybrid",),
                   backend=None, seed: int = 0, batch_size: int | None = None, worst_k: int = 8,
                   thresh: float = 0.25, nms: float = 0.45, ranges: dict | None = None,
                   progress: bool = False, float_layers: Sequence[int] | None = None,
                   resize: str = "letterbox") -> MonteCarloResult:
    """Render `n_variants` seeded variants of `images`, run FLOAT and each mode, agreement per variant.

    backend: "numpy" | "onnxruntime" | "auto" (in this process), or an InProcess / DaskBackend (its
    `runtime`): with "onnxruntime", FLOAT and INT (profile onnxruntime) run on ONNX Runtime.
    float_layers: the layers every mode keeps FLOAT (mixed precision; None: the quantized model's own).
    resize: "letterbox" (Darknet's, the default) or "stretch": how each variant becomes the network input.
    Raises ValueError for modes other than hybrid/int, an empty image list or a layer the model lacks,
    EngineError for a model without a detection head, or a mode ORT cannot run with backend="onnxruntime"
    (HYBRID, INT under another profile).
    """
    bad = [m for m in modes if m not in QUANT_MODES]
    if bad or not modes:
        raise ValueError(f"modes {list(modes)}: expected hybrid and/or int (FLOAT is the reference)")
    modes = tuple(dict.fromkeys(modes))     # "int,int" is one mode: one summary, "modes" as the summaries' keys
    if resize not in RESIZE_MODES:          # refused here, not on a worker for every batch
        raise ValueError(f"resize={resize!r}: expected {' or '.join(RESIZE_MODES)}")
    backend, runtime = split_backend(backend)
    model, qm = load_source(model_source), resolve_qmodel(qmodel)
    require_head(model, "run_montecarlo")   # else every variant agrees "perfectly": no detections on either side
    kept = float_layer_indices(model, qm.float_layers if float_layers is None else float_layers)
    if runtime == "onnxruntime":            # refused before any variant is rendered
        for m in ("float", *modes):
            resolve(runtime, model, qm, m, kept)
    backend = backend or InProcess()
    sources = [str(i) if isinstance(i, Path) else i for i in image_list(images, "evaluation")]
    variants = make_variants(len(sources), n_variants, seed, ranges)
    all_paths = all(isinstance(s, str) for s in sources)
    sources_ref = sources if all_paths else backend.share(sources)     # images themselves: sent once
    t0 = time.perf_counter()
    batch_fn = partial(variant_batch, float_layers=kept, resize=resize)
    parts = backend.map_batches(batch_fn, variants, batch_size, progress, "variants",
                                args=(backend.portable(model_source), qmodel_ref(qmodel, backend), sources_ref,
                                      tuple(modes), thresh, nms, runtime))
    rows = [r for p in parts for r in p]
    _, h, w = model.input_shape
    return MonteCarloResult(variants, rows, tuple(modes), seed, sources,
                            [label_of(s, k) for k, s in enumerate(sources)], time.perf_counter() - t0, worst_k,
                            (w, h), kept, resize)


def save_worst_cases(result: MonteCarloResult, workspace, name: str, k: int | None = None,
                     overwrite: bool = False):
    """Store the k worst variants as an `imageset` entry (PNG, re-rendered exactly from their
    parameters) with parameters and agreement per file in the entry's meta. Returns the Entry."""
    files, cases = {}, []
    size = result.size
    for v, row in result.worst(k):
        stem = Path(result.labels[v.image]).stem
        fname = f"v{v.index:04d}-{stem}.png"
        files[fname] = to_png(render(source_image(result.sources, v.image, size), v))
        cases.append({"file": fname, "image": result.labels[v.image], "params": v.to_dict(),
                      "agreement": {m: row[m] for m in result.modes}, "float_dets": row["float_dets"]})
    meta = {"montecarlo": {"seed": result.seed, "n_variants": len(result.rows), "modes": list(result.modes),
                           "images": result.labels, "summary": {m: result.summary(m) for m in result.modes},
                           "render_size": list(size)}, "cases": cases}
    return workspace.save_bytes(name, "imageset", files, source=",".join(result.labels), method="montecarlo",
                                meta=jsonable(meta), overwrite=overwrite)


def jsonable(x: Any) -> Any:
    """`x` with NumPy scalars as Python numbers, tuples as lists, keys as str and NaN/inf as None (JSON has
    none), so `json.dumps` writes it."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()                   # before the NaN check: a float32 NaN is no Python float
    if isinstance(x, float) and not np.isfinite(x):
        return None                    # JSON has no NaN (mean IoU with no matched pair)
    return x
