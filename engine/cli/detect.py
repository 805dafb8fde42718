"""`detect`: objects in images, as text or JSON (FLOAT, or HYBRID/INT with a quantized model)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.cli.options import add_model_args, forward_for, load_model
from engine.errors import EngineError


def add_detect_parser(sub: argparse._SubParsersAction) -> None:
    """Add `detect`."""
    s = sub.add_parser("detect", help="detect objects in images")
    add_model_args(s)
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.add_argument("--thresh", type=float, default=0.25)
    s.add_argument("--nms", type=float, default=0.45)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_detect)


def cmd_detect(args: argparse.Namespace) -> int:
    from engine.darknet.detect import detect_outputs
    model = load_model(args)
    forward = forward_for(model, args)
    result: dict[str, dict] = {}
    failed = 0
    for image in args.images:
        name = Path(image).name
        try:
            pre = model.preprocess(image, args.resize)
            dets = detect_outputs(model, forward(pre.x), pre, args.thresh, args.nms)
        except EngineError as err:
            failed += 1
            result[name] = {"error": str(err), "detections": []}
            print(f"error: {err}", file=sys.stderr)
            continue
        result[name] = {"width": pre.image_w, "height": pre.image_h, "detections": [d.to_dict() for d in dets]}
    if args.json:
        print(json.dumps({"images": result}, indent=1))
    else:
        for name, r in result.items():
            print(f"{name}: {len(r['detections'])} detections")
            for d in r["detections"]:
                print(f"  {d['name']}: {100 * d['score']:.0f}%  box ({d['x1']:.0f}, {d['y1']:.0f}) - "
                      f"({d['x2']:.0f}, {d['y2']:.0f})")
    return 1 if failed else 0
