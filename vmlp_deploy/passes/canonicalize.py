"""Canonicalise a model before matching: prove static shapes by folding small constants.

Exporters compute slice bounds, pads and scatter indices with shape arithmetic (``Shape -> Gather -> Add ->
Concat -> Cast ...``). ONNX shape inference cannot always see through it, so the shapes of the tensors
that follow stay symbolic although they are fixed. This pass alternates ONNX shape inference with
constant folding: every constant (initializer-only, deterministic) value of at most ``max_elements``
elements that feeds a non-constant node is computed once with ONNX Runtime and stored as an initializer,
and ``Shape``/``Size`` of statically shaped values become constants. It stops when nothing changes.

Large constants (e.g. the index tensors of a ScatterND) are deliberately not folded: they stay constant
sub-graphs, which the region finder copes with, so an un-rewritten model does not grow.

Shape inference can only see one block further per round when every block's shape arithmetic depends on
the previous block's (a TorchScript export of 18 S2-MLPv2 blocks would need 18 rounds). So first, when the
graph inputs are static and :func:`shapes_follow_from_input_shapes` proves that no tensor's shape depends
on data, all ``Shape``/``Size`` outputs are measured in one ONNX Runtime run and become constants.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from ..onnx_io import cpu_session
from ._graph import infer_shapes, static_shape
from .regions import analyse_constants, const_closure

logger = logging.getLogger("vmlp_deploy.passes")


def _fold_once(model: ir.Model, max_elements: int) -> int:
    """Fold the constant frontier of ``model`` in place; returns the number of values folded."""
    graph = model.graph
    consts = analyse_constants(graph)
    frontier: list[ir.Value] = []
    for node in graph:
        if node.op_type == "Constant" or not node.outputs or not all(v in consts for v in node.outputs):
            continue
        for value in node.outputs:
            if value.is_initializer() or value.is_graph_output() or not value.uses():
                continue
            if value.type is not None and not isinstance(value.type, ir.TensorType):
                continue
            shape = static_shape(value)
            if shape is not None and int(np.prod(shape, dtype=np.int64)) > max_elements:
                continue
            if any(user.outputs and not all(o in consts for o in user.outputs) for user, _ in value.uses()):
                frontier.append(value)
    if not frontier:
        return 0
    # One model computing every frontier value from initializers (Shape of static values substituted).
    nodes, inits, shapes = const_closure(frontier, consts)
    order = {node: i for i, node in enumerate(graph)}
    protos = [onnx.helper.make_node("Constant", [], [k], value=onnx.numpy_helper.from_array(v, k))
              for k, v in shapes.items()]
    protos += [ir.serde.serialize_node(n) for n in sorted(nodes, key=order.__getitem__)]
    init_protos = []
    for value in inits:
        proto = ir.serde.serialize_tensor(value.const_value)
        proto.name = value.name
        init_protos.append(proto)
    outputs = [onnx.helper.make_empty_tensor_value_info(v.name) for v in frontier]
    const_graph = onnx.helper.make_graph(protos, "constants", [], outputs, initializer=init_protos)
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items()]
    const_model = onnx.helper.make_model(const_graph, opset_imports=opsets, ir_version=model.ir_version)
    try:
        results = cpu_session(const_model, threads=1, optimize=False).run(None, {})
    except Exception as exc:  # noqa: BLE001 - folding is an optimisation; skip it if ORT cannot run it
        logger.debug("constant folding skipped: %s", exc)
        return 0
    folded = 0
    for value, array in zip(frontier, results):
        array = np.asarray(array)
        if array.size > max_elements or array.dtype == object:
            continue
        new = ir.Value(name=value.name, const_value=ir.tensor(array, name=value.name))
        new.shape = ir.Shape(array.shape)
        new.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
        value.name = f"{value.name}__folded"
        graph.register_initializer(new)
        ir.convenience.replace_all_uses_with(value, new, replace_graph_outputs=True)
        folded += 1
    common_passes.RemoveUnusedNodesPass()(model)
    return folded


#: Inputs whose *values* decide output shapes (the rest of an op's output shape follows from input shapes).
_SHAPE_PARAMS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Slice": (1, 2, 3, 4), "Pad": (1, 3),
    "Split": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Range": (0, 1, 2), "OneHot": (1,), "Resize": (1, 2, 3),
    "Upsample": (1,), "TopK": (1,), "CenterCropPad": (1, 2), "SplitToSequence": (1,), "SequenceAt": (1,),
    "SequenceInsert": (2,), "SequenceErase": (1,), "Col2Im": (1, 2), "DFT": (1, 2), "STFT": (1, 3),
    "MaxUnpool": (2,), "AffineGrid": (1,), "BlackmanWindow": (0,), "HannWindow": (0,), "HammingWindow": (0,),
    "MelWeightMatrix": (0, 1, 2, 3, 4),
    **{f"Reduce{r}": (1,) for r in ("Sum", "Mean", "Max", "Min", "Prod", "L1", "L2", "LogSum", "LogSumExp",
                                    "SumSquare")},
}
#: Ops whose output shape depends on input data.
_DATA_SHAPED = frozenset({
    "NonZero", "Unique", "Compress", "NonMaxSuppression", "Loop", "If", "Scan", "StringSplit", "StringNormalizer",
    "ImageDecoder", "RegexFullMatch", "StringConcat", "Optional", "OptionalGetElement", "OptionalHasElement",
})


def shapes_follow_from_input_shapes(graph: ir.Graph) -> bool:
    """True when every tensor's shape is a function of the graph inputs' shapes alone (not their data).

    Holds when no op has a data-dependent output shape and every shape-deciding input (Reshape's shape,
    Slice's bounds, Split's sizes, ...) is computed from initializers and Shape/Size outputs only.
    """
    graph_inputs = set(graph.inputs)
    known: set[ir.Value] = {v for v in graph.initializers.values() if v not in graph_inputs}
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node.op_type in _DATA_SHAPED:
            return False
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            return False
        for i in _SHAPE_PARAMS.get(node.op_type, ()):
            if i < len(node.inputs) and node.inputs[i] is not None and node.inputs[i] not in known:
                return False
        if node.op_type in ("Shape", "Size") or all(v is None or v in known for v in node.inputs):
            known.update(node.outputs)
    return True


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _fold_measured_shapes(model: ir.Model) -> int:
    """Replace Shape/Size outputs by their values, measured once with ONNX Runtime (see module docstring)."""
    graph = model.graph
    if any(static_shape(v) is None for v in graph.inputs):
        return 0
    targets = [n.outputs[0] for n in graph if n.op_type in ("Shape", "Size") and n.outputs[0].uses()
               and static_shape(n.inputs[0]) is None]
    if not targets or not shapes_follow_from_input_shapes(graph):
        return 0
    proto = ir.serde.serialize_model(model)
    del proto.graph.output[:]
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(v.name) for v in targets)
    try:
        session = cpu_session(proto, threads=1, optimize=False)
        feeds = {inp.name: np.zeros(inp.shape, dtype=_ORT_TYPES[inp.type]) for inp in session.get_inputs()}
        results = session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - measuring is an optimisation; shape inference rounds remain
        logger.debug("measuring shapes skipped: %s", exc)
        return 0
    for value, array in zip(targets, results):
        array = np.asarray(array, dtype=np.int64)
        new = ir.Value(name=value.name, const_value=ir.tensor(array, name=value.name))
        new.shape = ir.Shape(array.shape)
        new.type = ir.TensorType(ir.DataType.INT64)
        value.name = f"{value.name}__measured"
        graph.register_initializer(new)
        ir.convenience.replace_all_uses_with(value, new, replace_graph_outputs=True)
    common_passes.RemoveUnusedNodesPass()(model)
    return len(targets)


def canonicalize(model: onnx.ModelProto, *, max_elements: int = 4096, max_rounds: int = 8) -> ir.Model:
    """Shape-inferred copy of ``model`` with small constant sub-graphs folded (see module docstring)."""
    work = infer_shapes(model)
    if _fold_measured_shapes(work):
        work = infer_shapes(ir.serde.serialize_model(work))
    for _ in range(max_rounds):
        if not _fold_once(work, max_elements):
            break
        work = infer_shapes(ir.serde.serialize_model(work))
    work.graph.sort()
    return work
