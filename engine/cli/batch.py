"""`montecarlo` (seeded variants of a few images, agreement with FLOAT) and `worst-images` (an image set
ranked worst first), the batch evaluations that `--backend numpy|onnxruntime|auto` can run on ONNX Runtime.

    python -m engine montecarlo MODEL --weights W --quantized Q --images DIR [--variants 200] [--modes int]
                                [--seed 0] [--float-layers I,J] [--resize letterbox|stretch]
                                [--backend numpy|onnxruntime|auto] [--dask local:N|ADDRESS] [--json]
    python -m engine worst-images MODEL --weights W --quantized Q --images DIR [--mode int|hybrid]
                                  [--float-layers I,J] [--backend ...] [--dask local:N|ADDRESS] [--json]

montecarlo --json prints engine.scale.montecarlo.MonteCarloResult.to_dict(); worst-images --json prints
{"mode", "images": [{"index", "name", "map50", "map50_95", "n_float", "lost", "shifted", "extra"}]}.
"""
from __future__ import annotations

import argparse
from engine.cli.options import (FLOAT_LAYERS_HELP, NMS_HELP, RESIZE_HELP, SIZE_HELP, THRESH_HELP, WEIGHTS_HELP,
                                json_text, layer_list, load_model, load_quantized, number, positive_int, seed,
                                thresh_type)
from engine.cli.quantize import add_backend_arg, add_dask_arg, check_dask, run_backend
from engine.darknet.detect import require_head
from engine.errors import EngineError
from engine.quant.modes import QUANT_MODES


def _common(s: argparse.ArgumentParser) -> None:
    s.add_argument("model", metavar="MODEL", help="a .cfg (then --weights) or an engine model file")
    s.add_argument("--weights", metavar="W", help=WEIGHTS_HELP)
    s.add_argument("--quantized", "-q", required=True, metavar="Q", help="quantized model file")
    s.add_argument("--images", required=True, nargs="+", action="extend", metavar="DIR_OR_FILES",
                   help="evaluation images: a folder, or image files (repeatable: the lists add up; FLOAT's "
                        "detections are the reference)")
    s.add_argument("--thresh", type=thresh_type(), default=0.25,
                   help=THRESH_HELP)
    s.add_argument("--nms", type=number("IoU", 0, 1, lo_open=False), default=0.45, help=NMS_HELP)
    s.add_argument("--names", metavar="FILE", help="class names, one per line")
    s.add_argument("--size", help=SIZE_HELP)
    s.add_argument("--json", action="store_true", help="print the result as JSON (docs/cli.md)")


def add_montecarlo_parser(sub: argparse._SubParsersAction) -> None:
    """Add `montecarlo`."""
    s = sub.add_parser("montecarlo", help="agreement with FLOAT over seeded synthetic variants of a few images")
    _common(s)
    s.add_argument("--variants", type=positive_int, default=200, help="how many variants (default 200)")
    s.add_argument("--modes", default="int", help="comma-separated: hybrid and/or int (default int)")
    s.add_argument("--seed", type=seed, default=0, help="random seed of the variants, >= 0 (default 0)")
    s.add_argument("--float-layers", metavar="I,J", help=FLOAT_LAYERS_HELP)
    s.add_argument("--resize", choices=("letterbox", "stretch"), default="letterbox", help=RESIZE_HELP)
    add_backend_arg(s, "FLOAT and the quantized runs")
    add_dask_arg(s)
    s.set_defaults(func=cmd_montecarlo)


def add_worst_parser(sub: argparse._SubParsersAction) -> None:
    """Add `worst-images`."""
    s = sub.add_parser("worst-images", help="images ranked worst first by agreement of the int8 run with FLOAT")
    _common(s)
    s.add_argument("--mode", choices=("int", "hybrid"), default="int", help="the quantized run (default int)")
    s.add_argument("--float-layers", metavar="I,J", help=FLOAT_LAYERS_HELP)
    s.add_argument("--resize", choices=("letterbox", "stretch"), default="letterbox", help=RESIZE_HELP)
    add_backend_arg(s, "FLOAT and the quantized run")
    add_dask_arg(s)
    s.set_defaults(func=cmd_worst)


def cmd_montecarlo(args: argparse.Namespace) -> int:
    from engine.calib.collect import image_list
    from engine.scale.montecarlo import run_montecarlo
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    bad = [m for m in modes if m not in QUANT_MODES]
    if bad or not modes:                     # before loading anything
        why = f"{bad[0]!r} is not one" if bad else "none given"
        raise EngineError(f"--modes {args.modes!r}: expected hybrid and/or int, comma-separated ({why}; FLOAT is "
                          "the reference every mode is compared with)")
    check_dask(args)
    model = load_model(args)
    require_head(model, "montecarlo", args.model)
    qm = load_quantized(args, model)
    fl = layer_list(args.float_layers, len(model.layers)) if args.float_layers else None
    with run_backend(args) as backend:
        res = run_montecarlo(model, qm, image_list(args.images, "evaluation"), n_variants=args.variants, modes=modes,
                             seed=args.seed, thresh=args.thresh, nms=args.nms, backend=backend, float_layers=fl,
                             resize=args.resize)
    print(json_text(res.to_dict()) if args.json else res.report())
    return 0


def cmd_worst(args: argparse.Namespace) -> int:
    from engine.calib.collect import image_list
    from engine.scale.worst import rank_images
    check_dask(args)
    model = load_model(args)
    require_head(model, "worst-images", args.model)
    qm = load_quantized(args, model)
    fl = layer_list(args.float_layers, len(model.layers)) if args.float_layers else sorted(qm.float_layers)
    with run_backend(args) as backend:
        rows = rank_images(model, qm, args.mode, image_list(args.images, "evaluation"), float_layers=fl,
                           resize=args.resize, thresh=args.thresh, nms=args.nms, backend=backend)
    if args.json:
        print(json_text({"mode": args.mode, "images": [r.to_dict() for r in rows]}))
        return 0
    print(f"{'name':<28}{'mAP50':>7}{'mAP':>7}{'FLOAT':>7}{'lost':>6}{'shifted':>8}{'extra':>6}   ({args.mode}, worst first)")
    for r in rows:
        print(f"{r.name[:27]:<28}{r.map50:>7.3f}{r.map50_95:>7.3f}{r.n_float:>7}{r.lost:>6}{r.shifted:>8}{r.extra:>6}")
    return 0
