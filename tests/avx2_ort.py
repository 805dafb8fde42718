"""ONNX Runtime on an x86 CPU with AVX2 and without VNNI: the device the `avx2_u8s8` profile models.

This host's CPU may have VNNI (then MLAS's u8 x s8 kernel sums exactly and cannot show the int16 pair
saturation the profile reproduces). `run_on_avx2` then runs the same onnxruntime wheel under QEMU's user-mode
emulator with a Haswell CPU (`qemu-x86_64 -cpu Haswell-noTSX`: AVX2, no AVX-512, no VNNI), in one
subprocess for a batch of graphs: MLAS reads the emulated CPUID and takes its AVX2 `vpmaddubsw` kernel.
Every batch first runs a probe whose saturated and exact results differ, so a runtime that is not the
modelled device is reported, never compared. Debian: `apt-get install qemu-user` (`.ci/run` installs it).
"""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from helpers import require

QEMU = shutil.which("qemu-x86_64")
QEMU_CPU = "Haswell-noTSX"

# Runs inside the (emulated) device: reads a pickle of (name, model bytes, feeds, optimize) jobs, writes a
# pickle of {"probe": int, name: [outputs]}. The probe is a QLinearConv of 8 channels of code 255 times
# weight 127 (scale 1/4096, zero point 128): 160 when pairs saturate at int16 (4 x 32767), 191 when exact.
CHILD = r"""
import pickle, sys
import numpy as np, onnxruntime as ort
from avx2_ort import probe_model
jobs = pickle.load(open(sys.argv[1], "rb"))
def session(data, optimize):
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
probe = session(probe_model(), False).run(None, {"x": np.full((1, 8, 2, 2), 255, np.uint8)})[0]
out = {"probe": int(probe[0, 0, 0, 0])}
for name, data, feeds, optimize in jobs:
    s = session(data, optimize)
    out[name] = dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))
pickle.dump(out, open(sys.argv[2], "wb"))
"""
SATURATED_PROBE, EXACT_PROBE = 160, 191


def probe_model() -> bytes:
    from onnx import TensorProto as T, helper as h, numpy_helper as nh
    consts = {"xs": np.float32(1.0), "xz": np.uint8(0), "w": np.full((2, 8, 1, 1), 127, np.int8),
              "ws": np.ones(2, np.float32), "wz": np.zeros(2, np.int8), "ys": np.float32(4096), "yz": np.uint8(128)}
    node = h.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], kernel_shape=[1, 1])
    graph = h.make_graph([node], "probe", [h.make_tensor_value_info("x", T.UINT8, None)],
                         [h.make_tensor_value_info("y", T.UINT8, None)],
                         [nh.from_array(v, k) for k, v in consts.items()])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def device_command() -> list[str] | None:
    """How to start a Python whose ONNX Runtime runs MLAS's AVX2-without-VNNI kernels (None: no way here)."""
    from engine.quant.profiles.avx2_u8s8 import host_u8s8_kernel
    if host_u8s8_kernel() == "avx2":
        return [sys.executable]
    if QEMU is None:
        return None
    return [QEMU, "-cpu", QEMU_CPU, os.path.realpath(sys.executable)]


def run_on_avx2(jobs: list[tuple[str, bytes, dict[str, np.ndarray], bool]], tmp: Path) -> dict[str, dict]:
    """{name: {output name: array}} of each (name, ONNX bytes, feeds, optimize) job, run by ONNX Runtime on
    AVX2 without VNNI (natively on such a host, else emulated). Skips (fails in CI) when neither is possible;
    fails if the runtime turns out not to saturate pairs (it is then not the device the profile models)."""
    cmd = device_command()
    require(cmd is not None, "this CPU has VNNI and qemu-x86_64 is not installed (apt-get install qemu-user)",
            "avx2_u8s8 device")
    import onnx
    import onnxruntime
    (tmp / "child.py").write_text(CHILD)
    with open(tmp / "jobs.pkl", "wb") as f:
        pickle.dump(jobs, f)
    site = {str(Path(m.__file__).resolve().parents[1]) for m in (onnxruntime, onnx, np)}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sorted(site)]))
    done = subprocess.run([*cmd, str(tmp / "child.py"), str(tmp / "jobs.pkl"), str(tmp / "out.pkl")], env=env,
                          cwd=tmp, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp / "out.pkl", "rb") as f:
        out = pickle.load(f)
    assert out.pop("probe") == SATURATED_PROBE, "this runtime sums u8 x s8 pairs exactly: not an AVX2 device"
    return out
