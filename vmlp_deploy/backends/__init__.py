"""Inference backends behind one interface (see ``base``): ``cpu`` (ONNX Runtime), ``openvino`` and
``tensorrt`` (which needs NVIDIA's libraries and a GPU; its absence is reported, never faked)."""

from __future__ import annotations

from .base import Backend, LayerTime, Loader, RunOptions, Session, canonical_precision, release
from .onnxruntime import OnnxRuntimeBackend
from .openvino import OpenVinoBackend
from .tensorrt import TensorRtBackend

#: Every backend by its name (``--backend``), in the order ``profile`` runs them: the one list of names.
BACKENDS: dict[str, Backend] = {b.name: b for b in (
    OnnxRuntimeBackend(),
    OpenVinoBackend(),
    TensorRtBackend(),
)}

__all__ = ["BACKENDS", "Backend", "LayerTime", "Loader", "RunOptions", "Session", "canonical_precision", "release"]
