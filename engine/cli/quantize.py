"""`quantize` (calibrate, write a quantized model) and `compare` (rank calibration methods)."""
from __future__ import annotations

import argparse
import json
import sys

from engine.cli.options import add_calib_args, check_suffix, json_text, layer_list, load_model, number, output_path
from engine.errors import EngineError
from engine.quant.progress import counted
from engine.quant.refine import pipeline
from engine.quant.refine.pipeline import MARGIN_K
from engine.quant.refine.pipeline import AFTER as REFINE_AFTER  # noqa: F401  (its name, kept for importers)

DEFAULT_METHOD = "minmax"
METHOD_NAMES = ("minmax", "percentile", "mse", "kl", "log2", "aciq", "yolo2_light", "auto")   # the order -h lists
PROFILE_NOTES = {"qwidgets": "qwidgets (default)",
                 "qwidgets_asym": "qwidgets_asym (uint8 activations with zero points, any method)"}


# The lists below are read from the registries when the parser is built, so a calibrator, profile or
# refinement added by architecture.md's recipes is named by -h and accepted without an edit here.
def method_names() -> tuple[str, ...]:
    """Every registered calibration method: METHOD_NAMES' order first, then any other in registry order."""
    from engine.calib import CALIBRATORS
    names = CALIBRATORS.names()
    return tuple(n for n in METHOD_NAMES if n in names) + tuple(n for n in names if n not in METHOD_NAMES)


def profile_names() -> str:
    """Every registered device profile, for --profile's help."""
    from engine.quant.profiles import PROFILES
    return ", ".join(PROFILE_NOTES.get(n, n) for n in PROFILES.names())


def add_quantize_parser(sub: argparse._SubParsersAction) -> None:
    """Add `quantize`."""
    s = sub.add_parser("quantize", help="calibrate and write a quantized model (int8 weights, scales)")
    add_calib_args(s)
    s.add_argument("--method", default=DEFAULT_METHOD,
                   help=f"calibration method: {', '.join(method_names())} (default: {DEFAULT_METHOD}: the best HYBRID "
                        "and within .006 of the best INT mAP@[.5:.95] (aciq) on our validation variants; "
                        "see docs/quantization.md; auto picks per tensor "
                        "by the error at the detection heads and prints its choice)")
    s.add_argument("--settings", metavar="JSON", help='method settings, e.g. \'{"percentile": 99.9}\'')
    s.add_argument("--no-rules", action="store_true",
                   help="calibrate every tensor on its own |x| histogram (no one-sided / shared-scale / first-layer "
                        "rules; yolo2_light never uses them)")
    s.add_argument("--refine", choices=tuple(sorted(pipeline.AFTER + pipeline.BEFORE)), action="append",
                   default=[],
                   help="refinement (repeatable): bias = per-channel bias correction (NNCF FastBiasCorrection "
                        "style) on the calibration images; cle = cross-layer equalization of conv -> leaky -> "
                        "[maxpool] -> conv chains before calibration (Nagel et al., weight ranges), cle_act = the same "
                        "balancing per-channel output ranges on the calibration images; eq = per-layer threshold "
                        "search on the local output error (ncnn's EQ; int8 scales, or uint8 scale + zero point "
                        "with --profile qwidgets_asym), before bias; gptq = weight rounding fitted to each conv's calibration inputs "
                        "(GPTQ/OBQ error compensation, per-channel scales kept), before eq; head = the "
                        "detection heads' objectness / class bias shift measured through the INT network, "
                        "weighted by the FLOAT score, after gptq / eq / bias; margin = the heads' near-threshold "
                        "objectness / class bias measured through the INT network on the calibration images and "
                        "augmentations of them, removed, plus a recall margin of --margin-k robust deviations of "
                        "each logit's error on the objectness and class logits, last. Best INT measured on "
                        "yolov3-tiny: --per-channel --profile qwidgets_asym --refine gptq --refine eq --refine margin "
                        "(docs/quantization.md, rounds 7, 11 and 13)")
    s.add_argument("--margin-k", type=number("--margin-k", 0.0, 10.0, lo_open=False), metavar="K",
                   help="--refine margin: objectness and class margin in robust standard deviations of the "
                        f"near-threshold INT - FLOAT error (default {MARGIN_K:g}; 0 = the bias correction alone)")
    s.add_argument("--target-map", type=number("--target-map", 0.0, 1.0), metavar="MAP",
                   help="keep the fewest layers FLOAT (greedy by measured sensitivity) so INT detections on --val "
                        "reach this mAP@[.5:.95] against FLOAT with no lost detection; prints the trade-off curve")
    s.add_argument("--val", nargs="+", action="extend", metavar="DIR_OR_FILES",
                   help="validation images for --target-map (repeatable: the lists add up)")
    add_backend_arg(s, "--target-map's runs", "--profile onnxruntime")
    s.add_argument("--profile", default="qwidgets", metavar="NAME",
                   help=f"device profile, the integer rules of the target: {profile_names()} (docs/profiles.md)")
    s.add_argument("-o", "--output", required=True, metavar="QMODEL",
                   help="the quantized model file to write (.npz), as read by detect --quantized and the others")
    s.set_defaults(func=cmd_quantize)


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    """Add `compare`."""
    s = sub.add_parser("compare", help="rank calibration methods by fitness to the FLOAT model")
    add_calib_args(s)
    s.add_argument("--images", required=True, nargs="+", action="extend", metavar="DIR_OR_FILES",
                   help="evaluation images: a folder, or image files (repeatable: the lists add up)")
    s.add_argument("--methods", default="log2,kl,minmax,percentile,mse",
                   help="comma-separated methods to rank (default log2,kl,minmax,percentile,mse; auto too: it "
                        "chooses on the --calib images)")
    s.add_argument("--json", action="store_true", help="print the ranking and per-layer statistics as JSON")
    s.add_argument("--profile", default="qwidgets", metavar="NAME",
                   help=f"device profile every method quantizes for: {profile_names()}; onnxruntime lets "
                        "--backend onnxruntime run INT on ORT's integer kernels")
    s.add_argument("--refine", choices=pipeline.AFTER, action="append", default=[],
                   help="refinement applied to every method after calibration, fitted on the --calib images "
                        "(repeatable; as quantize --refine, in the order gptq, eq, bias, head, margin), so that "
                        "methods are ranked as they would be deployed, e.g. --profile qwidgets_asym --refine gptq "
                        "--refine eq --refine margin (the best INT configuration measured, docs/quantization.md)")
    s.add_argument("--margin-k", type=number("--margin-k", 0.0, 10.0, lo_open=False), metavar="K",
                   help=f"--refine margin: objectness and class margin in robust standard deviations (default {MARGIN_K:g})")
    s.add_argument("--float-layers", metavar="I,J",
                   help="layers every method keeps FLOAT in hybrid/int (mixed precision), e.g. 15,22: the methods "
                        "ranked as that deployment runs them, sizes with those layers in float32")
    add_backend_arg(s, "the FLOAT and INT runs (HYBRID and the per-layer statistics stay on numpy)",
                    "--profile onnxruntime")
    add_dask_arg(s)
    s.set_defaults(func=cmd_compare)


