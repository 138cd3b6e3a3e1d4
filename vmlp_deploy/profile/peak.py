"""Probe kernels measured in the same run, through the same backend, precision and threads as the models:
"% of best probe" compares a model with what this machine and runtime reach on simple kernels today.

A probe is only a floor of what the hardware can do (a model can beat one GEMM: on Zen 3 an INT8 model ran at
150% of a 2048x2048 INT8 MatMul), so there are several - a square GEMM and a 1x1 convolution shaped like a
vision-MLP channel mixer - and the theoretical ceiling (``ceiling.py``) is reported beside them.

f32/bf16/f16 run float probes (the backend's precision setting decides the arithmetic, and the precision it
really used is read back); int8 runs Q/DQ probes (u8 activations, s8 weights, the fast path of x86 VNNI
kernels), which the backends fuse into integer kernels.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..backends import BACKENDS, Loader, RunOptions, release
from ..backends.base import PRECISION_ALIASES
from ..errors import UserError

DEFAULT_SIZE = 2048
#: The probe kernels, each measured at every (backend, precision) the models run.
KINDS = ("gemm", "conv1x1")
#: Spatial size of the 1x1-convolution probe: a stage-1 token map of a 224x224 vision MLP.
CONV_HW = 56


@dataclass(frozen=True)
class Peak:
    """One probe kernel's best rate: ``ops`` operations per run (multiply and add counted separately)."""

    backend: str
    precision: str
    precision_used: str
    kind: str
    shape: str
    size: int
    ops: int
    best_ms: float
    median_ms: float
    gops: float
    runs: int
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def conv_channels(size: int) -> int:
    """Channels of the 1x1-conv probe for ``--peak-size``: 768 (a vision-MLP width) at the default 2048,
    scaled with it and kept a multiple of 16 so the vector kernels stay on their fast path."""
    return max(16, round(size * 768 / DEFAULT_SIZE / 16) * 16)


def _int8_weight(w: np.ndarray, name: str) -> list[onnx.TensorProto]:
    scale = float(np.abs(w).max() / 127.0)
    return [numpy_helper.from_array(np.clip(np.round(w / scale), -127, 127).astype(np.int8), f"{name}_q"),
            numpy_helper.from_array(np.array(scale, np.float32), f"{name}_scale"),
            numpy_helper.from_array(np.array(0, np.int8), f"{name}_zero")]


def _quantize_dequantize(x: str, scale: float, name: str,
                         out: str | None = None) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """u8 Q/DQ of tensor ``x`` (zero point 128), the activation encoding the quantizers emit, into ``out``."""
    inits = [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), f"{name}_zero")]
    params = [f"{name}_scale", f"{name}_zero"]
    nodes = [helper.make_node("QuantizeLinear", [x, *params], [f"{name}_q"]),
             helper.make_node("DequantizeLinear", [f"{name}_q", *params], [out or f"{name}_dq"])]
    return nodes, inits


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], shape: list[int], out_shape: list[int],
           name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("A", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("C", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def gemm_model(size: int, int8: bool, seed: int = 0) -> onnx.ModelProto:
    """``C = A @ B`` with ``A`` [size, size] fed at run time and ``B`` a constant weight; int8 quantizes ``A``
    (u8) and ``B`` (s8), which the backends fuse into an integer GEMM with a float output."""
    b = np.random.default_rng(seed).standard_normal((size, size)).astype(np.float32)
    if not int8:
        return _model([helper.make_node("MatMul", ["A", "B"], ["C"])], [numpy_helper.from_array(b, "B")],
                      [size, size], [size, size], "vmlp_probe_gemm")
    nodes, inits = _quantize_dequantize("A", 0.05, "a")
    inits += _int8_weight(b, "B")
    nodes += [helper.make_node("DequantizeLinear", ["B_q", "B_scale", "B_zero"], ["B_dq"]),
              helper.make_node("MatMul", ["a_dq", "B_dq"], ["C"])]
    return _model(nodes, inits, [size, size], [size, size], "vmlp_probe_gemm_int8")


def conv_model(channels: int, hw: int = CONV_HW, int8: bool = False, seed: int = 0) -> onnx.ModelProto:
    """A 1x1 convolution ``channels -> channels`` on a 1 x channels x hw x hw input; int8 puts Q/DQ on the
    input, weight and output (the Conv -> Q pattern the backends turn into a quantized convolution)."""
    w = (np.random.default_rng(seed).standard_normal((channels, channels, 1, 1)) / np.sqrt(channels)).astype(
        np.float32)
    shape = [1, channels, hw, hw]
    if not int8:
        return _model([helper.make_node("Conv", ["A", "W"], ["C"])], [numpy_helper.from_array(w, "W")],
                      shape, shape, "vmlp_probe_conv1x1")
    nodes, inits = _quantize_dequantize("A", 0.05, "a")
    inits += _int8_weight(w, "W")
    out_nodes, out_inits = _quantize_dequantize("y", 0.1, "y", out="C")
    nodes += [helper.make_node("DequantizeLinear", ["W_q", "W_scale", "W_zero"], ["W_dq"]),
              helper.make_node("Conv", ["a_dq", "W_dq"], ["y"]), *out_nodes]
    return _model(nodes, inits + out_inits, shape, shape, "vmlp_probe_conv1x1_int8")


def probe(kind: str, size: int, int8: bool) -> tuple[onnx.ModelProto, tuple[int, ...], int, str]:
    """(model, input shape, operations per run, shape description) of probe ``kind`` for ``--peak-size``."""
    if kind == "gemm":
        return gemm_model(size, int8), (size, size), 2 * size**3, f"{size}x{size}x{size}"
    if kind == "conv1x1":
        c = conv_channels(size)
        return (conv_model(c, CONV_HW, int8), (1, c, CONV_HW, CONV_HW), 2 * c * c * CONV_HW**2,
                f"1x{c}x{CONV_HW}x{CONV_HW}, {c}->{c}")
    raise UserError(f"unknown probe kernel {kind!r}: use one of {', '.join(KINDS)}")


def measure_probe(kind: str, backend: str, precision: str, options: RunOptions, size: int = DEFAULT_SIZE,
                  warmup: int = 2, runs: int = 5, load: Loader | None = None) -> Peak:
    """Best-of-``runs`` rate of probe ``kind`` in GOPS after ``warmup`` runs (loaded by ``load``, default the
    backend's own: a capped loader runs the target CPU's kernels)."""
    if size < 16:
        raise UserError(f"the probe size must be at least 16, got {size}")
    model, shape, ops, described = probe(kind, size, precision == "int8")
    with tempfile.TemporaryDirectory(prefix="vmlp-probe-") as tmp:
        path = Path(tmp) / f"{kind}.onnx"
        onnx.save(model, str(path))
        session = (load or BACKENDS[backend].load)(path, RunOptions(
            threads=options.threads, precision=precision, device=options.device, spinning=options.spinning,
            opt_level=options.opt_level, extra=options.extra))
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        try:
            timer = session.timer(x)
            for _ in range(warmup):
                timer()
            times = sorted(timer() for _ in range(runs))
            info = session.describe()
        finally:
            release(session)
    best = times[0]
    reported = str(info.get("precision", precision))
    used = "int8" if precision == "int8" else PRECISION_ALIASES.get(reported.lower(), reported)
    return Peak(backend=backend, precision=precision, precision_used=used, kind=kind, shape=described, size=size,
                ops=ops, best_ms=best * 1e3, median_ms=float(np.median(times)) * 1e3, gops=ops / best / 1e9,
                runs=runs, settings=info)
