"""OpenVINO runtime. The inference precision is always pinned and read back from the compiled model,
because the CPU plugin silently runs "FP32" models in bf16 on CPUs with native bf16 (this one included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .base import RunOptions

PRECISIONS = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16"}


def _precision_name(t: Any) -> str:
    """OpenVINO reports an ``ov.Type``; its short name (f32, bf16, f16) is what users pass on the command line."""
    return t.get_type_name() if hasattr(t, "get_type_name") else str(t)


class OvSession:
    def __init__(self, model: Path, options: RunOptions) -> None:
        import openvino as ov

        core = ov.Core()
        device = options.device.upper()
        if not any(d == device or d.startswith(device + ".") for d in core.available_devices):
            raise UserError(f"OpenVINO device {device} is not available here (found: "
                            f"{', '.join(core.available_devices)}): choose one of those with --device")
        precision = PRECISIONS.get((options.precision or "f32").lower())
        if precision is None:
            raise UserError(f"unknown precision {options.precision!r} for openvino: use f32, bf16 or f16")
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
        self.compiled = core.compile_model(str(model), device, config)
        self.request = self.compiled.create_infer_request()
        port = self.compiled.inputs[0]
        self.input_name = port.get_any_name()
        shape = port.get_partial_shape()
        self.input_shape = [d.get_length() if d.is_static else "?" for d in shape]
        self.requested_precision = precision
        self.precision = _precision_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.device = device

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        result = self.request.infer({0: x})
        return [result[out] for out in self.compiled.outputs]

    def profiling_info(self) -> list[Any]:
        return list(self.request.get_profiling_info())

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "openvino",
            "runtime": f"openvino {self.version}",
            "device": self.device,
            "precision_requested": self.requested_precision,
            "precision": self.precision,
            "threads": self.compiled.get_property("INFERENCE_NUM_THREADS"),
            "streams": self.compiled.get_property("NUM_STREAMS"),
            "performance_hint": str(self.compiled.get_property("PERFORMANCE_HINT")),
        }


class OpenVinoBackend:
    name = "openvino"
    extra = ""

    def available(self) -> bool:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return False
        return True

    def load(self, model: Path, options: RunOptions) -> OvSession:
        if not self.available():
            raise UserError("OpenVINO is not installed: pip install openvino (it is a dependency of vmlp-deploy)")
        if model.suffix not in (".onnx", ".xml"):
            raise UserError(f"openvino reads .onnx or OpenVINO IR .xml files, not {model.name}")
        return OvSession(model, options)