def add_backend_arg(s: argparse.ArgumentParser, what: str,
                    ort_models: str = "a model quantized with quantize --profile onnxruntime") -> None:
    """--backend; `ort_models`: which quantized models' INT runs on ORT, in the words of this command (one
    without --profile names quantize's)."""
    s.add_argument("--backend", choices=("numpy", "onnxruntime", "auto"), default="numpy",
                   help=f"where {what} execute: numpy (default), onnxruntime (FLOAT, and INT for {ort_models}; "
                        "an error names what ORT cannot run), auto (ORT where it can)")


def add_dask_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument("--dask", metavar="SCHEDULER",
                   help="run the images' batches on Dask: local:N (N worker processes on this machine, TLS between "
                        "them, closed after) or a scheduler address such as tcp://host:8786 (tls://host:8786 takes this "
                        "client's certificates from Dask's configuration); --backend then says what "
                        "the workers run. The results equal this process's")


def run_backend(args: argparse.Namespace):
    """A context giving what a batch command passes as `backend=`: --backend's name, or with --dask a
    DaskBackend running it (a local cluster closed on the way out, also after an error)."""
    import contextlib
    if getattr(args, "dask", None) is None:      # --dask '' (an unset shell variable) is refused, not run here
        return contextlib.nullcontext(args.backend)
    import logging
    from engine.scale.backends import dask_backend
    # local:N's own workers log at ERROR only: when a run stops (a bad image on a worker, Ctrl-C) Dask's
    # WARNING lines about the batches cancelled and the workers killed at close followed the one error line
    return dask_backend(args.dask, runtime=args.backend, silence_logs=logging.ERROR)


