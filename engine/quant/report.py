"""Size and speed report: per layer and whole model, and whether it fits a device.

    rep = size_speed_report(model, qmodel, repeats=3)
    print(rep.text())                                   # per-layer table + totals
    rep.fits(device_ram_bytes=2 << 20, flash_bytes=16 << 20, latency_budget_ms=500)

Per layer: params, MACs, float32 bytes, int8 bytes (int8 weights + int32 biases + float32
scales, as `QuantizedModel.int8_bytes`; layers without an int8 form, and the layers kept FLOAT
(mixed precision: `float_layers`, by default the quantized model's own), keep float32), compression,
and the median latency of the layer in each mode. Latency: the same `Executor.run_layer` calls
that `Executor.run` makes, timed one by one with `time.perf_counter`, modes interleaved within each
repeat (FLOAT, HYBRID, INT, FLOAT, ...) so a machine-wide slowdown hits every mode alike, median
per layer over `repeats`. Peak activation memory is the largest sum of live tensors (a tensor
lives from its layer until its last consumer) at 4 bytes (FLOAT/HYBRID) or 1 byte (INT,
int8 tensors; float heads stay 4) per value.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from engine.quant.modes import MODES, Mode, float_layer_indices


@dataclass
class SizeSpeedReport:
    model: str
    rows: list[dict]
    totals: dict
    peak_activation_bytes: dict[str, int]
    repeats: int
    notes: list[str] = field(default_factory=list)
    float_layers: tuple[int, ...] = ()      # kept FLOAT in HYBRID/INT: float32 weights and activations

    def latency_ms(self, mode: str) -> float:
        return self.totals[f"{mode}_ms"]

    def fits(self, device_ram_bytes: int, flash_bytes: int, latency_budget_ms: float, mode: str = "int") -> dict:
        """Does `mode` fit? Flash holds the parameters (int8 form for hybrid/int); RAM holds the peak
        of live activations; latency is this machine's measured median (scale it for the device)."""
        params = self.totals["float_bytes"] if mode == Mode.FLOAT else self.totals["int8_bytes"]
        ram = self.peak_activation_bytes[mode]
        ms = self.latency_ms(mode)
        checks = {"flash": (params, flash_bytes), "ram": (ram, device_ram_bytes),
                  "latency_ms": (ms, latency_budget_ms)}
        out = {k: {"needed": need, "available": have, "ok": bool(need <= have)} for k, (need, have) in checks.items()}
        failed = [k for k, v in out.items() if not v["ok"]]
        out["mode"] = mode
        out["fits"] = not failed
        if failed:
            out["verdict"] = f"{mode.upper()} does not fit: " + ", ".join(
                f"{k} needs {_fmt(k, out[k]['needed'])} > {_fmt(k, out[k]['available'])}" for k in failed)
        else:
            out["verdict"] = (f"{mode.upper()} fits: {_mb(params)} params in {_mb(flash_bytes)} flash, {_mb(ram)} "
                              f"peak activations in {_mb(device_ram_bytes)} RAM, {ms:.0f} ms <= "
                              f"{latency_budget_ms:.0f} ms")
        return out

    def to_dict(self) -> dict:
        return {"model": self.model, "repeats": self.repeats, "float_layers": list(self.float_layers),
                "rows": self.rows, "totals": self.totals, "peak_activation_bytes": self.peak_activation_bytes,
                "notes": self.notes}

    def text(self, layers: bool = True) -> str:
        head = (f"{'idx':>4} {'kind':<14}{'params':>11}{'MMACs':>9}{'float KB':>10}{'int8 KB':>9}{'compr':>7}"
                + "".join(f"{m + ' ms':>10}" for m in MODES))
        lines = [head] if layers else []
        for r in self.rows if layers else []:
            lines.append(f"{r['index']:>4} {r['kind']:<14}{r['params']:>11,}{r['macs'] / 1e6:>9.1f}"
                         f"{r['float_bytes'] / 1024:>10.1f}{r['int8_bytes'] / 1024:>9.1f}{r['compression_pct']:>6.1f}%"
                         + "".join(f"{r[m + '_ms']:>10.2f}" for m in MODES))
        t = self.totals
        lines.append(f"{'total':<19}{t['params']:>11,}{t['macs'] / 1e6:>9.1f}{t['float_bytes'] / 1024:>10.1f}"
                     f"{t['int8_bytes'] / 1024:>9.1f}{t['compression_pct']:>6.1f}%"
                     + "".join(f"{t[m + '_ms']:>10.1f}" for m in MODES))
        lines.append("peak activations: " + ", ".join(f"{m} {_mb(b)}" for m, b in self.peak_activation_bytes.items()))
        lines += self.notes
        return "\n".join(lines)


