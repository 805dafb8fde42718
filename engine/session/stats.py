"""Inspection data for one tensor: summary statistics and histogram counts (what panels show)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from engine.kernels.threads import own_threads, parallel_items
from engine.quant.fitness import STATS_BLOCK, dequantized_block, error_stats
from engine.quant.intops import band_buffer
from engine.quant.qtensor import QTensor

CODE_BLOCK = 1 << 16     # codes per bincount of code_counts


@dataclass
class TensorSummary:
    shape: tuple[int, ...]
    min: float
    max: float
    mean: float
    std: float
    zeros: float                 # fraction of exact zeros
    range_use: float | None      # max|q| / 127 for int8 tensors
    saturation: float | None     # saturated / values, when known

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(x: np.ndarray, q: np.ndarray | None = None, saturated: int | None = None) -> TensorSummary:
    x64 = x.astype(np.float64, copy=False)
    return TensorSummary(tuple(x.shape), float(x64.min()), float(x64.max()), float(x64.mean()), float(x64.std()),
                         float(np.count_nonzero(x == 0) / max(1, x.size)),
                         float(np.abs(q.astype(np.int16)).max() / 127) if q is not None and q.size else None,
                         None if saturated is None else saturated / max(1, x.size))


def histogram(x: np.ndarray, bins: int = 64, log2: bool = False, lo: float | None = None,
              hi: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges). log2=True bins |x| by octave (edges 2**k), zeros counted in the first bin."""
    if log2:
        a = np.abs(x[x != 0]).astype(np.float64)
        if a.size == 0:
            return np.array([x.size]), np.array([0.0, 1.0])
        _, e = np.frexp(a)
        k0, k1 = int(e.min()) - 1, int(e.max())
        counts = np.bincount(e - 1 - k0, minlength=k1 - k0)
        counts[0] += x.size - a.size
        return counts, np.ldexp(1.0, np.arange(k0, k1 + 1))
    lo = float(x.min()) if lo is None else lo
    hi = float(x.max()) if hi is None else hi
    if hi <= lo:
        hi = lo + 1.0
    return np.histogram(x, bins=bins, range=(lo, hi))


# ---------------------------------------------------------------------------------------------------------
# What the Explorer's panels show. Every number a view displays is computed here (or by Session), so two
# views can never disagree: the graph overlay's SQNR and the layer panel's SQNR row both come from
# `engine.quant.fitness.error_stats` on the same tensors.

