"""`info` (the layer table or graph JSON of a cfg or an engine model file; a summary of a quantized model
file or a Darknet .weights file), `convert` (cfg + weights -> model file), `dump` (every layer's output to an .npz).

`info` tells the file's kind by its content, not its name: a zip is an .npz whose `format` member says
which (engine model or quantized model), a binary file with a Darknet header whose size is a whole number
of float32 values is a .weights file, and text is a cfg. Anything else is refused with what `info` reads.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from engine.cli.options import (READS, SIZE_HELP, add_model_args, check_suffix, file_kind, forward_for,  # noqa: F401
                                json_text, load_model, npz_kind, output_path)
from engine.errors import CfgError, EngineError
from engine.npzfile import read_npy
from engine.quant.progress import counted


def add_info_parser(sub: argparse._SubParsersAction) -> None:
    """Add `info`."""
    s = sub.add_parser("info", help="layer table of a cfg or model file; summary of a quantized model or .weights file")
    s.add_argument("cfg", metavar="MODEL", help="a .cfg or an engine model file (from `convert`): the layer table; "
                                                "a quantized model file (from `quantize`) or a .weights file: a summary")
    s.add_argument("--size", help=SIZE_HELP)
    s.add_argument("--json", action="store_true", help="the graph as JSON (the summary, for a quantized model or "
                                                       ".weights file)")
    s.set_defaults(func=cmd_info)


def add_convert_parser(sub: argparse._SubParsersAction) -> None:
    """Add `convert`."""
    s = sub.add_parser("convert", help="cfg + weights -> one engine model file (.npz, no pickle)")
    s.add_argument("model", metavar="CFG", help="the Darknet .cfg")
    s.add_argument("weights", metavar="WEIGHTS", help="its Darknet .weights file")
    s.add_argument("-o", "--output", required=True, metavar="MODEL_FILE",
                   help="the engine model file to write (.npz: the cfg and every weight array)")
    s.set_defaults(func=cmd_convert)


def add_dump_parser(sub: argparse._SubParsersAction) -> None:
    """Add `dump`."""
    s = sub.add_parser("dump", help="every layer's output to an .npz (keys layer0, layer1, ...)")
    add_model_args(s)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--image", help="the image to run (letterboxed or stretched to the input size, see --resize)")
    g.add_argument("--input", metavar="X.npy", help="a (3,H,W) float32 tensor used as is")
    s.add_argument("-o", "--output", required=True, metavar="OUT.npz",
                   help="the .npz to write: every layer's output as layer0, layer1, ... (float32, CxHxW)")
    s.set_defaults(func=cmd_dump)


def cmd_info(args: argparse.Namespace) -> int:
    from engine.darknet.cfg import parse_size, read_cfg
    from engine.darknet.build import build_at_size, build_graph, build_layers
    from engine.model import load
    kind = file_kind(args.cfg)
    if kind in ("quantized", "weights"):
        if args.size:
            raise EngineError(f"{args.cfg}: --size applies to a cfg or an engine model file, not to a "
                              f"{'quantized model file' if kind == 'quantized' else '.weights file'}")
        summary = quantized_summary(args.cfg) if kind == "quantized" else weights_summary(args.cfg)
        print(json_text(summary) if args.json else summary_text(summary))
        return 0
    # an engine model file embeds its cfg (read as text it fails as "not UTF-8"); loading it also
    # checks its arrays, so `info` tells whether the file is usable
    try:
        cfg = load(args.cfg).cfg if kind == "model" else read_cfg(args.cfg)
    except CfgError as err:
        if kind != "text":
            raise
        raise CfgError(f"{err}; the file has no [section] line, so it is no Darknet cfg: {READS}") from None
    if args.size:
        cfg, layers = build_at_size(cfg, *parse_size(args.size))
    else:
        layers = build_layers(cfg)
    net = cfg.net
    graph = build_graph(Path(args.cfg).stem, (net.get_int("channels", 3), net.get_int("height"),
                                              net.get_int("width")), layers)
    if args.json:
        print(json_text(graph.to_dict()))
        return 0
    print(f"{'idx':>4} {'type':<14} {'inputs':<12} {'output (CxHxW)':<18} {'params':>12} {'MACs':>15}")
    for n in graph:
        shape = "x".join(str(v) for v in n.out_shape)
        print(f"{n.index:>4} {n.kind:<14} {','.join(n.inputs):<12} {shape:<18} {n.params:>12,} {n.macs:>15,}")
    c, h, w = graph.input_shape
    print(f"input {c}x{h}x{w}; {counted(len(graph), 'layer')}; {graph.total_params:,} params; "
          f"{graph.total_macs:,} MACs ({graph.total_macs / 1e9:.3f} G)")
    return 0


def quantized_summary(path: str) -> dict:
    """What a quantized model file holds (loading it checks every array against its cfg)."""
    from engine.darknet.build import build_layers
    from engine.darknet.cfg import parse_cfg
    from engine.quant.qmodel import QMODEL_FORMAT, QuantizedModel
    from engine.quant.refine.pipeline import recorded
    qm = QuantizedModel.load(path)
    cfg = parse_cfg(qm.cfg_text, f"{path} (embedded cfg)")
    net = cfg.net
    return {"kind": "quantized", "file": str(path), "format": QMODEL_FORMAT, "method": qm.method,
            "settings": qm.settings, "profile": qm.profile, "per_channel": qm.per_channel,
            "refinements": list(recorded(qm.meta)), "float_layers": list(qm.float_layers),
            "model_name": qm.model_name, "fingerprint": qm.fingerprint, "layers": len(build_layers(cfg)),
            "int8_layers": sorted(qm.layers),
            "input_shape": [net.get_int("channels", 3), net.get_int("height"), net.get_int("width")],
            "calibration_images": qm.stats.images if qm.stats is not None else None,
            "int8_bytes": qm.int8_bytes()}


def weights_summary(path: str) -> dict:
    """A Darknet .weights file's header and size (which layers it fits needs its cfg)."""
    from engine.darknet.weights import read_header
    with open(path, "rb") as f:
        header, size = read_header(f.read(20), Path(path).name), os.fstat(f.fileno()).st_size
    return {"kind": "weights", "file": str(path), "version": [header.major, header.minor, header.revision],
            "header_bytes": header.size, "seen": header.seen, "floats": (size - header.size) // 4}


def summary_text(s: dict) -> str:
    """A summary of `quantized_summary` or `weights_summary` as aligned "field  value" lines."""
    if s["kind"] == "weights":
        major, minor, revision = s["version"]
        return (f"Darknet weights {s['file']}\n"
                f"header        version {major}.{minor}.{revision} ({s['header_bytes']} bytes), "
                f"trained on {s['seen']:,} images\n"
                f"parameters    {s['floats']:,} float32 values\n"
                f"(the layers they fill are in the cfg: python -m engine info CFG)")
    settings = ", ".join(f"{k}={v}" for k, v in sorted(s["settings"].items()))
    c, h, w = s["input_shape"]
    images = s["calibration_images"]
    rows = [("method", s["method"] + (f" ({settings})" if settings else "")),
            ("profile", s["profile"]),
            ("weights", "per-channel" if s["per_channel"] else "per-tensor"),
            ("refinements", ", ".join(s["refinements"]) or "none"),
            ("float layers", ", ".join(map(str, s["float_layers"])) or "none"),
            ("source model", f"{s['model_name']}, fingerprint {s['fingerprint']}"),
            ("layers", f"{s['layers']} ({len(s['int8_layers'])} with int8 weights), input {c}x{h}x{w}"),
            ("calibration", "no histograms kept" if images is None else counted(images, "image")),
            ("int8 size", f"{s['int8_bytes']:,} bytes")]
    return "\n".join([f"quantized model {s['file']} ({s['format']})"] + [f"{k:<14}{v}" for k, v in rows])


def cmd_convert(args: argparse.Namespace) -> int:
    output_path(args.output, args)
    check_suffix(args.output, ".npz", "an engine model file (.npz)")
    model = load_model(args)
    out = model.save(args.output)
    print(f"wrote {out} ({out.stat().st_size:,} bytes): {model!r}", file=sys.stderr)
    return 0


def _input_tensor(path: str) -> np.ndarray:
    """--input X.npy; a photo or an .npz given there is named as such (read_npy would report the bytes it found
    instead of .npy's magic string)."""
    from engine.cli.options import looks_like
    from engine.filekind import read_head
    try:
        npy = read_head(path)[0].startswith(b"\x93NUMPY")
    except OSError:
        npy = True                       # missing or no regular file: read_npy says why
    if not npy:
        raise EngineError(f"--input {path}: cannot read a .npy tensor: this is {looks_like(path)}; --input expects "
                          "a (3, H, W) float32 array written by np.save (a photo goes to --image)")
    return read_npy(path, error=EngineError)


def cmd_dump(args: argparse.Namespace) -> int:
    output_path(args.output, args)
    check_suffix(args.output, ".npz", "an .npz of every layer's output")
    model = load_model(args)
    forward = forward_for(model, args)
    if args.input is not None:
        x = _input_tensor(args.input)
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
    print(f"wrote {out} ({out.stat().st_size:,} bytes): the outputs of {counted(len(outs), 'layer')} as layer0..layer{len(outs) - 1}",
          file=sys.stderr)
    return 0
