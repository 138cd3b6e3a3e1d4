"""Small helpers shared by the passes: shape inference, op histograms, ONNX Runtime sessions.

Nothing here rewrites a graph; the rewrite rules live in their own modules.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnx_ir as ir

logger = logging.getLogger("vmlp_deploy.passes")

#: Element types the shift rewrite accepts (ONNX Runtime has a CPU Conv for each).
FLOAT_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE})


def op_histogram(nodes: Iterable[onnx.NodeProto | ir.Node]) -> dict[str, int]:
    """Op type -> count, most frequent first (domain-qualified for non-default domains)."""
    counter: collections.Counter[str] = collections.Counter()
    for node in nodes:
        domain = node.domain if node.domain not in ("", "ai.onnx") else ""
        counter[f"{domain}::{node.op_type}" if domain else node.op_type] += 1
    return dict(counter.most_common())


def model_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """Op histogram of a model's main graph."""
    return op_histogram(model.graph.node)


def default_opset(model: ir.Model | onnx.ModelProto) -> int:
    """Version of the default ONNX domain that ``model`` imports."""
    if isinstance(model, onnx.ModelProto):
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                return int(imp.version)
        return 0
    return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)))


def infer_shapes(model: onnx.ModelProto) -> ir.Model:
    """ONNX shape inference (with data propagation) on a copy, returned as an onnx_ir model.

    Falls back to the model as it is when inference fails; the passes then only see the shapes the
    exporter already recorded, and leave alone anything whose shape they cannot prove.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - any failure just means fewer proven shapes
        logger.warning("shape inference failed (%s); using the recorded shapes only", exc)
        inferred = model
    return ir.from_proto(inferred)


def used_names(graph: ir.Graph) -> set[str]:
    """Every name in ``graph`` (inputs, initializers, node outputs, nodes): what a fresh name must avoid."""
    names = {v.name for v in graph.inputs} | {v.name for v in graph.initializers.values()}
    names |= {v.name for n in graph for v in n.outputs if v.name}
    return names | {n.name for n in graph if n.name}


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The value's shape as ints, or None when it is unknown or has a symbolic dimension."""
    if value is None or value.shape is None:
        return None
    dims = []
    for dim in value.shape.dims:
        if not isinstance(dim, int) or dim < 0:
            return None
        dims.append(dim)
    return tuple(dims)


def make_session(model: onnx.ModelProto | bytes, *, threads: int = 1, optimize: bool = False):
    """A CPU ONNX Runtime session; graph optimisations off by default so we run the graph as written."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # failures surface as exceptions; ORT need not print them too
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def run_model(session, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run a session and return every output as a numpy array."""
    return [np.asarray(out) for out in session.run(None, dict(feeds))]


#: Ops whose newer versions (up to opset 19) accept every older node unchanged, with the same meaning.
_FORWARD_COMPATIBLE = frozenset({
    "AveragePool", "Cast", "CastLike", "Constant", "DequantizeLinear", "Equal", "Identity", "LpPool", "Pad",
    "QuantizeLinear", "Reshape", "Resize", "ScatterElements", "ScatterND", "Shape", "Size",
})


def can_raise_opset(model: ir.Model, target: int) -> bool:
    """Whether declaring default-domain opset ``target`` leaves every node's meaning unchanged.

    True when each op's definition is the same at both versions, or changed only in ways that keep older
    nodes valid and equivalent (new optional inputs/attributes/types). Conservative: sub-graphs, local
    functions, Reduce* with an ``axes`` attribute and Split without a ``split`` input make it False.
    """
    import onnx.defs

    current = default_opset(model)
    if current >= target:
        return True
    if current < 11 or model.functions:
        return False
    for node in model.graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            return False
        try:
            old = onnx.defs.get_schema(node.op_type, current).since_version
            new = onnx.defs.get_schema(node.op_type, target).since_version
        except onnx.defs.SchemaError:
            return False
        if old == new or node.op_type in _FORWARD_COMPATIBLE:
            continue
        if node.op_type == "Split" and len(node.inputs) > 1 and node.inputs[1] is not None:
            continue
        if node.op_type.startswith("Reduce") and "axes" not in node.attributes:
            continue
        return False
    return True