def histogram_counts(x: np.ndarray, bins: int | Sequence[float] = 128, log2: bool = False,
                     range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of `x` as (counts int64, edges float64) for display.

    log2=False: `np.histogram(x, bins, range)` (equal-width bins over [min, max] by default).
    log2=True: octaves of |x| for x != 0: bin k counts 2**e_k <= |x| < 2**(e_k + 1), edges are
    consecutive powers of two spanning the data (`bins`, when an int, keeps the top `bins`
    octaves; smaller magnitudes are dropped). Zeros are not counted in log2 mode.
    """
    x = np.asarray(x).reshape(-1)
    if not log2:
        counts, edges = np.histogram(x, bins=bins, range=range)
        return counts.astype(np.int64), edges.astype(np.float64)
    a = np.abs(x[x != 0]).astype(np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return np.zeros(1, np.int64), np.array([0.5, 1.0])
    _, e = np.frexp(a)          # a = m * 2**e with 0.5 <= m < 1, so floor(log2 a) = e - 1 exactly
    e = e.astype(np.int64) - 1
    lo, hi = int(e.min()), int(e.max())
    if isinstance(bins, (int, np.integer)) and hi - lo + 1 > bins:
        lo = hi - int(bins) + 1
        e = e[e >= lo]
    counts = np.bincount(e - lo, minlength=hi - lo + 1).astype(np.int64)
    return counts, np.ldexp(1.0, np.arange(lo, hi + 2)).astype(np.float64)


def code_counts(qt) -> np.ndarray:
    """How many elements of an int8 / uint8 `QTensor` hold each code (256 counts, index = the code's byte)."""
    q = np.ascontiguousarray(qt.q).reshape(-1)
    if q.dtype not in (np.int8, np.uint8):
        raise TypeError(f"code_counts: expected int8 or uint8 codes, got {q.dtype}")
    # in blocks: bincount widens its input to intp, a 22 MB temporary for a yolov3 208x208x64 map
    u, out = q.view(np.uint8), np.zeros(256, np.int64)
    for lo in range(0, u.size, CODE_BLOCK):
        out += np.bincount(u[lo:lo + CODE_BLOCK], minlength=256)
    return out


def code_values(qt) -> np.ndarray:
    """The 256 real values of `qt`'s codes in byte order, computed by `QTensor.dequantize` (float32)."""
    codes = np.arange(256, dtype=np.uint8).view(np.asarray(qt.q).dtype)
    return QTensor(codes.reshape(1, 1, -1), qt.scale, qt.zero_point).dequantize().reshape(-1)


def qtensor_histogram_counts(qt, bins: int | Sequence[float] = 128,
                             range: tuple[float, float] | None = None,
                             codes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`histogram_counts(qt.dequantize(), bins)` of an int8 / uint8 `QTensor` without its float copy.

    Every element is one of at most 256 real values, the dequantized codes: the codes are counted once
    (a bincount over the bytes; `codes`: that `code_counts(qt)` already made), then those values,
    computed by the same `dequantize`, are binned by `np.histogram` with their counts as weights. Same
    edges (the min and max of the values present are the float tensor's), same bin for every value:
    the same counts, several times faster on big tensors. `qt` may be a list of QTensors (a route's
    concatenated inputs, `codes` then a list too): one histogram of all their values.
    """
    qts = list(qt) if isinstance(qt, (list, tuple)) else [qt]
    ns = list(codes) if isinstance(qt, (list, tuple)) and codes is not None else (
        [codes] if codes is not None else [code_counts(q) for q in qts])
    parts = [(code_values(q)[n > 0], n[n > 0]) for q, n in zip(qts, ns)]
    if range is None and len(parts) > 1:
        # np.histogram's default range is the data's (min, max), as float32 scalars (float32 edges): the
        # same edges for every part
        range = (min((v.min() for v, _ in parts), key=float), max((v.max() for v, _ in parts), key=float))
    out = None
    for values, n in parts:
        counts, edges = np.histogram(values, bins=bins, range=range, weights=n)
        out = counts if out is None else out + counts
    return np.rint(out).astype(np.int64), edges.astype(np.float64)


def qtensor_row(name: str, qts, codes: Sequence[np.ndarray] | None = None,
                shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """`tensor_row(name, x)` of the dequantized values of int8 QTensors (one, or a route's concatenated
    inputs) from their code counts (`code_counts`, computed here unless given): no float copy and no
    pass over the elements beyond the bincount. Sums in float64 (tensor_row's std uses a float32 dot:
    the two agree to display precision)."""
    qts = list(qts) if isinstance(qts, (list, tuple)) else [qts]
    ns = list(codes) if codes is not None else [code_counts(q) for q in qts]
    vals = [code_values(q).astype(np.float64) for q in qts]
    total = sum(int(n.sum()) for n in ns)
    lo = min(float(v[n > 0].min()) for v, n in zip(vals, ns))
    hi = max(float(v[n > 0].max()) for v, n in zip(vals, ns))
    mean = sum(float(n @ v) for v, n in zip(vals, ns)) / total
    var = max(0.0, sum(float(n @ (v * v)) for v, n in zip(vals, ns)) / total - mean * mean)
    zeros = sum(int(n[v == 0].sum()) for v, n in zip(vals, ns))
    shape = shape if shape is not None else qts[0].q.shape
    return {"tensor": name, "shape": "x".join(map(str, shape)), "min": lo, "max": hi, "mean": mean,
            "std": var ** 0.5, "max|x|": max(-lo, hi), "zeros %": 100.0 * zeros / total}


def hist_percentile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """Upper edge of the bin where the cumulative count reaches q percent (cheap, from the counts)."""
    c = np.cumsum(counts)
    if c[-1] == 0:
        return float(edges[-1])
    k = int(np.searchsorted(c, q / 100.0 * c[-1]))
    return float(edges[min(k + 1, len(edges) - 1)])


def default_markers(x: np.ndarray, counts: np.ndarray, edges: np.ndarray, log2: bool) -> dict[str, float]:
    """Markers for a histogram without calibration thresholds: max|x| (and p99.9 on linear bins)."""
    if log2:
        return {"max|x|": float(np.abs(x).max()) if np.size(x) else 0.0}
    # linear edges span exactly [min, max] of the data
    return {"max|x|": max(-float(edges[0]), float(edges[-1])), "p99.9 |x|": hist_percentile(counts, edges, 99.9)}


def tensor_row(name: str, x: np.ndarray) -> dict[str, Any]:
    """One statistics-table row: shape, min, max, mean, std, max|x|, zeros %."""
    x = np.asarray(x, np.float32)
    flat = x.reshape(-1)
    lo, hi = float(flat.min()), float(flat.max())
    mean = float(flat.mean(dtype=np.float64))
    # one BLAS dot instead of a float64 copy: display precision is plenty (var = E[x^2] - mean^2)
    var = max(0.0, float(np.dot(flat, flat)) / flat.size - mean * mean)
    return {"tensor": name, "shape": "x".join(map(str, x.shape)), "min": lo, "max": hi, "mean": mean,
            "std": var ** 0.5, "max|x|": max(-lo, hi),
            "zeros %": 100.0 * (flat.size - np.count_nonzero(flat)) / flat.size}


def error_row(name: str, ref: np.ndarray, y, stats=None) -> dict[str, Any]:
    """An error row of `y` against `ref`: SQNR (dB, higher is better), max and mean |error|.

    `stats`: the `ErrorStats` already computed for these tensors (e.g. `Session.fitness`), so the row
    shows exactly the number the graph overlay colours by; else `error_stats(ref, y)`. `y` may be the
    run's int8 QTensor: then mean |error| is summed block by block (`mean_abs_error`), never over a
    whole float copy.
    """
    if isinstance(y, QTensor):
        st = stats if stats is not None else error_stats(np.asarray(ref), y)
        return {"tensor": name, "shape": "x".join(map(str, y.q.shape)), "SQNR dB": st.sqnr_db,
                "max|err|": st.max_abs, "mean|err|": mean_abs_error(np.asarray(ref, np.float32), y)}
    st = stats if stats is not None else error_stats(np.asarray(ref), np.asarray(y))
    err = np.abs(np.asarray(y, np.float32).reshape(-1) - np.asarray(ref, np.float32).reshape(-1))
    return {"tensor": name, "shape": "x".join(map(str, np.shape(y))), "SQNR dB": st.sqnr_db,
            "max|err|": st.max_abs, "mean|err|": float(err.mean(dtype=np.float64)) if err.size else 0.0}


def value_range(x: np.ndarray) -> tuple[float, float]:
    """(min, max) of a tensor: the two ends of its grey scale in a picture."""
    x = np.asarray(x)
    return float(x.min()), float(x.max())


def error_map(y: np.ndarray, ref: np.ndarray, channels: int | None = None) -> tuple[np.ndarray, float]:
    """(y - ref, max |y - ref|) over the first `channels` channels (all: None): an error map and the
    symmetric range -vmax .. +vmax its diverging colours span. Differences in y's and ref's dtype
    (float32 for feature maps); vmax 0.0 for an empty or error-free map."""
    sl = slice(None) if channels is None else slice(0, channels)
    d = y[sl] - ref[sl]
    return d, (float(np.abs(d).max()) if d.size else 0.0)


def mean_abs_error(ref: np.ndarray, qt) -> float:
    """mean |qt.dequantize() - ref| (float32 differences, float64 sums), in blocks that stay in cache, on
    the kernel threads; the partial sums are added in block order (the same result on any thread count)."""
    r, q = ref.reshape(-1), np.asarray(qt.q).reshape(-1)
    n = r.size
    if n == 0:
        return 0.0
    count = -(-n // STATS_BLOCK)
    sums = np.zeros(count)

    def block(part: int, i: int) -> None:
        lo, hi = i * STATS_BLOCK, min(n, (i + 1) * STATS_BLOCK)
        e = dequantized_block(q[lo:hi], qt, band_buffer("mae-y", part, (hi - lo,), np.float32))
        np.subtract(e, r[lo:hi], out=e)
        np.abs(e, out=e)
        sums[i] = e.sum(dtype=np.float64)

    with own_threads():
        parallel_items(count, block)
    return float(sums.sum()) / n


def threshold_in_use(qmodel, tensor_id: str) -> float | None:
    """The clipping threshold the quantized model applies to a tensor: 127 * its scale (values beyond
    saturate); None without a quantized model or a scale for that tensor."""
    from engine.quant.qtensor import QMAX
    if qmodel is None:
        return None
    scale = qmodel.scales.get(str(tensor_id))
    return None if scale is None else float(QMAX * scale)
