"""Inference backends behind one interface (see ``base``): ``cpu`` (ONNX Runtime), ``openvino`` and
``tensorrt`` (which needs NVIDIA's libraries and a GPU; its absence is reported, never faked)."""

from __future__ import annotations

from .base import Backend, LayerTime, RunOptions, Session, canonical_precision
from .onnxruntime import OnnxRuntimeBackend
from .openvino import OpenVinoBackend
from .tensorrt import TensorRtBackend

BACKENDS: dict[str, Backend] = {
    "cpu": OnnxRuntimeBackend(),
    "openvino": OpenVinoBackend(),
    "tensorrt": TensorRtBackend(),
}

__all__ = ["BACKENDS", "Backend", "LayerTime", "RunOptions", "Session", "canonical_precision"]
