"""`explain`: which FLOAT detections an INT / HYBRID run shifts or loses on one image, the layers to blame
and a set of layers whose FLOAT execution brings each back (engine/quant/explain.py).

    python -m engine explain MODEL --weights W --quantized Q --image IMG [--mode int|hybrid] [--top 5] --json

JSON: {"image", "detections": [{"class_id", "name", "score", "x1", "y1", "x2", "y2", "status", "iou",
"int_score", "culprits": [{"layer", "recovery"}], "fix"}], "extra": [...]}. `culprits`: at most --top layers
whose FLOAT run alone recovers some of the loss (recovery > 0), best first; none when no single layer does
(the error is spread: only the fix set brings it back). `fix` is verified: `detect --mode int --float-layers
<fix>` on that image finds the detection again."""
from __future__ import annotations

import argparse
from pathlib import Path

from engine.cli.options import (FLOAT_LAYERS_HELP, NMS_HELP, RESIZE_HELP, SIZE_HELP, THRESH_HELP, WEIGHTS_HELP,
                                json_text, layer_list, load_model, load_quantized, number, positive_int, thresh_type)
from engine.quant.progress import counted


def add_explain_parser(sub: argparse._SubParsersAction) -> None:
    """Add `explain`."""
    s = sub.add_parser("explain", help="why an int8 run loses or shifts detections: culprit layers and a fix")
    s.add_argument("model", metavar="MODEL", help="a .cfg (then --weights) or an engine model file")
    s.add_argument("--weights", metavar="W", help=WEIGHTS_HELP)
    s.add_argument("--quantized", "-q", required=True, metavar="Q", help="quantized model file")
    s.add_argument("--image", required=True, metavar="IMG", help="the image whose detections are explained")
    s.add_argument("--mode", choices=("int", "hybrid"), default="int", help="the quantized run (default int)")
    s.add_argument("--top", type=positive_int, default=5,
                   help="culprits listed per detection (default 5): the layers whose FLOAT run alone recovers some "
                        "of its loss, best first (layers that recover nothing are not listed)")
    s.add_argument("--json", action="store_true", help="print the explanation as JSON (docs/cli.md)")
    s.add_argument("--float-layers", metavar="I,J",
                   help=FLOAT_LAYERS_HELP + "; FLOAT in every run, the culprits and the fix are among the others")
    s.add_argument("--thresh", type=thresh_type(), default=0.25,
                   help=THRESH_HELP)
    s.add_argument("--nms", type=number("IoU", 0, 1, lo_open=False), default=0.45, help=NMS_HELP)
    s.add_argument("--resize", choices=("letterbox", "stretch"), default="letterbox", help=RESIZE_HELP)
    s.add_argument("--names", metavar="FILE", help="class names, one per line")
    s.add_argument("--size", help=SIZE_HELP)
    s.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    from engine.darknet.detect import require_head
    from engine.quant.explain import Explainer, explain_report, percent
    model = load_model(args)
    require_head(model, "explain", args.model)
    qm = load_quantized(args, model)
    base = layer_list(args.float_layers, len(model.layers)) if args.float_layers else sorted(qm.float_layers)
    pre = model.preprocess(args.image, args.resize)
    ex = Explainer(model, qm, args.mode, pre, thresh=args.thresh, nms=args.nms, float_layers=base)
    explanations, extra = ex.explain_all()
    report = explain_report(Path(args.image).name, explanations, extra, args.top)
    if args.json:
        print(json_text(report))
        return 0
    print(f"{report['image']}: {counted(len(explanations), 'FLOAT detection')}, {len(extra)} extra in {args.mode.upper()}")
    for d in report["detections"]:
        line = f"  {d['name']} {d['score']:.2f}: {d['status']} (IoU {d['iou']:.2f})"
        if d["status"] != "matched":
            line += ("; culprits " + ", ".join(f"{c['layer']} ({percent(c['recovery'])})" for c in d["culprits"])
                     if d["culprits"] else "; no single layer recovers any of it (the error is spread)")
            line += f"; fix: keep {d['fix']} FLOAT" if d["fix"] else "; no fix found"
        print(line)
    for d in report["extra"]:
        print(f"  extra {d['name']} {d['score']:.2f}")
    return 0
