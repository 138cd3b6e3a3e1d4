"""Saving and inspecting ONNX files: external data past the protobuf limit, op histograms, sessions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort

EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # below protobuf's hard 2 GiB limit, with room for the graph


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) if t.raw_data else onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def save(model: onnx.ModelProto, path: Path, threshold: int = EXTERNAL_DATA_THRESHOLD) -> str | None:
    """Save ``model``; weights go to ``<name>.data`` beside it when they would break the 2 GiB limit.

    Returns the external data file name, or None when everything is in one file.
    """
    if initializer_bytes(model) > threshold:
        data_name = f"{path.name}.data"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        return data_name
    onnx.save_model(model, str(path))
    return None


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items(), key=lambda kv: (-kv[1], kv[0])))


def cpu_session(model: onnx.ModelProto | Path, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with all graph optimisations, as a deployment would run it."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
