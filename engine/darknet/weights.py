"""Darknet `.weights` files: header, exact float-count check, reader and writer.

Layout (darknet-semantics.md A): int32 major, minor, revision, then `seen` as uint64 when
major*10+minor >= 2 (20-byte header) else int32 (16 bytes); then float32 parameters, layer by
layer, in each layer's `param_shapes()` order. Darknet and OpenCV accept short or long files
silently; we refuse both, saying how many floats were expected and found.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.darknet.cfg import download_mistake
from engine.errors import WeightsError
from engine.layers import Layer
from engine.layers.base import Params


@dataclass(frozen=True)
class WeightsHeader:
    major: int = 0
    minor: int = 2
    revision: int = 0
    seen: int = 0

    @property
    def size(self) -> int:
        return 20 if self.major * 10 + self.minor >= 2 else 16

    @property
    def transpose(self) -> bool:
        """Connected-layer matrices stored [in][out] (very old files)."""
        return self.major > 1000 or self.minor > 1000

    def pack(self) -> bytes:
        seen = struct.pack("<Q", self.seen) if self.size == 20 else struct.pack("<i", self.seen)
        return struct.pack("<iii", self.major, self.minor, self.revision) + seen


def expected_floats(layers: list[Layer]) -> int:
    return sum(l.num_params for l in layers)


def read_header(data: bytes, label: str) -> WeightsHeader:
    if len(data) < 16:
        raise WeightsError(f"{label}: {len(data)} bytes is too short for a Darknet weights header (16 or 20 bytes)")
    major, minor, revision = struct.unpack_from("<iii", data, 0)
    if data.lstrip()[:1] in (b"[", b"#"):
        raise WeightsError(f"{label}: looks like a text cfg, not a binary .weights file")
    mistake = download_mistake(data)     # as int32 a pointer reads "version 1936876918.544108393..."
    if mistake is not None:
        raise WeightsError(f"{label}: {mistake}, not a binary .weights file")
    if data[:4] == b"PK\x03\x04":      # an engine model file (convert's output) given as the weights
        raise WeightsError(f"{label}: an .npz archive (an engine model file from `convert`?), not a Darknet .weights "
                           "file; an engine model file holds its weights: give it as the MODEL, without --weights")
    if not all(0 <= v < 100_000 for v in (major, minor, revision)):
        raise WeightsError(f"{label}: header version {major}.{minor}.{revision} is not a Darknet weights header "
                           "(expected three small non-negative int32 values)")
    if major * 10 + minor >= 2:
        if len(data) < 20:
            raise WeightsError(f"{label}: {len(data)} bytes is too short for a 20-byte weights header")
        seen = struct.unpack_from("<Q", data, 12)[0]
    else:
        seen = struct.unpack_from("<i", data, 12)[0]
    return WeightsHeader(major, minor, revision, seen)


def body_floats(header: WeightsHeader, size: int, label: str, need: int | None = None) -> int:
    """How many float32 values follow the header in a `size`-byte .weights file (the loader's rule, which the
    workspace's upload check asks too). Raises WeightsError if the bytes after the header are not a whole
    number of them; `need`, when known, is named in the message."""
    body = size - header.size
    if body % 4:
        expected = f" (expected {4 * need} bytes)" if need is not None else ""
        raise WeightsError(f"{label}: {body} bytes after the {header.size}-byte header is not a whole "
                           f"number of float32 values{expected}")
    return body // 4


def split_params(flat: np.ndarray, layers: list[Layer], header: WeightsHeader, label: str) -> list[Params]:
    """Slice a flat float32 array into per-layer parameter dicts (views), checking count and values."""
    need = expected_floats(layers)
    if flat.size != need:
        raise WeightsError(_count_message(label, layers, flat.size, need))
    out: list[Params] = []
    pos = 0
    for layer in layers:
        params: Params = {}
        for name, shape in layer.param_shapes():
            n = int(np.prod(shape))
            arr = flat[pos:pos + n]
            if header.transpose and layer.kind == "connected" and name == "weights":
                arr = np.ascontiguousarray(arr.reshape(shape[1], shape[0]).T).reshape(-1)
            params[name] = arr.reshape(shape)
            pos += n
        out.append(params)
    check_finite(out, layers, label)
    return out


PLAUSIBLE = 1e30   # |value| above which a parameter is damage, not training (one flipped exponent bit: 1e38)


def check_finite(params: list[Params], layers: list[Layer], label: str) -> None:
    for layer, p in zip(layers, params):
        for name, arr in p.items():
            with np.errstate(invalid="ignore"):
                bad = ~(np.abs(arr) <= PLAUSIBLE)          # NaN compares False: caught too
            if bad.any():
                flat = np.asarray(arr).reshape(-1)
                first = int(np.flatnonzero(bad.reshape(-1))[0])
                nonfinite = int((~np.isfinite(flat[bad.reshape(-1)])).sum())
                huge = int(bad.sum()) - nonfinite
                what = " and ".join(([f"{nonfinite} NaN/Inf values"] if nonfinite else []) +
                                    ([f"{huge} values beyond +-{PLAUSIBLE:g}"] if huge else []))
                raise WeightsError(f"{label}: layer {layer.index} [{layer.kind}] {name} holds {what} (first at flat "
                                   f"index {first}: {flat[first]:g}); weights must be finite and within "
                                   f"+-{PLAUSIBLE:g} (a damaged file?)")
        if "rolling_variance" in p and (p["rolling_variance"] < 0).any():
            raise WeightsError(f"{label}: layer {layer.index} [{layer.kind}] rolling_variance has negative values; "
                               "a variance must be >= 0")


def _count_message(label: str, layers: list[Layer], found: int, need: int) -> str:
    if found > need:
        return (f"{label}: holds {found} floats after the header but the cfg needs exactly {need} "
                f"({found - need} extra floats = {4 * (found - need)} bytes): wrong cfg for these weights?")
    pos = 0
    for layer in layers:
        if pos + layer.num_params > found:
            return (f"{label}: holds {found} floats after the header but the cfg needs exactly {need} "
                    f"({need - found} missing; the file ends inside layer {layer.index} [{layer.kind}]): "
                    "truncated download or wrong cfg?")
        pos += layer.num_params
    return f"{label}: holds {found} floats, expected {need}"


def read_weights(path: str | Path, layers: list[Layer]) -> tuple[WeightsHeader, list[Params]]:
    """Read a `.weights` file for `layers`. Raises WeightsError (count mismatch, bad header, NaN/Inf)."""
    p = Path(path)
    need = expected_floats(layers)
    from engine.npzfile import open_regular
    try:
        # open_regular: open() of a FIFO blocks until a writer comes, and /dev/zero has no size and never ends
        with open_regular(p) as f:
            size = os.fstat(f.fileno()).st_size
            header = read_header(f.read(20), p.name)
            found = body_floats(header, size, p.name, need)
            if found != need:  # decided from the size: a wrong (maybe huge) file is never read
                raise WeightsError(_count_message(p.name, layers, found, need))
            f.seek(header.size)
            data = f.read()
    except OSError as err:
        raise WeightsError(f"{p}: cannot read weights: {err.strerror or err}") from err
    flat = np.frombuffer(data, dtype="<f4").astype(np.float32)  # own, writable copy
    return header, split_params(flat, layers, header, p.name)


def write_weights(path: str | Path, layers: list[Layer], params: list[Params],
                  header: WeightsHeader | None = None, *, exclusive: bool = False) -> None:
    """Write a Darknet `.weights` file through the one atomic writer (engine.atomic)."""
    from engine.atomic import atomic_write
    header = header or WeightsHeader()

    def write(f) -> None:
        f.write(header.pack())
        for layer, lp in zip(layers, params):
            for name, shape in layer.param_shapes():
                arr = np.asarray(lp[name], dtype="<f4").reshape(shape)
                if header.transpose and layer.kind == "connected" and name == "weights":
                    arr = arr.T
                f.write(np.ascontiguousarray(arr).tobytes())
    atomic_write(path, write, exclusive=exclusive)


def random_params(layers: list[Layer], seed: int = 0) -> list[Params]:
    """Plausible random parameters (He-scaled weights, BN near identity) for cfgs without weights."""
    rng = np.random.default_rng(seed)
    out: list[Params] = []
    for layer in layers:
        p: Params = {}
        for name, shape in layer.param_shapes():
            if name == "weights":
                fan_in = int(np.prod(shape[1:]))
                arr = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / max(fan_in, 1)))
            elif name == "scales":
                arr = rng.uniform(0.5, 1.5, shape)
            elif name == "rolling_variance":
                arr = rng.uniform(0.5, 2.0, shape)
            else:  # biases, rolling_mean
                arr = rng.uniform(-0.1, 0.1, shape)
            p[name] = arr.astype(np.float32)
        out.append(p)
    return out
