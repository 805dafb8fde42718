"""`avx2_u8s8` and `ort_reduce_range`: ONNX Runtime on an x86 CPU with AVX2 and without VNNI, 8-bit / 7-bit weights.

MLAS's u8 x s8 kernels there multiply with `vpmaddubsw`, which adds each pair of adjacent
uint8 x int8 products into an int16 **with saturation** before widening to int32; ONNX Runtime's
documentation advises 7-bit weights (`reduce_range`) on such CPUs for that reason. This profile
runs the `onnxruntime` rules with that accumulator: the reduction runs in QLinearConv's channels-
last order (kernel position outer, input channel inner: k = (ky*K + kx)*C + c), raw uint8 codes
(padding is the input zero point), pairs (2j, 2j+1), each pair sum clamped to [-32768, 32767],
then the zero-point correction `- x_zp * sum(w)` in int32. Found by experiment on this host and
checked against a live onnxruntime (tests/engine/test_profiles_ort.py). A grouped conv is one such GEMM
per group (pairs never cross groups); a depthwise one (one input and one output channel per group) runs
MLAS's depthwise kernel, which is exact. Both checked against onnxruntime on an emulated AVX2 CPU
(tests/engine/test_profiles_avx2_device.py).

Only a weight pair with |w_a| + |w_b| >= 129 can leave int16 (255 * 128 = 32640), so the exact
BLAS sum is corrected at those pairs only.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from engine.kernels.gemm import conv_out_size
from engine.quant.profiles.onnxruntime import OrtProfile
from engine.quant.qtensor import QTensor

PAIR_LIMIT = 129          # |w_a| + |w_b| >= 129 with x = 255 exceeds 32767
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")     # MLAS's exact u8 x s8 kernels (vpdpbusd)


@lru_cache(maxsize=None)
def host_u8s8_kernel(cpuinfo: str = "/proc/cpuinfo") -> str:
    """Which u8 x s8 kernel ONNX Runtime's MLAS picks on this host: "vnni" (exact int32 dot products),
    "avx2" (x86 without VNNI: int16-saturating pairs, what `avx2_u8s8` models) or "unknown". Read
    once per process: the CPU does not change under it."""
    import platform
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "unknown"
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return "unknown"
    if flags is None:
        return "unknown"
    return "vnni" if any(v in flags for v in VNNI_FLAGS) else "avx2" if "avx2" in flags else "unknown"


def pair_saturation_correction(x_u8: np.ndarray, zp: int, w_q: np.ndarray, stride: int, pad: int) -> np.ndarray | None:
    """int64 (n, Ho, Wo) to add to the exact sum to get vpmaddubsw's int16-saturated one (None: nothing to add)."""
    n, c, k, _ = w_q.shape
    wk = w_q.transpose(0, 2, 3, 1).reshape(n, -1).astype(np.int32)          # channels-last K order
    if wk.shape[1] % 2:
        wk = np.concatenate([wk, np.zeros((n, 1), np.int32)], axis=1)
    a, b = wk[:, 0::2], wk[:, 1::2]
    risky = np.abs(a) + np.abs(b) >= PAIR_LIMIT
    if not risky.any():
        return None
    h, w = x_u8.shape[1:]
    ho, wo = conv_out_size(h, k, stride, pad), conv_out_size(w, k, stride, pad)
    xp = np.full((c, h + 2 * pad, w + 2 * pad), zp, np.int32)
    xp[:, pad:pad + h, pad:pad + w] = x_u8
    kk = k * k * c
    # the K-order rows of the raw im2col, only for the pair columns that can saturate
    cols = np.flatnonzero(risky.any(axis=0))
    rows = np.zeros((2, len(cols), ho, wo), np.int32)
    for side in (0, 1):
        for t, r in enumerate(2 * cols + side):
            if r < kk:
                pos, ic = divmod(int(r), c)
                ky, kx = divmod(pos, k)
                rows[side, t] = xp[ic, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride]
    f_idx, j_idx = np.nonzero(risky[:, cols])                  # j_idx indexes `cols`
    corr = np.zeros((n, ho, wo), np.int64)
    step = max(1, (1 << 22) // (ho * wo))                      # ~16 MB of int32 pair sums at a time
    for s0 in range(0, len(f_idx), step):
        f, j = f_idx[s0:s0 + step], j_idx[s0:s0 + step]
        p = a[f, cols[j], None, None] * rows[0, j] + b[f, cols[j], None, None] * rows[1, j]
        d = np.clip(p, -32768, 32767) - p
        starts = np.flatnonzero(np.r_[True, f[1:] != f[:-1]])   # np.nonzero gives f in ascending runs
        corr[f[starts]] += np.add.reduceat(d, starts, axis=0)
    return corr


class Avx2U8S8Profile(OrtProfile):
    name = "avx2_u8s8"
    title = "ONNX Runtime, int8 weights, AVX2 without VNNI (int16-saturating vpmaddubsw pairs)"
    signed_weights = True
    rules = dict(OrtProfile.rules, **{
        "weights": "int8 [-127, 127] exported as int8 (zero point 0), per channel or per tensor",
        "accumulator": "QLinearConv: pairs of u8 x s8 products saturated to int16 (vpmaddubsw), then int32, "
                       "channels-last pair order; ConvInteger (heads): exact int32",
        "source": "onnxruntime docs (quantization: 'saturation on AVX2/AVX512 without VNNI, use reduce_range'), "
                  "mlas qgemm_kernel_avx2; pair order found and verified on this host",
    })

    def host_mismatch(self) -> str | None:
        kernel = host_u8s8_kernel()
        if kernel == "avx2":
            return None
        why = ("this host's CPU has VNNI: its ONNX Runtime sums u8 x s8 products exactly in int32"
               if kernel == "vnni" else "this host's u8 x s8 kernel could not be identified")
        return f"{why}, unlike the AVX2-without-VNNI CPU the '{self.name}' profile models"

    def accumulate(self, layer, x: QTensor, lq, b_q, epilogue) -> None:
        corr = pair_saturation_correction(x.q, x.zero_point, lq.w_q, layer.stride, layer.padding)
        if corr is None:
            return super().accumulate(layer, x, lq, b_q, epilogue)

        def corrected(part, r0, r1, acc, ch):
            epilogue(part, r0, r1, acc + corr[ch, r0:r1], ch)
        super().accumulate(layer, x, lq, b_q, corrected)

    def grouped_correction(self, layer, x: QTensor, lq) -> np.ndarray | None:
        # QLinearConv runs a grouped conv as one u8 x s8 GEMM per group (each group's filters reordered on
        # their own, K = size*size*channels-per-group), so pairs form within a group. Depthwise (one input and
        # one output channel per group) takes MLAS's depthwise kernel instead, which widens to int16: exact.
        n, cg = lq.w_q.shape[:2]
        ng = n // layer.groups
        if cg == 1 and ng == 1:
            return None
        parts = [pair_saturation_correction(x.q[g * cg:(g + 1) * cg], x.zero_point, lq.w_q[g * ng:(g + 1) * ng],
                                            layer.stride, layer.padding) for g in range(layer.groups)]
        if all(p is None for p in parts):
            return None
        ho, wo = layer.out_shape[1:]
        return np.concatenate([np.zeros((ng, ho, wo), np.int64) if p is None else p for p in parts])


class OrtReduceRangeProfile(Avx2U8S8Profile):
    """ONNX Runtime's advice for AVX2/AVX512 without VNNI: 7-bit weights (`reduce_range`), so that no pair
    of uint8 x int8 products can leave int16 (255 * (63 + 63) = 32130 <= 32767): exact int32 sums again."""
    name = "ort_reduce_range"
    title = "ONNX Runtime, 7-bit int8 weights (reduce_range) on AVX2 without VNNI"
    weight_qmax = 63
    rules = dict(Avx2U8S8Profile.rules, **{
        "weights": "7-bit: int8 in [-63, 63] (reduce_range), exported as int8, per channel or per tensor",
        "accumulator": "u8 x s8 pairs in int16 (vpmaddubsw) can no longer saturate: exact int32",
        "source": "onnxruntime quantization docs (reduce_range for AVX2/AVX512 without VNNI); verified on this host",
    })

    def host_mismatch(self) -> str | None:
        return None                 # no pair can saturate: exact int32 on VNNI and AVX2 kernels alike