def margin_k(args: argparse.Namespace) -> float:
    """--margin-k (default MARGIN_K), refused without --refine margin, the only step that reads it (a K tried
    without it changed nothing, silently)."""
    if args.margin_k is None:
        return MARGIN_K
    if "margin" not in args.refine:
        raise EngineError(f"--margin-k {args.margin_k:g}: only with --refine margin, the step that reads it")
    return args.margin_k


def check_dask(args: argparse.Namespace) -> None:
    """A malformed --dask is refused before the model is loaded and the images calibrated or run (it was refused
    only when the backend started: `compare` calibrated every --calib image first)."""
    if getattr(args, "dask", None) is not None:
        from engine.scale.backends import dask_workers
        dask_workers(args.dask)


def cmd_quantize(args: argparse.Namespace) -> int:
    from engine.calib.collect import collect
    from engine.quant.fitness import model_size
    from engine.quant.autoquant import quantize
    from engine.quant.profiles import get_profile
    from engine.quant.refine.pipeline import check as check_refine, needs_float_inputs, refine_after
    get_profile(args.profile)                       # an unknown profile fails before the calibration pass
    output_path(args.output, args)                  # before the slow calibration, not after it
    check_suffix(args.output, ".npz", "a quantized model file (.npz)")
    settings = method_settings(args.method, args.settings)
    if args.per_channel:
        _warn_per_tensor(args, settings)
    if (args.target_map is None) != (args.val is None):
        raise EngineError("--target-map and --val go together: the search scores INT detections on --val")
    if args.backend != "numpy" and args.target_map is None:
        raise EngineError(f"--backend {args.backend}: only with --target-map (its search is what quantize runs on a "
                          "backend; the calibration pass runs on numpy)")
    args.margin_k = margin_k(args)
    check_refine(args.refine, where="--refine")     # cle with cle_act fails before the calibration pass
    model = load_model(args)
    source, spec, forward = model, None, None
    if "cle" in args.refine or "cle_act" in args.refine:
        from engine.quant.refine import derived_forward, equalize
        cle_mode = "activations" if "cle_act" in args.refine else "weights"
        model, spec = equalize(source, cle_mode, args.calib, args.resize)   # the equalized model is calibrated
        forward = derived_forward(source, spec)          # on the source's forward, rescaled per channel
    keep = None
    if needs_float_inputs(args.refine):          # they read the calibration pass's FLOAT outputs
        from engine.calib.floats import FloatOutputs
        keep = FloatOutputs(model)
    stats = collect(model, args.calib, args.resize, progress=not args.quiet, keep=keep, forward=forward)
    extra = {"rules": ()} if args.no_rules else {}
    if args.method == "auto":
        extra["images"], extra["resize"] = args.calib, args.resize
        _status(args, "auto: scoring every candidate method's threshold per tensor at the detection heads ...")
    qm = quantize(model, stats, args.method, per_channel=args.per_channel, profile=args.profile, **extra, **settings)
    if spec is not None:
        from engine.quant.refine import attach_equalization
        qm = attach_equalization(qm, spec, cle_mode, source, model)
        model = source                        # from here on the executor equalizes the float model itself
    after = [r for r in pipeline.AFTER if r in args.refine]
    if after:                                 # gptq and margin take seconds to minutes, with no bar of their own
        _status(args, f"refining ({', '.join(after)}, in this order) on the "
                      f"{counted(stats.images, 'calibration image')} ...")
    qm = refine_after(model, qm, args.refine, args.calib, keep, args.resize, args.margin_k)
    if "auto" in qm.meta:
        print(auto_choice_text(qm.meta["auto"]), file=sys.stderr)
    if args.target_map is not None:
        from engine.calib.collect import image_list
        from engine.quant.mixed import search
        _status(args, f"--target-map {args.target_map}: finding the layers to keep FLOAT on the --val images ...")
        res = search(model, qm, image_list(args.val, "validation"), target=args.target_map, backend=args.backend)
        qm = res.apply(qm)
        print(res.table(model), file=sys.stderr)
    qm.save(args.output)
    size = model_size(model, qm)
    print(f"wrote {args.output}: {qm.describe()}, calibrated on {counted(stats.images, 'image')}; int8 {size.int8_bytes:,} "
          f"bytes vs float {size.float_bytes:,} ({size.compression:.1f}% smaller)", file=sys.stderr)
    return 0


