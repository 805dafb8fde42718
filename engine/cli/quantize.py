"""`quantize` (calibrate, write a quantized model) and `compare` (rank calibration methods)."""
from __future__ import annotations

import argparse
import json
import sys

from engine.cli.options import add_calib_args, load_model, output_path
from engine.errors import EngineError


def add_quantize_parser(sub: argparse._SubParsersAction) -> None:
    """Add `quantize`."""
    s = sub.add_parser("quantize", help="calibrate and write a quantized model (int8 weights, scales)")
    add_calib_args(s)
    s.add_argument("--method", default="kl", help="calibration method: log2, kl, minmax, percentile, mse, yolo2_light")
    s.add_argument("--settings", metavar="JSON", help='method settings, e.g. \'{"percentile": 99.9}\'')
    s.add_argument("--profile", default="qwidgets", metavar="NAME",
                   help="device profile, the integer rules of the target: qwidgets (default), onnxruntime, "
                        "avx2_u8s8, ort_reduce_range, yolo2_light (docs/profiles.md)")
    s.add_argument("-o", "--output", required=True, metavar="QMODEL")
    s.set_defaults(func=cmd_quantize)


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    """Add `compare`."""
    s = sub.add_parser("compare", help="rank calibration methods by fitness to the FLOAT model")
    add_calib_args(s)
    s.add_argument("--images", required=True, metavar="DIR", help="evaluation images (folder or file)")
    s.add_argument("--methods", default="log2,kl,minmax,percentile,mse")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_compare)


def cmd_quantize(args: argparse.Namespace) -> int:
    from engine.calib.collect import collect
    from engine.quant.fitness import model_size
    from engine.quant.profiles import get_profile
    from engine.quant.qmodel import quantize_model
    get_profile(args.profile)                       # an unknown profile fails before the calibration pass
    output_path(args.output)                        # before the slow calibration, not after it
    settings = method_settings(args.method, args.settings)
    model = load_model(args)
    stats = collect(model, args.calib, args.resize, progress=not args.quiet)
    qm = quantize_model(model, stats, args.method, per_channel=args.per_channel, profile=args.profile, **settings)
    qm.save(args.output)
    size = model_size(model, qm)
    print(f"wrote {args.output}: {qm.describe()}, calibrated on {stats.images} images; int8 {size.int8_bytes:,} "
          f"bytes vs float {size.float_bytes:,} ({size.compression:.1f}% smaller)", file=sys.stderr)
    return 0


def method_settings(method: str, text: str | None) -> dict:
    """--settings as the keyword arguments the calibrator `method` declares, each a finite number,
    bool or string; an unknown key (a typo) is refused instead of being stored in the model file."""
    import inspect
    import math
    from engine.calib import CALIBRATORS
    cls = CALIBRATORS.get(method)            # EngineError listing the known methods
    if not text:
        return {}
    try:
        settings = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise EngineError(f"--settings {text!r}: not JSON ({err}); e.g. '{{\"percentile\": 99.9}}'") from None
    if not isinstance(settings, dict):
        raise EngineError(f"--settings {text!r}: expected a JSON object of method settings")
    known = [n for n, p in inspect.signature(cls.__init__).parameters.items()
             if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise EngineError(f"--settings: {', '.join(map(repr, unknown))} is not a setting of method {method!r} "
                          f"(its settings: {', '.join(known) or 'none'})")
    for k, v in settings.items():
        if not (isinstance(v, (bool, str)) or (isinstance(v, (int, float)) and math.isfinite(v))):
            raise EngineError(f"--settings: {k}={v!r}: expected a finite number, true/false or a string")
    return settings


def cmd_compare(args: argparse.Namespace) -> int:
    from engine.calib.collect import collect
    from engine.scale.compare import compare
    model = load_model(args)
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
