"""A small helper around the `onnx.helper` API: unique names, constants, one node group per layer; and
the one place an ONNX Runtime CPU session is made (`ort_session`).

Only `engine.export.onnx_float` creates a `GraphBuilder`, after it has imported `onnx` itself, so
importing this module never needs onnx (it receives the `onnx` module as an argument), nor onnxruntime.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engine.errors import EngineError


def ort_session(source: Any, purpose: str, *, optimize: bool = True, threads: int | None = None
                ) -> tuple[Any, list[str]]:
    """(onnxruntime.InferenceSession on the CPU provider, its output names) for a graph given as a path,
    bytes or an onnx ModelProto. `purpose` names what needs ORT in the error raised when it is not
    installed. `threads`: a fixed intra-op thread count, sequential execution and no spinning (the batch
    backend's sessions: they share the host with the NumPy engine); None: ORT's defaults."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise EngineError(f"{purpose} needs onnxruntime (pip install onnxruntime)") from err
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
    if isinstance(source, (str, Path)):
        data: Any = str(source)
    else:
        data = source if isinstance(source, bytes) else source.SerializeToString()
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return sess, [o.name for o in sess.get_outputs()]


class GraphBuilder:
    """Collects nodes and initializers; `scope` prefixes node names with the Darknet layer (`layer12_`).

    Tensor names: the final output of layer i is always `layer{i}`; intermediates are
    `layer{i}_<what>`; constants are `const_<n>` (deduplicated by value, so a shape or a scalar used
    by many layers is stored once).
    """

    def __init__(self, onnx: Any, opset: int) -> None:
        self.onnx = onnx
        self.opset = opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.scope = "graph"
        self._consts: dict[tuple, str] = {}
        self._used: set[str] = set()

    def name(self, what: str) -> str:
        """A fresh tensor/node name `<scope>_<what>` (with a numeric suffix if already taken)."""
        base = f"{self.scope}_{what}"
        name, k = base, 1
        while name in self._used:
            name, k = f"{base}{k}", k + 1
        self._used.add(name)
        return name

    def op(self, op_type: str, inputs: Sequence[str], what: str | None = None, *, output: str | None = None,
           **attrs: Any) -> str:
        """Append one node `<scope>_<what>` and return its (single) output tensor name."""
        node_name = self.name(what or op_type.lower())
        out = output or node_name
        self._used.add(out)
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out], name=node_name, **attrs))
        return out

    def weight(self, what: str, value: np.ndarray) -> str:
        """A named float32 initializer (conv / gemm parameters), never deduplicated."""
        name = self.name(what)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        """A shared constant initializer (shapes, pads, scalars), deduplicated by dtype and value."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = f"const_{len(self._consts)}"
            self._used.add(name)
            self.initializers.append(self.onnx.numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def scalar(self, value: float) -> str:
        return self.const(value, np.float32)

    # --------------------------------------------------------------- common shape ops
    def slice(self, x: str, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int],
              steps: Sequence[int] | None = None, what: str = "slice", output: str | None = None) -> str:
        ins = [x, self.const(starts), self.const(ends), self.const(axes)]
        if steps is not None:
            ins.append(self.const(steps))
        return self.op("Slice", ins, what, output=output)

    def reshape(self, x: str, shape: Sequence[int], what: str = "reshape", output: str | None = None) -> str:
        return self.op("Reshape", [x, self.const(shape)], what, output=output)

    def pad(self, x: str, pads: Sequence[int], value: float = 0.0, what: str = "pad") -> str:
        """Constant Pad; `pads` = [begin of every axis..., end of every axis...] (ONNX order)."""
        return self.op("Pad", [x, self.const(pads), self.scalar(value)], what, mode="constant")
