"""Run a model as an AVX2-only CPU (no VNNI, no AVX-512) would, on any x86-64 host, for accuracy checks.

Why: ONNX Runtime (MLAS) and OpenVINO (oneDNN) pick their integer kernels from the CPU's flags at run time, so a
model quantized on a VNNI machine is only *tested* with 32-bit int8 accumulation; the AVX2 machines it may be
deployed to add u8 x s8 products in saturating int16 pairs instead (``quantize/saturation.py``). QEMU's
user-mode emulator runs one child Python process with ``-cpu Haswell`` (an AVX2 CPU; QEMU 7.2's TCG has AVX2
but no AVX-512 or VNNI), so both runtimes dispatch their AVX2 kernels there, graph optimisations on, exactly as
deployed. The child reads and writes ``.npy`` files in a temporary directory and reports the CPU features it
saw (numpy's cpuid probe) and, for OpenVINO, the kernel each layer ran, as evidence of what was dispatched.

It is roughly 30x slower than native: use it on a handful of samples for accuracy, never for timing.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import site
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import UserError

QEMU = "qemu-x86_64"
#: First QEMU release whose TCG translator emulates AVX2.
MIN_QEMU = (7, 2)
DEFAULT_TIMEOUT_S = 600.0
#: Features that give a 32-bit int8 dot product, in numpy's names (AMX cannot be emulated).
DOT32_FEATURES = ("AVX512VNNI", "AVX512_CLX", "AVXVNNI")
_NOISE = re.compile(r"^qemu-x86_64: warning: TCG doesn't support requested feature")

_CHILD = r'''
import json, sys
import numpy as np
model, backend, threads, batch, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
try:
    from numpy._core._multiarray_umath import __cpu_features__ as features
except ImportError:
    from numpy.core._multiarray_umath import __cpu_features__ as features
x = np.load(work + "/input.npy")
kernels = {}
if backend == "cpu":
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = session.get_inputs()[0].name
    run = lambda xb: session.run(None, {feed: xb})
else:
    import openvino as ov
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads})
    names = [o.get_any_name() for o in compiled.outputs]

    def run(xb):
        result = compiled(xb)
        return [result[o] for o in compiled.outputs]
if batch:
    parts = []
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        n = len(xb)
        if n < batch:
            xb = np.concatenate([xb, np.repeat(xb[-1:], batch - n, axis=0)])
        parts.append([np.asarray(y)[:n] for y in run(xb)])
    outputs = [np.concatenate(ys) for ys in zip(*parts)]
else:
    outputs = run(x)
if backend == "openvino":
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = info["primitiveType"].value if "primitiveType" in info else "unknown"
        if not kind.startswith("unknown"):
            kernels[op.get_friendly_name()] = kind
for i, y in enumerate(outputs):
    np.save(f"{work}/output{i}.npy", np.asarray(y))
with open(work + "/meta.json", "w") as f:
    json.dump({"names": names, "kernels": kernels, "features": sorted(k for k, v in features.items() if v)}, f)
'''


@lru_cache(maxsize=1)
def emulation_available() -> str | None:
    """None when AVX2 emulation can run here, else one line saying what is missing and how to get it."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return f"emulation runs this environment's x86-64 Python under {QEMU}; this host is {machine}"
    exe = shutil.which(QEMU)
    if exe is None:
        return f"{QEMU} not found: apt-get install qemu-user"
    try:
        text = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"{exe} --version failed ({type(e).__name__}): reinstall qemu-user"
    found = re.search(r"version (\d+)\.(\d+)", text)
    if found is None:
        return f"cannot read the version of {exe}: reinstall qemu-user"
    version = (int(found.group(1)), int(found.group(2)))
    if version < MIN_QEMU:
        return (f"{QEMU} {version[0]}.{version[1]} does not emulate AVX2 (needs {MIN_QEMU[0]}.{MIN_QEMU[1]} or "
                "newer): install a newer qemu-user")
    return None


class EmulationError(UserError):
    """The emulated child failed or timed out; the message carries its last error lines."""


