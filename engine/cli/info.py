"""`info` (the layer table or graph JSON of a cfg or an engine model file), `convert` (cfg + weights ->
model file), `dump` (every layer's output to an .npz)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from engine.cli.options import SIZE_HELP, add_model_args, forward_for, load_model, output_path
from engine.errors import EngineError
from engine.npzfile import read_npy


def add_info_parser(sub: argparse._SubParsersAction) -> None:
    """Add `info`."""
    s = sub.add_parser("info", help="table of layers: index, type, inputs, output shape, params, MACs")
    s.add_argument("cfg", metavar="MODEL", help="a .cfg or an engine model file (from `convert`)")
    s.add_argument("--size", help=SIZE_HELP)
    s.add_argument("--json", action="store_true", help="the graph as JSON")
    s.set_defaults(func=cmd_info)


def add_convert_parser(sub: argparse._SubParsersAction) -> None:
    """Add `convert`."""
    s = sub.add_parser("convert", help="cfg + weights -> one engine model file (.npz, no pickle)")
    s.add_argument("model", metavar="CFG")
    s.add_argument("weights", metavar="WEIGHTS")
    s.add_argument("-o", "--output", required=True, metavar="MODEL_FILE")
    s.set_defaults(func=cmd_convert)


def add_dump_parser(sub: argparse._SubParsersAction) -> None:
    """Add `dump`."""
    s = sub.add_parser("dump", help="every layer's output to an .npz (keys layer0, layer1, ...)")
    add_model_args(s)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--image")
    g.add_argument("--input", metavar="X.npy", help="a (3,H,W) float32 tensor used as is")
    s.add_argument("-o", "--output", required=True, metavar="OUT.npz")
    s.set_defaults(func=cmd_dump)


def cmd_info(args: argparse.Namespace) -> int:
    from engine.darknet.cfg import parse_size, read_cfg
    from engine.darknet.build import build_graph, build_layers
    from engine.model import is_model_file, load
    # an engine model file embeds its cfg (read as text it fails as "not UTF-8"); loading it also
    # checks its arrays, so `info` tells whether the file is usable
    cfg = load(args.cfg).cfg if is_model_file(args.cfg) else read_cfg(args.cfg)
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
    output_path(args.output, args)
    model = load_model(args)
    out = model.save(args.output)
    print(f"wrote {out} ({out.stat().st_size:,} bytes): {model!r}", file=sys.stderr)
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    output_path(args.output, args)
    model = load_model(args)
    forward = forward_for(model, args)
    if args.input is not None:
        x = read_npy(args.input, error=EngineError)
        if x.dtype != np.float32 or x.ndim != 3 or x.shape[0] != 3:
            raise EngineError(f"{args.input}: expected a (3, H, W) float32 tensor, got {x.dtype} {x.shape}")
    else:
        x = model.preprocess(args.image, args.resize).x
    try:
        outs = forward(x)
    except ValueError as err:
        raise EngineError(f"{args.input or args.image}: {err}") from err
    from engine.model import atomic_savez
    out = atomic_savez(args.output, {f"layer{i}": np.asarray(y, np.float32) for i, y in enumerate(outs)})
    print(f"wrote {out} ({out.stat().st_size:,} bytes): the outputs of {len(outs)} layers as layer0..layer{len(outs) - 1}",
          file=sys.stderr)
    return 0
