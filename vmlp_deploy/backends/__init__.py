"""Inference backends behind one interface (see ``base``): ``cpu`` (ONNX Runtime) and ``openvino``."""

from __future__ import annotations

from .base import Backend, RunOptions, Session
from .onnxruntime import OnnxRuntimeBackend
from .openvino import OpenVinoBackend

BACKENDS: dict[str, Backend] = {
    "cpu": OnnxRuntimeBackend(),
    "openvino": OpenVinoBackend(),
}

__all__ = ["BACKENDS", "Backend", "RunOptions", "Session"]