@dataclass(frozen=True)
class EmulatedRun:
    """Outputs of one emulated run and what the emulated CPU presented."""

    outputs: list[np.ndarray]
    names: list[str]
    seconds: float
    cpu_model: str
    backend: str
    #: CPU features numpy's cpuid probe saw inside the emulator (numpy's names, e.g. ``AVX2``).
    cpu_features: tuple[str, ...]
    #: OpenVINO layer -> kernel it ran (e.g. ``jit_avx2_I8``); ONNX Runtime does not expose its kernels.
    kernels: dict[str, str]

    @property
    def int8_dot32(self) -> bool:
        """Whether the emulated CPU had a 32-bit int8 dot product (then u8 x s8 pairs did not saturate)."""
        return any(f in self.cpu_features for f in DOT32_FEATURES)


def _site_dirs() -> list[str]:
    dirs = list(site.getsitepackages())
    user = site.getusersitepackages()
    if site.ENABLE_USER_SITE and os.path.isdir(user):
        dirs.append(user)
    return dirs


def _errors(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not _NOISE.match(line)]
    return " | ".join(lines[-3:])[-600:] or "no error output"


def emulate(model_path: Path, inputs: np.ndarray, backend: str = "cpu", cpu_model: str = "Haswell",
            timeout_s: float = DEFAULT_TIMEOUT_S, threads: int = 1, batch: int | None = None) -> EmulatedRun:
    """Run ``model_path`` on ``inputs`` (its single input) in ONNX Runtime (``cpu``) or OpenVINO under
    ``qemu-x86_64 -cpu cpu_model``, graph optimisations on; every output comes back.

    ``batch`` feeds a fixed-batch model ``batch`` samples per inference inside the one emulated process (the
    last batch padded by repetition, outputs trimmed and concatenated along axis 0); None feeds ``inputs`` whole.
    """
    reason = emulation_available()
    if reason is not None:
        raise EmulationError(f"cannot emulate {cpu_model}: {reason}")
    if backend not in ("cpu", "openvino"):
        raise EmulationError(f"unknown backend {backend!r} for emulation: use cpu (ONNX Runtime) or openvino")
    model_path = Path(model_path).resolve()
    if not model_path.is_file():
        raise EmulationError(f"model {model_path} does not exist")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    env.update(PYTHONPATH=os.pathsep.join(_site_dirs()), OMP_NUM_THREADS=str(threads))
    python = os.path.realpath(sys.executable)
    with tempfile.TemporaryDirectory(prefix="vmlp-emulate-") as tmp:
        work = Path(tmp)
        np.save(work / "input.npy", np.ascontiguousarray(inputs))
        (work / "child.py").write_text(_CHILD)
        cmd = [QEMU, "-cpu", cpu_model, python, str(work / "child.py"), str(model_path), backend, str(threads),
               str(batch or 0), tmp]
        start = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise EmulationError(f"emulated {backend} run of {model_path.name} on {cpu_model} took over "
                                 f"{timeout_s:g} s: feed fewer samples or raise timeout_s") from None
        seconds = time.perf_counter() - start
        if "unable to find CPU model" in done.stderr:
            raise EmulationError(f"QEMU has no CPU model {cpu_model!r}: `{QEMU} -cpu help` lists them")
        if done.returncode != 0 or not (work / "meta.json").is_file():
            raise EmulationError(f"emulated {backend} run of {model_path.name} on {cpu_model} failed "
                                 f"(exit {done.returncode}): {_errors(done.stderr)}")
        meta = json.loads((work / "meta.json").read_text())
        outputs = [np.load(work / f"output{i}.npy") for i in range(len(meta["names"]))]
    return EmulatedRun(outputs, meta["names"], seconds, cpu_model, backend, tuple(meta["features"]), meta["kernels"])


def run_emulated(model_path: Path, inputs: np.ndarray, backend: str = "cpu", cpu_model: str = "Haswell",
                 timeout_s: float = DEFAULT_TIMEOUT_S, batch: int | None = None) -> np.ndarray:
    """The first output of ``model_path`` on ``inputs`` as computed by an emulated ``cpu_model`` (AVX2 by default)."""
    return emulate(model_path, inputs, backend, cpu_model, timeout_s, batch=batch).outputs[0]