def _mb(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def _fmt(key: str, v: float) -> str:
    return f"{v:.0f} ms" if key == "latency_ms" else _mb(v)


def layer_bytes(model, qmodel, float_layers: Iterable[int] | None = None) -> list[tuple[int, int]]:
    """(float32 bytes, int8-model bytes) per layer; a layer kept FLOAT (`float_layers`, None: the quantized
    model's own) is deployed with its float32 weights, so it counts them in both."""
    kept = set(qmodel.float_layers if float_layers is None and qmodel is not None else float_layers or ())
    out = []
    for layer in model.layers:
        f = 4 * layer.num_params
        int8 = qmodel is not None and layer.index in qmodel.layers and layer.index not in kept
        out.append((f, qmodel.int8_bytes([layer.index]) if int8 else f))
    return out


def peak_activations(model, itemsize) -> int:
    """Largest sum of live tensor bytes over the layer sequence; itemsize(index) -> bytes per value."""
    last_use = {i: i for i in range(len(model.layers))}
    for layer in model.layers:
        for src in layer.inputs:
            if src >= 0:
                last_use[src] = max(last_use[src], layer.index)
    size = {i: int(np.prod(l.out_shape)) * itemsize(i) for i, l in enumerate(model.layers)}
    inp = int(np.prod(model.input_shape)) * 4
    last_in = max((l.index for l in model.layers if any(s < 0 for s in l.inputs)), default=0)
    peak = 0
    for k in range(len(model.layers)):
        live = sum(size[i] for i in range(k + 1) if last_use[i] >= k) + (inp if last_in >= k else 0)
        peak = max(peak, live)
    return peak


def time_layers(model, qmodel, x: np.ndarray, modes: Sequence[str], repeats: int,
                float_layers: Iterable[int] | None = None) -> dict[str, np.ndarray]:
    """Median seconds per layer per mode, modes interleaved within each repeat (after one warm-up);
    HYBRID/INT keep `float_layers` FLOAT (None: the quantized model's own)."""
    from engine.quant.executor import Executor, Value
    exs = {m: Executor(model, qmodel, m, float_layers) if m != Mode.FLOAT else Executor(model, None, m)
           for m in modes}
    times = {m: np.zeros((repeats, len(model.layers))) for m in modes}
    for r in range(-1, repeats):                # r = -1: warm-up (caches, prepared weights)
        for m, ex in exs.items():
            xv = Value(f=model.check_input(x))
            values: list = []
            for i in range(len(model.layers)):
                inputs = ex.inputs_of(i, xv, values)
                t0 = time.perf_counter()
                v, _ = ex.run_layer(i, inputs)
                dt = time.perf_counter() - t0
                values.append(v)
                if r >= 0:
                    times[m][r, i] = dt
    return {m: np.median(t, axis=0) for m, t in times.items()}


def size_speed_report(model, qmodel, repeats: int = 3, image=None, modes: Sequence[str] = MODES,
                      float_layers: Iterable[int] | None = None) -> SizeSpeedReport:
    """Per-layer and total size / MACs / latency of `model` in each mode (see the module docstring).

    image: what to time on (default: the first bundled sample photo). float_layers: the layers HYBRID/INT
    keep FLOAT (mixed precision; None: the quantized model's own). Raises ValueError for repeats < 1 or a
    layer the model lacks.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: expected >= 1")
    from engine.quant.executor import Executor
    from engine.imaging.samples import sample_images
    if float_layers is None:
        float_layers = qmodel.float_layers if qmodel is not None else ()
    kept = float_layer_indices(model, float_layers)
    x = model.preprocess(image if image is not None else sample_images()[0]).x
    lat = time_layers(model, qmodel, x, modes, repeats, kept)
    sizes = layer_bytes(model, qmodel, kept)
    rows = []
    for layer, (fb, qb) in zip(model.layers, sizes):
        rows.append({"index": layer.index, "kind": layer.kind, "params": int(layer.num_params), "macs": int(layer.macs),
                     "float_bytes": fb, "int8_bytes": qb, "compression_pct": 100.0 * (1 - qb / fb) if fb else 0.0,
                     **{f"{m}_ms": float(lat[m][layer.index] * 1e3) if m in lat else float("nan") for m in MODES}})
    fb, qb = sum(r["float_bytes"] for r in rows), sum(r["int8_bytes"] for r in rows)
    totals = {"params": sum(r["params"] for r in rows), "macs": sum(r["macs"] for r in rows), "float_bytes": fb,
              "int8_bytes": qb, "compression_pct": 100.0 * (1 - qb / fb) if fb else 0.0,
              **{f"{m}_ms": float(sum(r[f"{m}_ms"] for r in rows)) for m in MODES}}
    int_ex = Executor(model, qmodel, "int", kept) if qmodel is not None else None
    peak = {"float": peak_activations(model, lambda i: 4), "hybrid": peak_activations(model, lambda i: 4)}
    if int_ex is not None:
        peak["int"] = peak_activations(model, lambda i: 1 if int_ex.precision(i) == "int8" else 4)
    notes = [f"latency: median of {repeats} interleaved runs on this machine (NumPy engine, "
             f"{'loaded' if _loaded() else 'idle'} host); use the ratios, not the absolute ms, for a device"]
    if kept:
        notes.append(f"kept FLOAT in hybrid/int (float32 weights and activations): layers {', '.join(map(str, kept))}")
    return SizeSpeedReport(model.graph.name, rows, totals, peak, repeats, notes, kept)


def _loaded() -> bool:
    try:
        import os
        return os.getloadavg()[0] > (os.cpu_count() or 1)
    except OSError:
        return False
