"""Saving and inspecting ONNX files: external data past the protobuf limit, op histograms, sessions."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from .errors import UserError

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


def load_checked(path: Path, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model from outside, refusing what would otherwise pass silently or crash later.

    Protobuf parses an empty file as an empty ``ModelProto``, so a 0-byte or graph-less file must be refused
    here; missing external-data files are named before any runtime trips over them."""
    if not path.is_file():
        raise UserError(f"{path} does not exist: pass an .onnx file or a run directory from `vmlp-deploy export`")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes): re-export the model or copy it again")
    if not os.access(path, os.R_OK):
        raise UserError(f"{path} cannot be read (permission denied): fix its permissions")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends on a corrupt or truncated file
        raise UserError(f"{path} is not a readable ONNX model ({type(e).__name__}; truncated or not ONNX): "
                        "re-export it or copy it again") from None
    graph = model.graph
    if not graph.node or not graph.input or not graph.output:
        raise UserError(f"{path} parses but holds an empty graph ({len(graph.node)} nodes, {len(graph.input)} inputs, "
                        f"{len(graph.output)} outputs): it is not a model; re-export it")
    for tensor in graph.initializer:
        if uses_external_data(tensor):
            data = path.parent / ExternalDataInfo(tensor).location
            if not data.is_file():
                raise UserError(f"{path} keeps its weights in {data.name}, which is missing: keep that file beside "
                                "the model (or re-export it)")
    if load_external_data:
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as e:  # a short or unreadable data file
            raise UserError(f"cannot read the external weights of {path} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else 'no message'}): re-export it") from None
    return model


def op_histogram(model: onnx.ModelProto | Iterable[Any]) -> dict[str, int]:
    """Op type -> count, most frequent first; ops of non-default domains are named ``domain::op``.

    Takes a model (its main graph) or any nodes with ``op_type`` and ``domain`` (protobuf or onnx_ir)."""
    nodes = model.graph.node if isinstance(model, onnx.ModelProto) else model
    counter = Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in nodes)
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def cpu_session(model: onnx.ModelProto | Path | bytes, threads: int | None = None, *,
                optimize: bool = True) -> ort.InferenceSession:
    """An ONNX Runtime CPU session: with all graph optimisations, as a deployment runs it, or (``optimize=False``)
    running the graph exactly as written, which is what the passes compare when they check a rewrite."""
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 4  # failures surface as exceptions; ORT need not print them too
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    source = str(model) if isinstance(model, Path) else model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
