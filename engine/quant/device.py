"""Simulation vs device, layer by layer: what RKNN-Toolkit2's accuracy analysis shows, for any profile.

    from engine.quant.device import sim_vs_device
    table = sim_vs_device(model, qmodel, x)          # x: (C, H, W) float32 network input
    table.rows[12]["propagated_sqnr"], table.rows[12]["device_mismatched"]
    print(table.to_text())
    sim_vs_device(..., on_progress=lambda done, total, what: ..., cancel=threading.Event())   # engine.quant.progress

Per Darknet layer:
* `local_*`: the layer run alone in INT on the FLOAT outputs of its inputs (quantized with their grids)
  vs its FLOAT output: the error this layer adds by itself;
* `propagated_*`: the whole INT run vs FLOAT at this layer: the error accumulated up to here;
* `device_*` (when the profile has a runtime and it is installed, i.e. `onnxruntime` / `avx2_u8s8` with
  onnxruntime): the runtime's output of this layer (the onnx-int8 export with every layer exposed) vs our
  INT: mismatched elements and the largest difference in output steps (0 and 0 when bit-exact), and
  the runtime's own error against FLOAT (`device_sqnr`, `device_cos`).
`*_sqnr` is the SQNR against FLOAT in dB (10 log10 of signal over error energy; higher is better, inf when
equal; the number the graph's sqnr colouring and the layer panel use), `*_cos` the cosine similarity
(1 = same direction), `*_max` the largest absolute difference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.quant.progress import CancelHook, Progress, Steps, unit_name

COLUMNS = ("layer", "kind", "precision", "local_sqnr", "local_cos", "local_max", "propagated_sqnr", "propagated_cos",
           "propagated_max", "device_sqnr", "device_cos", "device_mismatched", "device_steps")


def sqnr_db(ref: np.ndarray, y: np.ndarray) -> float:
    """SQNR of `y` against `ref` in dB: `engine.quant.fitness.error_stats`, the one definition every view uses."""
    from engine.quant.fitness import error_stats
    return float(error_stats(np.asarray(ref, np.float32), np.asarray(y, np.float32)).sqnr_db)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    from engine.kernels.threads import own_threads
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    with own_threads():       # single-threaded BLAS dots: the same bits on any thread count (1e-13 otherwise)
        na, nb, ab = float(np.dot(a64, a64)) ** 0.5, float(np.dot(b64, b64)) ** 0.5, float(a64 @ b64)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return ab / (na * nb)


@dataclass
class DeviceTable:
    profile: str
    runtime: str | None                     # "onnxruntime 1.x" when the device columns were measured
    rows: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    def worst(self, column: str = "local_cos", n: int = 5) -> list[dict[str, Any]]:
        """The n layers with the lowest value of a cosine or SQNR column (the first suspects)."""
        rows = [r for r in self.rows if r.get(column) is not None]
        return sorted(rows, key=lambda r: r[column])[:n]

    def to_text(self) -> str:
        head = f"profile {self.profile}; device: {self.runtime or 'not measured (' + self.note + ')'}"
        lines = [head, "  ".join(f"{c:>17}" if i > 2 else f"{c:>10}" for i, c in enumerate(COLUMNS))]
        for r in self.rows:
            cells = []
            for i, c in enumerate(COLUMNS):
                v = r.get(c)
                text = "-" if v is None else (f"{v:.6f}" if isinstance(v, float) else str(v))
                cells.append(f"{text:>17}" if i > 2 else f"{text:>10}")
            lines.append("  ".join(cells))
        return "\n".join(lines)


def _device_outputs(model, qmodel, x: np.ndarray) -> tuple[dict[str, np.ndarray] | None, str | None, str]:
    from engine.errors import EngineError, UnsupportedError
    from engine.quant.profiles import get_profile
    profile = get_profile(qmodel.profile)
    if profile.exportable is None:
        return None, None, f"profile '{qmodel.profile}' has no runtime to run"
    if (mismatch := profile.host_mismatch()) is not None:
        return None, None, f"not measured here: {mismatch}"
    try:
        import onnxruntime
        from engine.export.onnx_int8 import build_int8, run_ort
        proto = build_int8(model, qmodel, all_outputs=True)
        return run_ort(proto, x), f"onnxruntime {onnxruntime.__version__}", ""
    except ImportError:
        return None, None, "onnxruntime is not installed"
    except (EngineError, UnsupportedError) as err:
        return None, None, str(err)


def sim_vs_device(model, qmodel, x: np.ndarray, device: bool = True, float_layers=None, *,
                  on_progress: Progress | None = None, cancel: CancelHook = None) -> DeviceTable:
    """The per-layer table described in the module docstring, for one input `x` (C, H, W) float32.
    From a Session: `sim_vs_device(s.model, s.qmodel, s.x, float_layers=s.executor.float_layers)`
    (a runtime cannot run layers kept FLOAT inside its integer graph: the device columns stay empty then).

    Progress (`engine.quant.progress`): one step each for the FLOAT run, the INT run and the runtime's run
    (when asked for and possible to try), then one per layer's row ("layer 7 of 24: conv 6");
    `on_progress(done, total, what)` before each, the total exact. `cancel` (Event or callable) is asked
    before each step and, inside the FLOAT and INT runs, between layers (a whole run of a big network at a
    big size takes many seconds): a Cancel waits for one layer. The runtime's run (ONNX Runtime's export and
    session) cannot be stopped inside. Nothing is changed on `model` or `qmodel`.

    Raises:
        Cancelled: `cancel` answered True or `on_progress` raised it."""
    from engine.quant.executor import FLOAT, Executor, Value, reference_outputs
    x = model.check_input(x)
    ex = Executor(model, qmodel, "int", float_layers)
    n, measure = len(model.layers), device and not ex.float_layers
    steps = Steps(2 + measure + n, on_progress, cancel)
    steps.start(f"FLOAT run of {n} layers")
    float_outs = reference_outputs(model, qmodel, Executor(model).forward(x, cancel=cancel))  # equalized twin's, if CLE
    steps.start(f"INT run of {n} layers")
    values, _ = ex.run(x, cancel=cancel)
    if not device:
        dev, runtime, note = None, None, "not requested"
    elif ex.float_layers:
        dev, runtime, note = None, None, f"layers {sorted(ex.float_layers)} are kept FLOAT"
    else:
        steps.start(f"runtime run (profile {qmodel.profile})")
        dev, runtime, note = _device_outputs(model, qmodel, x)
    table = DeviceTable(qmodel.profile, runtime, note=note)
    xv = Value(f=x)
    for layer in model.layers:
        i = layer.index
        steps.start(f"layer {i + 1} of {n}: {unit_name(layer)}")
        ref = float_outs[i]
        sim = values[i].float()
        row: dict[str, Any] = {"layer": i, "kind": layer.kind, "precision": ex.precision(i)}
        if ex.precision(i) == FLOAT:
            local = ref
        else:
            ins = [xv if j < 0 else Value(f=float_outs[j]) for j in layer.inputs]
            local = ex.run_layer(i, ins)[0].float()
        row["local_sqnr"], row["local_cos"] = sqnr_db(ref, local), cosine(local, ref)
        row["local_max"] = float(np.abs(local - ref).max())
        row["propagated_sqnr"], row["propagated_cos"] = sqnr_db(ref, sim), cosine(sim, ref)
        row["propagated_max"] = float(np.abs(sim - ref).max())
        y = dev.get(f"layer{i}") if dev is not None else None
        if y is not None:
            step = values[i].q.scale if values[i].q is not None else None
            diff = np.abs(y.astype(np.float64) - sim)
            row["device_sqnr"], row["device_cos"] = sqnr_db(ref, y), cosine(y, ref)
            row["device_mismatched"] = int(np.count_nonzero(y != sim))
            row["device_steps"] = float(diff.max() / step) if step else float(diff.max())
        table.rows.append(row)
    steps.finish()
    return table
