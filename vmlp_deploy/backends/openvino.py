"""OpenVINO runtime. The inference precision is always pinned and read back from the compiled model,
because the CPU plugin silently runs "FP32" models in bf16 on CPUs with native bf16 (this one included),
and may run another precision than the one asked for (f16 falls back to bf16 on CPUs without f16 math).

Timed runs set the input tensor once and call ``infer()``; throughput runs use an ``AsyncInferQueue``
over the THROUGHPUT hint with explicit streams; per-layer times are the plugin's performance counters.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, UserError
from .base import (Concurrent, HostCpuPolicy, LayerTime, RunOptions, Timer, canonical_precision, fixed_shape,
                   require_profiling)

PRECISIONS = {"f32": "f32", "bf16": "bf16", "f16": "f16"}
#: Op types that mark a quantized graph: ONNX Q/DQ as read by the ONNX frontend, or IR FakeQuantize.
QUANTIZED_OPS = ("FakeQuantize", "FakeConvert", "QuantizeLinear", "DequantizeLinear")


class _SignalStack(ctypes.Structure):
    """``stack_t`` of ``sigaltstack(2)``."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


#: The main thread's alternate signal stack, ours for the life of the process (see keep_signal_stack_valid).
_SIGNAL_STACK = ctypes.create_string_buffer(1 << 16)


