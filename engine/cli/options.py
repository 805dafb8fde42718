"""Options several subcommands share: which model to load (and at what size), in which mode to run it."""
from __future__ import annotations

import argparse

from engine.errors import EngineError
from engine.quant.modes import MODES, Mode

SIZE_HELP = "input size WIDTHxHEIGHT or N (default: the cfg's [net] width/height), e.g. 320 or 320x256"


def add_model_args(s: argparse.ArgumentParser) -> None:
    """MODEL [--weights] [--mode] [--resize] [--names] [--quantized] [--float-layers] [--size]."""
    s.add_argument("model", metavar="MODEL", help="a .cfg (then --weights) or an engine model file")
    s.add_argument("--weights", metavar="W")
    s.add_argument("--mode", choices=MODES, default="float")
    s.add_argument("--resize", choices=("letterbox", "stretch"), default="letterbox")
    s.add_argument("--names", metavar="FILE", help="class names, one per line (default: COCO/VOC by class count)")
    s.add_argument("--quantized", metavar="QMODEL", help="quantized model file for --mode hybrid|int")
    s.add_argument("--float-layers", metavar="I,J", help="keep these layers FLOAT in hybrid/int (mixed precision)")
    s.add_argument("--size", help=SIZE_HELP)


def add_calib_args(s: argparse.ArgumentParser) -> None:
    """MODEL [--weights] --calib ... [--per-channel] [--resize] [--size] [--quiet]."""
    s.add_argument("model", metavar="MODEL", help="a .cfg (then --weights) or an engine model file")
    s.add_argument("--weights", metavar="W")
    s.add_argument("--calib", required=True, metavar="DIR_OR_FILES", nargs="+",
                   help="calibration images: a folder, or image files")
    s.add_argument("--per-channel", action="store_true", help="per-output-channel weight scales")
    s.add_argument("--resize", choices=("letterbox", "stretch"), default="letterbox")
    s.add_argument("--size", help=SIZE_HELP)
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def load_model(args: argparse.Namespace):
    from engine.model import load
    return load(args.model, weights=args.weights, names=getattr(args, "names", None), size=getattr(args, "size", None))


def forward_for(model, args: argparse.Namespace):
    """The forward function for --mode (hybrid/int need --quantized)."""
    if args.mode == Mode.FLOAT:
        if getattr(args, "quantized", None):
            raise EngineError("--quantized given with --mode float: pass --mode hybrid or --mode int")
        return model.forward
    if not getattr(args, "quantized", None):
        raise EngineError(f"--mode {args.mode} needs --quantized QMODEL (make one with `python -m engine quantize`)")
    from engine.quant.executor import Executor
    from engine.quant.qmodel import QuantizedModel
    float_layers = [int(v) for v in args.float_layers.split(",") if v] if getattr(args, "float_layers", None) else None
    return Executor(model, QuantizedModel.load(args.quantized), args.mode, float_layers).forward
