"""ONNX float export of a loaded model: one node group per Darknet layer, BN folded into the convs.

    from engine.export import export_onnx
    export_onnx(model, "yolov3-tiny.onnx")                   # outputs layer15, layer22 (raw heads)
    export_onnx(model, "t.onnx", heads="activated")          # outputs layer16, layer23 (as forward())

Input `input`: (N, C, H, W) float32, the engine's preprocessed tensor (RGB, /255, letterboxed).
Tensor `layer{i}` is always the engine's `forward(x)[i]` (FLOAT semantics, darknet-semantics.md B.4);
nodes are named `layer{i}_<op>` (`layer12_conv`, `layer12_leaky`). With `heads="raw"` the [yolo] /
[region] / [detection] layers are left out and the graph outputs are their inputs; with
`heads="activated"` they apply the same sigmoids/softmax as the engine. Anchors, masks and classes
of every head are stored as JSON in the model's metadata (`darknet_heads`) for decoders.

`onnx` is an optional dependency (extra `reference`); it is imported only when exporting.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from engine.errors import EngineError, UnsupportedError

HEADS = ("raw", "activated")
MIN_OPSET = 13          # Slice/Pad/Clip/Resize take their parameters as inputs; Softmax is single-axis
EXTERNAL_DATA_BYTES = 1_800_000_000   # protobuf cannot serialise 2 GiB; bigger models go to a side file


def import_onnx() -> Any:
    """The `onnx` module, or an EngineError saying how to install it."""
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401
    except ImportError as err:
        raise EngineError("ONNX export needs the 'onnx' package, which is an optional dependency: "
                          "pip install 'qwidgets[reference]' (or pip install onnx)") from err
    return onnx


def exported_layers(model, heads: str) -> list[int]:
    """Indices of the layers that get ONNX nodes: all, except unconsumed heads when heads="raw"."""
    consumed = {i for layer in model.layers for i in layer.inputs}
    return [l.index for l in model.layers
            if not (heads == "raw" and l.is_head and l.index not in consumed)]


def output_layers(model, heads: str, all_outputs: bool) -> list[int]:
    """Layer indices whose `layer{i}` tensors become graph outputs, in layer order."""
    emitted = exported_layers(model, heads)
    if all_outputs:
        return emitted
    outs = []
    for nid in model.graph.output_ids:
        layer = model.layers[int(nid)]
        outs.append(layer.inputs[0] if layer.index not in emitted else layer.index)
    if any(i < 0 for i in outs):
        raise UnsupportedError("a detection head reads the network input directly; there is no raw head to export")
    return sorted(set(outs))


def check_opset(opset: int, *, name: str = "opset") -> None:
    """Refuses an opset this exporter or the installed onnx cannot write.

    Raises: ValueError naming `name`, the argument as the caller spells it (the CLI's "--opset");
    EngineError if onnx is missing."""
    onnx = import_onnx()
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"{name}={opset}; this exporter needs {MIN_OPSET} <= opset <= {newest} "
                         f"(the newest opset of onnx {onnx.__version__})")


def build_onnx(model, *, heads: str = "raw", opset: int = 17, all_outputs: bool = False,
               dynamic_batch: bool = False) -> Any:
    """The ONNX ModelProto of `model` (FLOAT, BN folded). See the module docstring for the naming.

    Raises: EngineError if onnx is missing; UnsupportedError naming the layer that has no ONNX form;
    ValueError for bad `heads` / `opset`.
    """
    if heads not in HEADS:
        raise ValueError(f"heads={heads!r}; expected one of {', '.join(HEADS)}")
    onnx = import_onnx()
    from engine.export import onnx_heads  # noqa: F401  (registers the head emitters)
    from engine.export.onnx_graph import GraphBuilder
    from engine.export.onnx_ops import EMITTERS
    check_opset(opset)
    b = GraphBuilder(onnx, opset)
    for i in exported_layers(model, heads):
        layer = model.layers[i]
        if layer.kind not in EMITTERS:
            raise UnsupportedError(f"{layer.where()}: [{layer.kind}] has no ONNX export "
                                   f"(exportable: {', '.join(sorted(EMITTERS.names()))})")
        b.scope = f"layer{i}"
        xs = ["input" if j < 0 else f"layer{j}" for j in layer.inputs]
        EMITTERS.get(layer.kind)(b, layer, model.params[i], xs, f"layer{i}")
    batch: int | str = "N" if dynamic_batch else 1
    value = onnx.helper.make_tensor_value_info
    inputs = [value("input", onnx.TensorProto.FLOAT, [batch, *model.input_shape])]
    outputs = [value(f"layer{i}", onnx.TensorProto.FLOAT, [batch, *_shape(model, i)])
               for i in output_layers(model, heads, all_outputs)]
    graph = onnx.helper.make_graph(b.nodes, model.graph.name, inputs, outputs, b.initializers,
                                   doc_string=f"Darknet {model.graph.name} exported by qwidgets engine "
                                              f"(FLOAT, heads={heads})")
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   producer_name="qwidgets-engine", producer_version="0.1.0")
    proto.ir_version = min(proto.ir_version, min_ir_version(onnx, opset))
    onnx.helper.set_model_props(proto, {"darknet_heads": json.dumps(head_info(model, heads)),
                                        "darknet_cfg": model.cfg.text,
                                        "input": "RGB float32 in [0, 1], planar NCHW, letterboxed (Darknet)"})
    return proto


def _shape(model, index: int) -> tuple[int, int, int]:
    return model.input_shape if index < 0 else model.layers[index].out_shape


def min_ir_version(onnx: Any, opset: int) -> int:
    """The oldest IR version that carries `opset`, so older runtimes can load the file."""
    try:
        return onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])
    except Exception:  # unknown to this onnx build: keep its default
        return onnx.IR_VERSION


def head_info(model, heads: str) -> list[dict]:
    """What a decoder needs for each detection head: layer, output tensor, anchors, classes."""
    emitted = set(exported_layers(model, heads))
    info = []
    for layer in model.layers:
        if not layer.is_head:
            continue
        attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in layer.attrs().items()}
        activated = layer.index in emitted
        info.append({"layer": layer.index, "kind": layer.kind, "activated": activated,
                     "output": f"layer{layer.index if activated else layer.inputs[0]}", **attrs})
    return info


def export_onnx(model, path: str | Path, *, heads: str = "raw", opset: int = 17, all_outputs: bool = False,
                dynamic_batch: bool = False, check: bool = True, external_data_bytes: int | None = None) -> Path:
    """Write `model` as an ONNX file (FLOAT, BN folded) and return its path.

    `heads`: "raw" (outputs = the conv outputs feeding [yolo]/[region]) or "activated" (outputs =
    the head layers with Darknet's sigmoids/softmax). `all_outputs=True` also exposes every layer's
    `layer{i}` tensor (debugging). `check` runs `onnx.checker` on the result. Models whose weights
    are over `external_data_bytes` (default EXTERNAL_DATA_BYTES, ~1.8 GB) store them in a side file
    `<name>.<8 hex>.data` beside it, written as a pair with the ONNX file (`write_with_external_data`).

    Raises: EngineError (onnx missing), UnsupportedError (a layer has no ONNX form), ValueError.
    """
    onnx = import_onnx()
    proto = build_onnx(model, heads=heads, opset=opset, all_outputs=all_outputs, dynamic_batch=dynamic_batch)
    p = Path(path)
    limit = EXTERNAL_DATA_BYTES if external_data_bytes is None else external_data_bytes
    big = sum(t.ByteSize() for t in proto.graph.initializer) > limit
    if check and not big:
        onnx.checker.check_model(proto)
    from engine.atomic import atomic_write
    if big:   # a proto over 2 GB cannot be serialised in one piece: weights go to a side file
        write_with_external_data(proto, p)
        if check:
            onnx.checker.check_model(str(p))
    else:
        atomic_write(p, proto.SerializeToString())
    return p


def _external_location(path: Path) -> str | None:
    """The side-file name an existing ONNX file at `path` refers to, or None (absent, unreadable)."""
    onnx = import_onnx()
    try:
        old = onnx.load(str(path), load_external_data=False)
    except Exception:   # an unreadable old file has no side file worth keeping track of
        return None
    for t in old.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                return entry.value
    return None


def write_with_external_data(proto, path: str | Path, *, min_bytes: int = 1024) -> Path:
    """Write `proto` as `path` plus a side file holding every initializer of `min_bytes` or more,
    crash-safe as a pair.

    The side file gets a fresh name (`<name>.<8 hex>.data`). Both files are written to temp names
    beside `path` and fsynced, and only then put in place, the side file first
    (`engine.atomic.atomic_write_all`): a reader always finds an ONNX file whose side file is
    complete, the old pair or the new one. Any failure removes both temps (and the new side file if it
    was already in place); a killed writer leaves temp names the next sweep reclaims. The old side file
    is removed once the new ONNX file is in place. Exports into one folder on one machine take turns on a
    lock of the folder, and under it a side file of `<name>` that the new ONNX file does not name is
    removed too (a writer killed between the two renames left it); on a network file system, where the
    lock would not exclude other machines, that wider clean-up is skipped (docs/reliability.md, Pairs). `proto` is modified (its large tensors
    become external references).
    """
    import secrets
    from engine.atomic import atomic_write_all, check_target, folder_lock
    onnx = import_onnx()
    from onnx.external_data_helper import set_external_data
    p = check_target(Path(path))
    location = f"{p.name}.{secrets.token_hex(4)}.data"
    tensors = [t for t in proto.graph.initializer if t.HasField("raw_data") and len(t.raw_data) >= min_bytes]

    def write_data(f) -> None:
        offset = 0
        for t in tensors:
            pad = -offset % 4096      # page-aligned, as onnx's own writer does, for mmap readers
            f.write(b"\0" * pad)
            offset += pad
            f.write(t.raw_data)
            set_external_data(t, location=location, offset=offset, length=len(t.raw_data))
            offset += len(t.raw_data)
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL

    with folder_lock(p.parent) as locked:
        old_location = _external_location(p) if p.exists() else None
        # the side file first: the ONNX file's bytes name it, and are serialised once it is written
        atomic_write_all([(p.with_name(location), write_data), (p, lambda f: write_proto(proto, f))])
        # only side files this writer names (or the former fixed `<name>.data`), never any path the old
        # file pointed at: a hostile ONNX file must not make an export delete an unrelated file
        ours = re.compile(re.escape(p.name) + r"(\.[0-9a-f]{8})?\.data")
        stale = {old_location} if old_location and ours.fullmatch(old_location) else set()
        if locked:          # no other export into this folder is between its two renames
            stale |= {e.name for e in os.scandir(p.parent) if ours.fullmatch(e.name) and not e.is_dir(follow_symlinks=False)}
        for name in stale - {location}:
            p.with_name(name).unlink(missing_ok=True)
    return p


def write_proto(proto, f) -> None:
    """Serialise an ONNX ModelProto into the open binary file `f` (what an export's writer calls)."""
    f.write(proto.SerializeToString())
