"""`report`: size and speed per layer and in total, FLOAT/HYBRID/INT, and a device-fit verdict."""
from __future__ import annotations

import argparse
import sys

from engine.cli.options import (FLOAT_LAYERS_HELP, SIZE_HELP, WEIGHTS_HELP, json_text, layer_list, load_model,
                                load_quantized, number, positive_int)
from engine.quant.modes import MODES
from engine.quant.report import size_speed_report


def add_report_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `report` subcommand to the subparsers of `python -m engine`."""
    s = sub.add_parser("report", help="size and speed per layer and in total, FLOAT/HYBRID/INT; device fit",
                       description="Params, MACs, float32 and int8 bytes, compression and measured latency "
                                   "per layer and mode; with --ram/--flash/--budget-ms a fit verdict.")
    s.add_argument("model", metavar="MODEL", help="a .cfg (then --weights) or an engine model file")
    s.add_argument("--weights", metavar="W", help=WEIGHTS_HELP)
    s.add_argument("--size", help=SIZE_HELP)
    s.add_argument("--quantized", "-q", required=True, metavar="QMODEL", help="quantized model .npz")
    s.add_argument("--repeats", type=positive_int, default=3, help="timed runs per mode; the median is shown (default 3)")
    s.add_argument("--image", help="image to time on (default: a bundled sample)")
    s.add_argument("--ram", type=number("size in MiB", 0, 2.0 ** 30), metavar="MiB", help="device RAM for activations")
    s.add_argument("--flash", type=number("size in MiB", 0, 2.0 ** 30), metavar="MiB",
                   help="device flash for parameters")
    s.add_argument("--budget-ms", type=number("latency in ms", 0, 1e9), help="latency budget")
    s.add_argument("--mode", choices=MODES, default="int", help="mode the fit verdict is for (default int)")
    s.add_argument("--float-layers", metavar="I,J", help=FLOAT_LAYERS_HELP + "; timed FLOAT, sized as float32")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=cmd_report)
    return s


def cmd_report(args: argparse.Namespace) -> int:
    model = load_model(args)
    fl = layer_list(args.float_layers, len(model.layers)) if args.float_layers else None
    rep = size_speed_report(model, load_quantized(args, model), args.repeats, args.image, float_layers=fl)
    fit = None
    if None not in (args.ram, args.flash, args.budget_ms):
        fit = rep.fits(int(args.ram * 2**20), int(args.flash * 2**20), args.budget_ms, args.mode)
    if args.json:
        print(json_text({**rep.to_dict(), "fit": fit}))
    else:
        print(rep.text())
        if fit is not None:
            print(fit["verdict"])
    if fit is None and any(v is not None for v in (args.ram, args.flash, args.budget_ms)):
        print("note: the fit verdict needs all of --ram, --flash and --budget-ms", file=sys.stderr)
    return 0
