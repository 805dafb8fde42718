"""`python -m engine export MODEL [--weights W] --format onnx|weights|onnx-int8 [--quantized Q] [--size N] -o OUT`.

engine/cli/main.py wires it in with `add_export_parser(sub)`; `cmd_export(args)` returns the exit code
and lets EngineError/ValueError propagate to the CLI's common handler (exit code 2).
"""
from __future__ import annotations

import argparse
import sys

from engine.cli.options import SIZE_HELP, WEIGHTS_HELP, load_quantized

FORMATS = ("onnx", "weights", "onnx-int8")


def add_export_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `export` subcommand to the subparsers of `python -m engine`."""
    s = sub.add_parser("export", help="write a model as ONNX (float, BN folded), integer ONNX (onnx-int8) or a "
                                      "Darknet .weights file",
                       description="ONNX: one node group per Darknet layer, tensors named layer<i>. "
                                   "weights: the Darknet .weights file of the (possibly edited) parameters, "
                                   "e.g. from an engine model file. onnx-int8: the integer graph (QLinearConv, "
                                   "QLinearLeakyRelu, ...) of a model quantized with an ONNX Runtime profile "
                                   "(quantize --profile onnxruntime, avx2_u8s8 or ort_reduce_range), bit-exact with "
                                   "'dump --mode int' in ONNX Runtime.")
    s.add_argument("model", metavar="MODEL", help="a .cfg (then --weights) or an engine model file")
    s.add_argument("--weights", metavar="W", help=WEIGHTS_HELP)
    s.add_argument("--format", choices=FORMATS, default="onnx", help="what to write (default onnx)")
    s.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="the file to write (.onnx, or .weights for --format weights)")
    s.add_argument("--quantized", "-q", metavar="Q", help="onnx-int8: the quantized model file (from quantize --profile)")
    s.add_argument("--heads", choices=("raw", "activated"), default="raw",
                   help="onnx: raw conv outputs feeding [yolo]/[region] (default), or with their activations")
    s.add_argument("--opset", type=int, default=17, help="onnx: opset version (default 17; >= 18 uses Mish)")
    s.add_argument("--all-outputs", action="store_true", help="onnx: expose every layer's output (debugging)")
    s.add_argument("--dynamic-batch", action="store_true", help="onnx: symbolic batch dimension N instead of 1")
    s.add_argument("--size", help=SIZE_HELP + "; the exported input shape (the weights do not depend on it)")
    s.add_argument("--int8-weights", action="store_true",
                   help="onnx-int8, profile onnxruntime: weights as int8 (zero point 0) instead of uint8 (zero point "
                        "128), for an x86 device with VNNI, where ONNX Runtime's u8 x s8 kernel sums exactly: the "
                        "same results, ~1.7x the images/s there; without VNNI that kernel saturates pairs (other results)")
    s.set_defaults(func=cmd_export)
    return s


def cmd_export(args: argparse.Namespace) -> int:
    from engine.cli.options import check_suffix, load_model, output_path
    output_path(args.output, args)
    check_suffix(args.output, *((".weights", "a Darknet .weights file") if args.format == "weights" else
                                (".onnx", "an ONNX model")))
    from engine.errors import EngineError
    if args.int8_weights and args.format != "onnx-int8":
        raise EngineError(f"--int8-weights: only for --format onnx-int8 (got --format {args.format})")
    # an option the format does not read is refused, not dropped: `export M -q Q -o m.onnx` wrote the FLOAT
    # model, and the user deployed it believing it was the quantized one
    if args.quantized and args.format != "onnx-int8":
        raise EngineError(f"--quantized {args.quantized}: only for --format onnx-int8 (--format {args.format} writes "
                          "the float model; the integer graph of a quantized model is --format onnx-int8, for a "
                          "model quantized with --profile onnxruntime, avx2_u8s8 or ort_reduce_range)")
    if args.format == "weights":
        given = [o for o, on in (("--all-outputs", args.all_outputs), ("--dynamic-batch", args.dynamic_batch)) if on]
        if given:
            raise EngineError(f"{' and '.join(given)}: only for an ONNX export (--format weights writes the "
                              "Darknet .weights file)")
    if args.format != "weights":    # the exporters' own errors say "opset=": checked here to name --opset
        from engine.export.onnx_float import check_opset      # MIN_OPSET is onnx-int8's 13 too
        check_opset(args.opset, name="--opset")
    model = load_model(args)
    if args.format == "weights":
        model.save_weights(args.output)
        print(f"wrote {args.output}: Darknet weights {model.header.major}.{model.header.minor}."
              f"{model.header.revision}, {model.graph.total_params:,} floats", file=sys.stderr)
        return 0
    if args.format == "onnx-int8":
        return _export_int8(args, model)
    from engine.export import export_onnx
    out = export_onnx(model, args.output, heads=args.heads, opset=args.opset, all_outputs=args.all_outputs,
                      dynamic_batch=args.dynamic_batch)
    print(f"wrote {out} ({out.stat().st_size:,} bytes): ONNX opset {args.opset}, heads={args.heads}: {model!r}",
          file=sys.stderr)
    return 0


def _export_int8(args: argparse.Namespace, model) -> int:
    from engine.errors import EngineError
    from engine.export.onnx_int8 import export_int8
    if not args.quantized:
        raise EngineError("--format onnx-int8 needs --quantized Q (a model quantized with --profile onnxruntime, avx2_u8s8 or ort_reduce_range)")
    if args.dynamic_batch:
        raise EngineError("--dynamic-batch: the onnx-int8 export has a batch of 1")
    qm = load_quantized(args, model)
    signed = True if args.int8_weights else None
    out = export_int8(model, qm, args.output, heads=args.heads, opset=args.opset, all_outputs=args.all_outputs,
                      signed_weights=signed)
    print(f"wrote {out} ({out.stat().st_size:,} bytes): integer ONNX opset {args.opset}, profile {qm.profile}, "
          f"{qm.describe()}{', int8 weights' if signed else ''}: {model!r}", file=sys.stderr)
    if signed:
        from engine.quant.profiles.avx2_u8s8 import host_u8s8_kernel
        if host_u8s8_kernel() != "vnni":
            print("note: this host's ONNX Runtime u8 x s8 kernel is not VNNI: here the file saturates int16 pairs "
                  "and differs from 'dump --mode int' (profile avx2_u8s8 models that)", file=sys.stderr)
    return 0
