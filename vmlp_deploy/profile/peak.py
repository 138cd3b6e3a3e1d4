"""The backend's own peak, measured in the same run: one large GEMM through the same backend, precision
and threads, so "% of peak" compares a model with what this machine and runtime can do at best today,
not with a datasheet figure.

f32/bf16/f16 run the f32 MatMul model (the backend's precision setting decides the arithmetic, and the
precision it really used is read back); int8 runs a Q/DQ MatMul (uint8 activations, int8 weights, the
fast path of x86 VNNI kernels), which the backends fuse into an integer GEMM.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..backends import BACKENDS, RunOptions
from ..backends.base import PRECISION_ALIASES
from ..errors import UserError

DEFAULT_SIZE = 2048


@dataclass(frozen=True)
class Peak:
    backend: str
    precision: str
    precision_used: str
    size: int
    best_ms: float
    median_ms: float
    gops: float
    runs: int
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gemm_model(size: int, int8: bool, seed: int = 0) -> onnx.ModelProto:
    """``C = A @ B`` with ``A`` [size, size] fed at run time and ``B`` a constant weight."""
    rng = np.random.default_rng(seed)
    b = rng.standard_normal((size, size)).astype(np.float32)
    a_info = helper.make_tensor_value_info("A", TensorProto.FLOAT, [size, size])
    c_info = helper.make_tensor_value_info("C", TensorProto.FLOAT, [size, size])
    if not int8:
        nodes = [helper.make_node("MatMul", ["A", "B"], ["C"])]
        inits = [numpy_helper.from_array(b, "B")]
    else:
        b_scale = float(np.abs(b).max() / 127.0)
        inits = [
            numpy_helper.from_array(np.array(0.05, np.float32), "a_scale"),
            numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
            numpy_helper.from_array(np.array(b_scale, np.float32), "b_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "b_zero"),
            numpy_helper.from_array(np.clip(np.round(b / b_scale), -127, 127).astype(np.int8), "B_q"),
        ]
        nodes = [
            helper.make_node("QuantizeLinear", ["A", "a_scale", "a_zero"], ["A_q"]),
            helper.make_node("DequantizeLinear", ["A_q", "a_scale", "a_zero"], ["A_dq"]),
            helper.make_node("DequantizeLinear", ["B_q", "b_scale", "b_zero"], ["B_dq"]),
            helper.make_node("MatMul", ["A_dq", "B_dq"], ["C"]),
        ]
    graph = helper.make_graph(nodes, "vmlp_peak_gemm", [a_info], [c_info], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def measure_peak(backend: str, precision: str, options: RunOptions, size: int = DEFAULT_SIZE,
                 warmup: int = 2, runs: int = 5) -> Peak:
    """Best-of-``runs`` GEMM throughput in GOPS (2*size^3 operations per run) after ``warmup`` runs."""
    if size < 16:
        raise UserError(f"the peak GEMM size must be at least 16, got {size}")
    with tempfile.TemporaryDirectory(prefix="vmlp-peak-") as tmp:
        path = Path(tmp) / "gemm.onnx"
        onnx.save(gemm_model(size, precision == "int8"), str(path))
        session = BACKENDS[backend].load(path, RunOptions(
            threads=options.threads, precision=precision, device=options.device, spinning=options.spinning,
            opt_level=options.opt_level, extra=options.extra))
        x = np.random.default_rng(1).standard_normal((size, size)).astype(np.float32)
        timer = session.timer(x)
        for _ in range(warmup):
            timer()
        times = sorted(timer() for _ in range(runs))
        info = session.describe()
    best = times[0]
    reported = str(info.get("precision", precision))
    used = "int8" if precision == "int8" else PRECISION_ALIASES.get(reported.lower(), reported)
    return Peak(backend=backend, precision=precision, precision_used=used, size=size, best_ms=best * 1e3,
                median_ms=float(np.median(times)) * 1e3, gops=2.0 * size**3 / best / 1e9, runs=runs,
                settings=info)