def keep_signal_stack_valid() -> None:
    """Point the main thread's alternate signal stack at memory that lives as long as the process.

    The CPU plugin sets the calling thread's alternate signal stack when it compiles a model and frees that
    memory later, when models are released, without unsetting it (OpenVINO 2026.4, seen with sigaltstack(2) and
    /proc/self/maps). CPython runs its SIGINT/SIGTERM handlers on that stack, so Ctrl-C after two models were
    loaded and released crashed with SIGSEGV and left the staging directory behind. Re-pointing it after every
    compile makes the plugin's stack unreachable before it is freed. Linux x86-64/arm64 only; elsewhere a no-op."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return
    stack = _SignalStack(ctypes.addressof(_SIGNAL_STACK), 0, len(_SIGNAL_STACK))
    ctypes.CDLL(None, use_errno=True).sigaltstack(ctypes.byref(stack), None)


def _precision_name(t: Any) -> str:
    """OpenVINO reports an ``ov.Type``; its short name (f32, bf16, f16) is what users pass on the command line."""
    return t.get_type_name() if hasattr(t, "get_type_name") else str(t)


def kernel_precision(exec_type: str) -> str:
    """The precision suffix of a CPU-plugin kernel name: ``brgemm_avx512_bf16`` -> ``bf16``, ``..._I8`` -> ``i8``."""
    tail = exec_type.rsplit("_", 1)[-1].lower()
    return tail if tail in ("f32", "bf16", "f16", "i8", "u8", "i32", "i64", "u1", "i4", "u4") else ""


def read_model(core: Any, model: Path) -> Any:
    """``core.read_model``, its long C++ failure turned into one line naming the file."""
    try:
        return core.read_model(str(model))
    except Exception as e:  # the frontends raise GeneralFailure / RuntimeError with long C++ messages
        raise UserError(f"OpenVINO cannot read {model.name}: {ov_reason(e)}") from None


def ov_reason(e: Exception) -> str:
    """The lines of an OpenVINO exception that say what went wrong (the last two: the cause and the op): its
    message opens with the C++ places it passed through ("Exception from src/...:84:", "Check 'false' failed
    at ..."), which say nothing to a user."""
    noise = ("Exception from ", "Check '", "FrontEnd API failed", "Summary:", "Model wasn't fully converted")
    lines = [line.strip(" -") for line in str(e).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(noise)]
    return "; ".join((said or lines or [type(e).__name__])[-2:])[:300]


class OvSession:
    def __init__(self, model: Path, options: RunOptions) -> None:
        import openvino as ov

        core = ov.Core()
        device = options.device.upper()
        if not any(d == device or d.startswith(device + ".") for d in core.available_devices):
            raise UserError(f"OpenVINO device {device} is not available here (found: "
                            f"{', '.join(core.available_devices)}): choose one of those with --device")
        requested = canonical_precision(options.precision or "f32")
        if requested == "int8":
            requested = "f32"  # int8 comes from the model's Q/DQ nodes; the float parts stay pinned to f32
        precision = PRECISIONS.get(requested or "")
        if precision is None:
            raise UserError(f"unknown precision {options.precision!r} for openvino: use f32, bf16 or f16")
        if options.streams < 1:
            raise UserError(f"streams must be at least 1, got {options.streams}")
        ov_model = read_model(core, model)
        if len(ov_model.inputs) != 1:
            raise UserError(f"{model.name} has {len(ov_model.inputs)} inputs; vmlp-deploy feeds one image tensor")
        self.quantized = any(op.get_type_name() in QUANTIZED_OPS for op in ov_model.get_ordered_ops())
        if canonical_precision(options.precision) == "int8" and not self.quantized:
            raise UserError(f"{model.name} has no Q/DQ (FakeQuantize) nodes: quantize it first "
                            "(vmlp-deploy quantize) to profile int8")
        port = ov_model.inputs[0]
        declared: list[int | str] = [d.get_length() if d.is_static else "?" for d in port.get_partial_shape()]
        if options.input_shape is not None:
            ov_model.reshape({port.get_any_name(): list(fixed_shape(declared, options.input_shape, model.name))})
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY" if options.streams == 1 else "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": precision,
        }
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = options.threads
        if options.streams > 1:
            config["NUM_STREAMS"] = options.streams
        if options.profiling:
            config["PERF_COUNT"] = True
        config.update(options.extra.get("ov_config", {}))
        self.options = options
        self.version = ov.__version__
        try:
            self.compiled = core.compile_model(ov_model, device, config)
        except RuntimeError as e:
            raise UserError(f"OpenVINO cannot compile {model.name} for {device}: {ov_reason(e)}") from None
        self.request = self.compiled.create_infer_request()
        keep_signal_stack_valid()
        port = self.compiled.inputs[0]
        self.input_name = port.get_any_name()
        self.input_shape = [d.get_length() if d.is_static else "?" for d in port.get_partial_shape()]
        self.requested_precision = precision
        self.precision = _precision_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.device = device
        self.device_name = core.get_property(device, "FULL_DEVICE_NAME")
        self.requests_in_flight = 1

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        result = self.request.infer({0: x})
        return [result[out] for out in self.compiled.outputs]

    def _tensor(self, x: np.ndarray) -> Any:
        import openvino as ov

        return ov.Tensor(np.ascontiguousarray(x))

    def timer(self, x: np.ndarray) -> Timer:
        request = self.request
        request.set_input_tensor(self._tensor(x))

        def one() -> float:
            start = time.perf_counter()
            request.infer()
            return time.perf_counter() - start

        return one

    def concurrent(self, x: np.ndarray) -> Concurrent:
        import openvino as ov

        jobs = max(self.options.streams, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        queue = ov.AsyncInferQueue(self.compiled, jobs)
        tensor = self._tensor(x)
        for request in queue:
            request.set_input_tensor(tensor)
        latencies: list[float] = []
        queue.set_callback(lambda request, _: latencies.append(request.latency / 1000.0))

        def many(n: int) -> tuple[float, list[float]]:
            latencies.clear()
            start = time.perf_counter()
            for _ in range(n):
                queue.start_async()
            queue.wait_all()
            return time.perf_counter() - start, list(latencies)

        self.requests_in_flight = jobs
        return many

    def layer_times(self, x: np.ndarray, runs: int) -> list[LayerTime]:
        """Sum the counters of ``runs`` synchronous inferences (``real_time`` is wall time per node)."""
        require_profiling(self.options, "openvino")
        totals: dict[str, list[Any]] = {}
        for _ in range(runs):
            self.request.infer({0: x})
            for info in self.request.get_profiling_info():
                if str(info.status).rsplit(".", 1)[-1] != "EXECUTED":
                    continue
                entry = totals.setdefault(info.node_name, [info.node_type, info.exec_type, 0.0])
                entry[2] += info.real_time.total_seconds() * 1000.0
        return [LayerTime(name=n, op_type=op, exec_type=ex, time_ms=ms / runs, precision=kernel_precision(ex))
                for n, (op, ex, ms) in totals.items()]

    def kernels(self) -> dict[str, tuple[str, str]]:
        """Compiled layer -> (its type, the kernel the plugin chose: ``Convolution``, ``jit_avx2_1x1_I8``):
        which ISA really runs."""
        kernels = {}
        for op in self.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            kind = info["primitiveType"].value if "primitiveType" in info else ""
            if kind and not kind.startswith("unknown"):
                kernels[op.get_friendly_name()] = (info["layerType"].value, kind)
        return kernels

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": "openvino",
            "runtime": f"openvino {self.version}",
            "device": self.device,
            "device_name": self.device_name,
            "precision_requested": self.requested_precision,
            "precision": self.precision,
            "threads": self.compiled.get_property("INFERENCE_NUM_THREADS"),
            "streams": self.compiled.get_property("NUM_STREAMS"),
            "performance_hint": str(self.compiled.get_property("PERFORMANCE_HINT")),
        }
        info["requests_in_flight"] = self.requests_in_flight
        return info


class OpenVinoBackend(HostCpuPolicy):
    name: str = "openvino"
    extra: str = ""
    suffixes: tuple[str, ...] = (".onnx", ".xml")
    precisions: tuple[str, ...] = ("f32", "bf16", "f16")
    #: ``--device`` picks the OpenVINO device (CPU, GPU, NPU).
    fixed_device: str | None = None
    #: oneDNN, which runs the CPU plugin's convolutions and integer GEMMs, reads it at its first use.
    isa_cap_env: str | None = "ONEDNN_MAX_CPU_ISA"

    def available(self) -> bool:
        return self.unavailable_reason() is None

    def unavailable_reason(self) -> str | None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "OpenVINO is not installed: pip install openvino (it is a dependency of vmlp-deploy)"
        except Exception as e:  # installed but broken (a missing shared library, an ABI mismatch)
            return (f"OpenVINO is installed but fails to load ({type(e).__name__}): "
                    "pip install --force-reinstall openvino")
        return None

    def load(self, model: Path, options: RunOptions) -> OvSession:
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailableError(reason)
        if model.suffix not in self.suffixes:
            raise UserError(f"openvino reads .onnx or OpenVINO IR .xml files, not {model.name}")
        return OvSession(model, options)
