"""ONNX Runtime CPU execution provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import UserError
from .base import RunOptions

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class OrtSession:
    def __init__(self, model: Path, options: RunOptions) -> None:
        if options.device.upper() != "CPU":
            raise UserError(f"the cpu backend runs on CPU only, not {options.device}: drop --device")
        if options.precision not in (None, "fp32", "f32", "int8"):
            raise UserError(f"the cpu backend runs the model's own precision; --precision {options.precision} "
                            "is not available (quantize the model for int8)")
        if options.opt_level not in _LEVELS:
            raise UserError(f"unknown graph optimisation level {options.opt_level!r}: use {', '.join(_LEVELS)}")
        so = ort.SessionOptions()
        so.graph_optimization_level = _LEVELS[options.opt_level]
        so.log_severity_level = 3
        so.inter_op_num_threads = 1
        if options.threads:
            so.intra_op_num_threads = options.threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spinning else "0")
        if options.profiling:
            so.enable_profiling = True
            so.profile_file_prefix = str(options.extra.get("profile_prefix", "ort_profile"))
        self.options = options
        self.session = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        meta = self.session.get_inputs()[0]
        self.input_name = meta.name
        self.input_shape = list(meta.shape)
        self.precision = "int8" if _has_qdq(model) else "fp32"

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: x})

    def end_profiling(self) -> Path:
        return Path(self.session.end_profiling())

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "cpu",
            "runtime": f"onnxruntime {ort.__version__}",
            "provider": "CPUExecutionProvider",
            "precision": self.precision,
            "threads": self.options.threads,
            "spinning": self.options.spinning,
            "graph_optimization": self.options.opt_level,
        }


def _has_qdq(model: Path) -> bool:
    """A statically quantized graph carries QuantizeLinear nodes (QDQ) or QLinear* operators."""
    graph = onnx.load(str(model), load_external_data=False).graph
    return any(n.op_type == "QuantizeLinear" or n.op_type.startswith("QLinear") for n in graph.node)


class OnnxRuntimeBackend:
    name = "cpu"
    extra = ""

    def available(self) -> bool:
        return True

    def load(self, model: Path, options: RunOptions) -> OrtSession:
        if model.suffix != ".onnx":
            raise UserError(f"the cpu backend (ONNX Runtime) reads .onnx files, not {model.name}: "
                            "use --backend openvino for OpenVINO IR")
        return OrtSession(model, options)