def _warn_per_tensor(args: argparse.Namespace, settings: dict) -> None:
    """--per-channel where the method or profile quantizes weights per tensor (yolo2_light's exact rule): the
    file is per-tensor, so say so before the work (the API drops the flag silently, as compare's rows need)."""
    import warnings
    from engine.calib.base import make
    from engine.errors import EngineWarning
    from engine.quant.profiles import get_profile
    if not get_profile(args.profile).weight_choice(make(args.method, **settings), True)[1]:
        by = f"method {args.method}" if args.method == "yolo2_light" else f"profile {args.profile}"
        warnings.warn(f"--per-channel: {by} quantizes weights per tensor (yolo2_light's exact rule); the "
                      "quantized model will be per-tensor", EngineWarning, stacklevel=2)


def auto_choice_text(choice: dict) -> str:
    """`auto`'s choice per tensor, grouped by method: 'auto chose: minmax for input, 0, 1; kl for 2, 3'."""
    by: dict[str, list[str]] = {}
    for nid, m in choice.items():
        by.setdefault(m, []).append(nid)
    return "auto chose: " + "; ".join(f"{m} for {', '.join(ids)}" for m, ids in by.items())


def method_settings(method: str, text: str | None) -> dict:
    """--settings as the keyword arguments the calibrator `method` declares, each a finite number,
    bool or string; an unknown key (a typo) is refused instead of being stored in the model file."""
    import math
    from engine.calib import CALIBRATORS
    from engine.calib.base import known_settings
    cls = CALIBRATORS.get(method)            # EngineError listing the known methods
    if not text:
        return {}
    try:
        settings = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise EngineError(f"--settings {text!r}: not JSON ({err}); e.g. '{{\"percentile\": 99.9}}'") from None
    if not isinstance(settings, dict):
        raise EngineError(f"--settings {text!r}: expected a JSON object of method settings")
    known = known_settings(cls)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise EngineError(f"--settings: {', '.join(map(repr, unknown))} is not a setting of method {method!r} "
                          f"(its settings: {', '.join(known) or 'none'})")
    for k, v in settings.items():
        if not (isinstance(v, (bool, str)) or (isinstance(v, (int, float)) and math.isfinite(v))):
            raise EngineError(f"--settings: {k}={v!r}: expected a finite number, true/false or a string")
    from engine.calib.base import make
    from engine.errors import ArgumentError
    try:
        make(method, **settings)    # a value out of range fails here, not after the calibration pass
    except ArgumentError as err:
        raise EngineError(f"--settings: {err}") from None
    return settings


def _status(args: argparse.Namespace, text: str) -> None:
    """A line on stderr before a silent step of seconds or more (none with --quiet)."""
    if not args.quiet:
        print(text, file=sys.stderr, flush=True)


def cmd_compare(args: argparse.Namespace) -> int:
    from engine.calib.collect import collect
    from engine.scale.compare import compare
    from engine.quant.profiles import get_profile
    get_profile(args.profile)                       # an unknown profile fails before the calibration pass
    check_dask(args)
    args.margin_k = margin_k(args)
    model = load_model(args)
    float_layers = layer_list(args.float_layers, len(model.layers)) if args.float_layers else ()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise EngineError(f"--methods {args.methods!r}: expected comma-separated calibration methods, e.g. kl,minmax")
    from engine.calib import CALIBRATORS
    unknown = [m for m in methods if m not in CALIBRATORS]
    if unknown:
        raise EngineError(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(CALIBRATORS.names())}")
    if args.backend == "onnxruntime":               # a combination ORT cannot run fails before the work
        from engine.export.ort_backend import ort_missing
        why = ort_missing() or (None if get_profile(args.profile).exportable == "onnx-int8" else
                                f"INT under profile '{args.profile}' is not what ORT's integer kernels compute")
        if why:
            raise EngineError(f"--backend onnxruntime: {why}; pass --profile onnxruntime, or --backend numpy|auto")
    stats = collect(model, args.calib, args.resize, progress=not args.quiet)
    after = [r for r in pipeline.AFTER if r in args.refine]
    if after or "auto" in methods:            # before the comparing bar, with no bar of their own
        _status(args, f"quantizing {counted(len(methods), 'method')}"
                      f"{' and refining each (' + ', '.join(after) + ')' if after else ''} ...")
    with run_backend(args) as backend:
        table = compare(model, stats, args.images, methods, per_channel=args.per_channel, resize=args.resize,
                        progress=not args.quiet, calib_images=args.calib, backend=backend, profile=args.profile,
                        refine=args.refine, margin_k=args.margin_k, float_layers=float_layers)
    if args.json:
        print(json_text(table.to_dict()))    # a head conv's range use, a [yolo] layer's local SQNR: null
    else:
        print(table)
        print()
        print(table.layer_table())
    return 0
