"""A 2-thread FLOAT forward simulated from one thread's CPU times: what imbalance and serial code cost.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_schedule.py [--model yolov3-tiny] [--runs 9] [--handoff-us 30]

Wall clock on a shared 2-core host mostly measures the other tenants; CPU time on one thread does
not. This script runs forwards on one thread and times, with `time.thread_time`, every item of every
`parallel_items` call and both halves of every `parallel_for` call (as 2 threads would split it), and
the serial code between them. A 2-thread forward is then simulated: items go to whichever thread is
free first (as the kernels pull them), halves run side by side, each parallel call pays `--handoff-us`
once (submitting to the pool, waking the worker); serial code runs alone. Per layer: CPU on one
thread, the simulated 2-thread wall, and `lost` = simulated - cpu / 2 (imbalance, serial code and
hand-offs; not memory-bandwidth contention, which only a quiet host shows). Medians over runs.
"""
from __future__ import annotations

import argparse
import heapq
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import engine  # noqa: E402
from bench_float import kernel_of, limit_blas_threads, model_files, model_input  # noqa: E402
from engine.kernels import threads  # noqa: E402

PARTS = 2


class Recorder:
    """Replaces parallel_items / parallel_for in every loaded engine module while active; records
    each call's simulated 2-thread span and its CPU, so serial time = layer CPU - calls' CPU."""

    def __init__(self, handoff_ms: float) -> None:
        self.handoff = handoff_ms
        self.depth = 0
        self.span = self.cpu = 0.0
        self.orig = (threads.parallel_items, threads.parallel_for)

    def items(self, count: int, fn) -> None:
        if self.depth:
            return self.orig[0](count, fn)
        self.depth += 1
        try:
            times = []
            for i in range(count):
                t = time.thread_time()
                fn(0, i)
                times.append((time.thread_time() - t) * 1e3)
        finally:
            self.depth -= 1
        free = [0.0] * min(PARTS, count)
        for d in times:                    # each item to the first thread that is free
            heapq.heappush(free, heapq.heappop(free) + d)
        self.add(times, max(free) if free else 0.0, count > 1)

    def loop(self, n: int, fn, work: int) -> None:
        if self.depth or work < threads.PARALLEL_MIN or n < 2:
            self.orig[1](n, fn, work)      # runs inline in the calling thread: serial
            return
        self.depth += 1
        try:
            bounds = [n * i // PARTS for i in range(PARTS + 1)]
            times = []
            for a, b in zip(bounds[:-1], bounds[1:]):
                t = time.thread_time()
                fn(a, b)
                times.append((time.thread_time() - t) * 1e3)
        finally:
            self.depth -= 1
        self.add(times, max(times), True)

    def add(self, times: list[float], span: float, handoff: bool) -> None:
        self.cpu += sum(times)
        self.span += span + (self.handoff if handoff else 0.0)

    def __enter__(self) -> "Recorder":
        self.patched = []
        for mod in list(sys.modules.values()):
            if getattr(mod, "__name__", "").startswith("engine"):
                for name, new, old in (("parallel_items", self.items, self.orig[0]),
                                       ("parallel_for", self.loop, self.orig[1])):
                    if getattr(mod, name, None) is old:
                        setattr(mod, name, new)
                        self.patched.append((mod, name, old))
        return self

    def __exit__(self, *exc) -> None:
        for mod, name, old in self.patched:
            setattr(mod, name, old)


def simulate(model: engine.Model, x: np.ndarray, rec: Recorder) -> tuple[np.ndarray, np.ndarray]:
    """One forward on one thread: (CPU ms, simulated 2-thread ms) per layer."""
    outs, cpu, sim = [], [], []
    for i in range(len(model.layers)):
        rec.span = rec.cpu = 0.0
        t = time.thread_time()
        outs.append(model.run_layer(i, model.inputs_of(i, x, outs)))
        total = (time.thread_time() - t) * 1e3
        cpu.append(total)
        sim.append(total - rec.cpu + rec.span)   # serial part alone, parallel calls at their span
    return np.array(cpu), np.array(sim)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolov3-tiny", choices=("yolov3-tiny", "yolov3"))
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--handoff-us", type=float, default=30.0)
    args = ap.parse_args(argv)
    limit_blas_threads()
    threads.set_blas_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_schedule_") as tmp:
        cfg, weights = model_files(args.model, Path(tmp))
        model = engine.load(cfg, weights)
        x = model.check_input(model_input(model.input_shape))
        model.forward(x)
        rec = Recorder(args.handoff_us / 1e3)
        cpus, sims = [], []
        with rec:
            threads._threads = PARTS   # the kernels cut their work as for 2 threads; the recorder runs it
            try:
                for _ in range(args.runs):
                    c, s = simulate(model, x, rec)
                    cpus.append(c), sims.append(s)
            finally:
                threads._threads = 1
    cpu, sim = np.median(cpus, 0), np.median(sims, 0)
    print(f"{args.model}: {args.runs} forwards on one thread, 2 threads simulated (hand-off {args.handoff_us:.0f} us)")
    print(f"{'idx':>4} {'kind':14} {'kernel':15} {'cpu1':>7} {'sim2':>7} {'lost':>6}")
    for i, layer in enumerate(model.layers):
        print(f"{i:>4} {layer.kind:14} {kernel_of(layer):15} {cpu[i]:7.2f} {sim[i]:7.2f} {sim[i] - cpu[i] / 2:6.2f}")
    print(f"{'sum':>4} {'':14} {'':15} {cpu.sum():7.1f} {sim.sum():7.1f} {sim.sum() - cpu.sum() / 2:6.1f}"
          f"  (lost {100 * (sim.sum() / (cpu.sum() / 2) - 1):.1f}% over a perfect split)")


if __name__ == "__main__":
    main()
