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
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset={opset}; this exporter needs {MIN_OPSET} <= opset <= {newest} "
                         f"(the newest opset of onnx {onnx.__version__})")
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
    proto.ir_version = min(proto.ir_version, _ir_version(onnx, opset))
    onnx.helper.set_model_props(proto, {"darknet_heads": json.dumps(head_info(model, heads)),
                                        "darknet_cfg": model.cfg.text,
                                        "input": "RGB float32 in [0, 1], planar NCHW, letterboxed (Darknet)"})
    return proto


def _shape(model, index: int) -> tuple[int, int, int]:
    return model.input_shape if index < 0 else model.layers[index].out_shape


def _ir_version(onnx: Any, opset: int) -> int:
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
                dynamic_batch: bool = False, check: bool = True) -> Path:
    """Write `model` as an ONNX file (FLOAT, BN folded) and return its path.

    `heads`: "raw" (outputs = the conv outputs feeding [yolo]/[region]) or "activated" (outputs =
    the head layers with Darknet's sigmoids/softmax). `all_outputs=True` also exposes every layer's
    `layer{i}` tensor (debugging). `check` runs `onnx.checker` on the result. Models over ~1.8 GB
    store their weights in `<path>.data` beside the file.

    Raises: EngineError (onnx missing), UnsupportedError (a layer has no ONNX form), ValueError.
    """
    onnx = import_onnx()
    proto = build_onnx(model, heads=heads, opset=opset, all_outputs=all_outputs, dynamic_batch=dynamic_batch)
    p = Path(path)
    big = sum(t.ByteSize() for t in proto.graph.initializer) > EXTERNAL_DATA_BYTES
    if check and not big:
        onnx.checker.check_model(proto)
    from engine.atomic import atomic_write, check_target
    if big:   # a proto over 2 GB cannot be serialised in one piece: onnx writes the .data file itself
        check_target(p)
        onnx.save_model(proto, str(p), save_as_external_data=True, location=f"{p.name}.data")
    else:
        atomic_write(p, proto.SerializeToString())
    if check and big:
        onnx.checker.check_model(str(p))
    return p
