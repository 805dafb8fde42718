"""Command line: `python -m engine info|convert|detect|dump ...` (a contract other tools rely on)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.errors import EngineError

MODES = ("float", "hybrid", "int")


def _load(args: argparse.Namespace):
    from engine.model import load
    return load(args.model, weights=args.weights, names=getattr(args, "names", None), size=getattr(args, "size", None))


SIZE_HELP = "input size WIDTHxHEIGHT or N (default: the cfg's [net] width/height), e.g. 320 or 320x256"


def _executor(model, args: argparse.Namespace):
    """The forward function for --mode (hybrid/int need --quantized)."""
    if args.mode == "float":
        if getattr(args, "quantized", None):
            raise EngineError("--quantized given with --mode float: pass --mode hybrid or --mode int")
        return model.forward
    if not getattr(args, "quantized", None):
        raise EngineError(f"--mode {args.mode} needs --quantized QMODEL (make one with `python -m engine quantize`)")
    from engine.quant.executor import Executor
    from engine.quant.qmodel import QuantizedModel
    float_layers = [int(v) for v in args.float_layers.split(",") if v] if getattr(args, "float_layers", None) else None
    return Executor(model, QuantizedModel.load(args.quantized), args.mode, float_layers).forward


def cmd_info(args: argparse.Namespace) -> int:
    from engine.darknet.cfg import parse_size, read_cfg
    from engine.graph import build_graph, build_layers
    cfg = read_cfg(args.cfg)
    if args.size:
        cfg = cfg.resized(*parse_size(args.size))
    layers = build_layers(cfg)
    net = cfg.net
    graph = build_graph(Path(args.cfg).stem, (net.get_int("channels", 3), net.get_int("height"),
                                              net.get_int("width")), layers)
    if args.json:
        print(json.dumps(graph.to_dict(), indent=1))
        return 0
    print(f"{'idx':>4} {'type':<14} {'inputs':<12} {'output (CxHxW)':<18} {'params':>12} {'MACs':>15}")
    for n in graph:
        shape = "x".join(str(v) for v in n.out_shape)
        print(f"{n.index:>4} {n.kind:<14} {','.join(n.inputs):<12} {shape:<18} {n.params:>12,} {n.macs:>15,}")
    c, h, w = graph.input_shape
    print(f"input {c}x{h}x{w}; {len(graph)} layers; {graph.total_params:,} params; "
          f"{graph.total_macs:,} MACs ({graph.total_macs / 1e9:.3f} G)")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    model = _load(args)
    out = model.save(args.output)
    print(f"wrote {out} ({out.stat().st_size:,} bytes): {model!r}", file=sys.stderr)
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from engine.darknet.detect import detect_outputs
    model = _load(args)
    forward = _executor(model, args)
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


def cmd_dump(args: argparse.Namespace) -> int:
    model = _load(args)
    forward = _executor(model, args)
    if args.input is not None:
        try:
            x = np.load(args.input, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise EngineError(f"{args.input}: cannot read a .npy tensor: {err}") from err
        if x.dtype != np.float32 or x.ndim != 3 or x.shape[0] != 3:
            raise EngineError(f"{args.input}: expected a (3, H, W) float32 tensor, got {x.dtype} {x.shape}")
    else:
        x = model.preprocess(args.image, args.resize).x
    try:
        outs = forward(x)
    except ValueError as err:
        raise EngineError(f"{args.input or args.image}: {err}") from err
    from engine.model import atomic_savez
    atomic_savez(args.output, {f"layer{i}": np.asarray(y, np.float32) for i, y in enumerate(outs)})
    print(f"wrote {args.output}: {len(outs)} layers", file=sys.stderr)
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from engine.calib.collect import collect
    from engine.quant.fitness import model_size
    from engine.quant.qmodel import quantize_model
    model = _load(args)
    stats = collect(model, args.calib, args.resize, progress=not args.quiet)
    settings = json.loads(args.settings) if args.settings else {}
    qm = quantize_model(model, stats, args.method, per_channel=args.per_channel, **settings)
    qm.save(args.output)
    size = model_size(model, qm)
    print(f"wrote {args.output}: {qm.describe()}, calibrated on {stats.images} images; int8 {size.int8_bytes:,} "
          f"bytes vs float {size.float_bytes:,} ({size.compression:.1f}% smaller)", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from engine.calib.collect import collect
    from engine.quant.compare import compare
    model = _load(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    from engine.calib import CALIBRATORS
    unknown = [m for m in methods if m not in CALIBRATORS]
    if unknown:
        raise EngineError(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(CALIBRATORS.names())}")
    stats = collect(model, args.calib, args.resize, progress=not args.quiet)
    table = compare(model, stats, args.images, methods, per_channel=args.per_channel, resize=args.resize,
                    progress=not args.quiet)
    if args.json:
        print(json.dumps(table.to_dict(), indent=1, default=float))
    else:
        print(table)
        print()
        print(table.layer_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine", description="Darknet models in NumPy")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="table of layers: index, type, inputs, output shape, params, MACs")
    s.add_argument("cfg")
    s.add_argument("--size", help=SIZE_HELP)
    s.add_argument("--json", action="store_true", help="the graph as JSON")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("convert", help="cfg + weights -> one engine model file (.npz, no pickle)")
    s.add_argument("model", metavar="CFG")
    s.add_argument("weights", metavar="WEIGHTS")
    s.add_argument("-o", "--output", required=True, metavar="MODEL_FILE")
    s.set_defaults(func=cmd_convert)

    def model_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("model", metavar="MODEL", help="a .cfg (then --weights) or an engine model file")
        s.add_argument("--weights", metavar="W")
        s.add_argument("--mode", choices=MODES, default="float")
        s.add_argument("--resize", choices=("letterbox", "stretch"), default="letterbox")
        s.add_argument("--names", metavar="FILE", help="class names, one per line (default: COCO/VOC by class count)")
        s.add_argument("--quantized", metavar="QMODEL", help="quantized model file for --mode hybrid|int")
        s.add_argument("--float-layers", metavar="I,J", help="keep these layers FLOAT in hybrid/int (mixed precision)")
        s.add_argument("--size", help=SIZE_HELP)

    s = sub.add_parser("detect", help="detect objects in images")
    model_args(s)
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.add_argument("--thresh", type=float, default=0.25)
    s.add_argument("--nms", type=float, default=0.45)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_detect)

    s = sub.add_parser("dump", help="every layer's output to an .npz (keys layer0, layer1, ...)")
    model_args(s)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--image")
    g.add_argument("--input", metavar="X.npy", help="a (3,H,W) float32 tensor used as is")
    s.add_argument("-o", "--output", required=True, metavar="OUT.npz")
    s.set_defaults(func=cmd_dump)

    def calib_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("model", metavar="MODEL", help="a .cfg (then --weights) or an engine model file")
        s.add_argument("--weights", metavar="W")
        s.add_argument("--calib", required=True, metavar="DIR_OR_FILES", nargs="+",
                       help="calibration images: a folder, or image files")
        s.add_argument("--per-channel", action="store_true", help="per-output-channel weight scales")
        s.add_argument("--resize", choices=("letterbox", "stretch"), default="letterbox")
        s.add_argument("--size", help=SIZE_HELP)
        s.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("quantize", help="calibrate and write a quantized model (int8 weights, scales)")
    calib_args(s)
    s.add_argument("--method", default="kl", help="calibration method: log2, kl, minmax, percentile, mse, yolo2_light")
    s.add_argument("--settings", metavar="JSON", help='method settings, e.g. \'{"percentile": 99.9}\'')
    s.add_argument("-o", "--output", required=True, metavar="QMODEL")
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("compare", help="rank calibration methods by fitness to the FLOAT model")
    calib_args(s)
    s.add_argument("--images", required=True, metavar="DIR", help="evaluation images (folder or file)")
    s.add_argument("--methods", default="log2,kl,minmax,percentile,mse")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_compare)

    from engine.cli.export import add_export_parser
    from engine.quant.report import add_report_parser
    add_report_parser(sub)
    add_export_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (EngineError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
