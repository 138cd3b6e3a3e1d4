"""The graph toolkit every rule uses: building nodes under fresh names, replacing values, permutations,
op tables, constants, shapes and opsets.

One place for these, so rules never import each other's private helpers and a new rule starts from here.
Nothing here decides what to rewrite; that is the rules' job (:mod:`.rules`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir

logger = logging.getLogger("vmlp_deploy.passes")

#: Element types the shift rewrite accepts (ONNX Runtime has a CPU Conv for each).
FLOAT_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE})
#: Element types every runtime we target has a CPU Conv for (what a MatMul may become).
CONV_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.DOUBLE})

#: Elementwise ops with one data input and no layout-dependent attributes.
UNARY = frozenset({
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Cast", "Ceil", "Celu", "Clip", "Cos", "Cosh",
    "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu",
    "Log", "Mish", "Neg", "Not", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin", "Sinh",
    "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu",
})
#: Broadcasting elementwise ops.
BINARY = frozenset({
    "Add", "And", "BitShift", "Div", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Min",
    "Mod", "Mul", "Or", "Pow", "PRelu", "Sub", "Sum", "Where", "Xor",
})
#: Binary ops whose two operands broadcast alike (either may carry a layout change the other follows).
BROADCAST_BINARY = BINARY - {"Where", "Sum", "PRelu", "BitShift"}
REDUCE = frozenset({
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare",
})


def is_default_domain(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def is_unary(node: ir.Node) -> bool:
    """One data input and no layout-dependent attribute (Clip's bounds are scalars)."""
    return node.op_type in UNARY and (len(node.inputs) == 1 or node.op_type == "Clip")


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


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant contents (initializer or Constant node), or None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


def rank_of(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


def is_private(value: ir.Value) -> bool:
    """Used once and not a graph output: its producer may be replaced."""
    return len(value.uses()) == 1 and not value.is_graph_output()


# ------------------------------------------------------------------------------------------ permutations


def perm_of(node: ir.Node, rank: int | None) -> list[int] | None:
    """A Transpose's permutation (the default reverses the axes), None when the rank is unknown."""
    attr = node.attributes.get("perm")
    if attr is not None:
        return list(attr.as_ints())
    return list(reversed(range(rank))) if rank is not None else None


def compose(p: Sequence[int], q: Sequence[int]) -> list[int]:
    """``Transpose(Transpose(x, p), q) == Transpose(x, compose(p, q))``."""
    return [p[k] for k in q]


def is_identity(p: Sequence[int]) -> bool:
    return list(p) == list(range(len(p)))


def inverse(p: Sequence[int]) -> list[int]:
    return [int(a) for a in np.argsort(p)]


def untransposed_shape(shape: Sequence[int], p: Sequence[int]) -> tuple[int, ...]:
    """Shape ``s`` with ``transpose(s, p) == shape``."""
    out = [0] * len(p)
    for i, axis in enumerate(p):
        out[axis] = shape[i]
    return tuple(out)


def only_unit_axes_move(shape: Sequence[int], p: Sequence[int]) -> bool:
    """Transposing ``shape`` by ``p`` keeps the order of its non-1 axes (so a Reshape does the same)."""
    kept = [axis for axis in p if shape[axis] != 1]
    return kept == sorted(kept)


def channels_first_perm(rank: int) -> list[int]:
    """``(0, rank-1, 1, ..., rank-2)``: channels-last to channels-first."""
    return [0, rank - 1, *range(1, rank - 1)]


def is_channels_last_perm(p: Sequence[int]) -> bool:
    """One axis moved to the end, the others in order: ``(0, 2, 3, 1)``, ``(0, 1, 3, 4, 2)``, ..."""
    c = p[-1]
    return len(p) >= 3 and c != len(p) - 1 and list(p[:-1]) == [a for a in range(len(p)) if a != c]


def reduce_axes(node: ir.Node, rank: int) -> list[int] | None:
    """A Reduce* node's axes (normalised, sorted), [] for 'all', None when unknown."""
    attr = node.attributes.get("axes")
    if attr is not None:
        axes = list(attr.as_ints())
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        array = const_array(node.inputs[1])
        if array is None:
            return None
        axes = [int(a) for a in array.ravel()]
    else:
        axes = []
    if not axes and node.attributes.get_int("noop_with_empty_axes", 0):
        return None
    return sorted(a % rank for a in axes)


# ------------------------------------------------------------------------------------------ editing


def replace_value(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    """Use ``new`` wherever ``old`` is used; a graph output keeps its name (via Identity if needed)."""
    if old.is_graph_output():
        if new.is_graph_input() or new.is_graph_output() or new.is_initializer():
            node = ir.node("Identity", [new], name=f"{old.name}__identity")
            if old.producer() is not None:
                graph.insert_before(old.producer(), node)
            else:
                graph.append(node)
            new = node.outputs[0]
        name = old.name
        old.name = f"{name}__replaced"
        new.name = name
        new.type, new.shape = old.type, old.shape
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)


class Builder:
    """Builds nodes and initializers for one graph under fresh names, then inserts them in one batch.

    ``prefix`` groups a rule's names (``prefix/hint``); a name already in the graph gets ``_1``, ``_2``, ...
    """

    def __init__(self, graph: ir.Graph, prefix: str = "", taken: set[str] | None = None):
        self.graph = graph
        self.prefix = prefix
        self.taken = used_names(graph) if taken is None else taken
        self.nodes: list[ir.Node] = []

    def name(self, hint: str) -> str:
        base = f"{self.prefix}/{hint}" if self.prefix else hint
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    def const(self, array: np.ndarray, hint: str) -> ir.Value:
        """A new initializer holding ``array``."""
        name = self.name(hint)
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        value.shape = ir.Shape(array.shape)
        value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
        self.graph.register_initializer(value)
        return value

    def const_like(self, array: np.ndarray, like: ir.Value, hint: str) -> ir.Value:
        """An initializer holding ``array`` in ``like``'s element type."""
        dtype = like.dtype.numpy() if like.dtype is not None else array.dtype
        return self.const(np.ascontiguousarray(array.astype(dtype)), hint)

    def relaid_const(self, array: np.ndarray, perm: Sequence[int], like: ir.Value, hint: str) -> ir.Value:
        """``c'`` with ``transpose(c', perm) == array`` after right-aligned broadcasting to ``len(perm)`` axes:
        the side operand of an elementwise op whose other operand loses the Transpose ``perm``."""
        full = array.reshape((1,) * (len(perm) - array.ndim) + array.shape)
        return self.const_like(full.transpose(inverse(perm)), like, hint)

    def op(self, op_type: str, inputs: Sequence[ir.Value | None], hint: str, **attrs) -> ir.Value:
        """Queue a single-output node; returns its output."""
        node = ir.node(op_type, list(inputs), attrs, name=self.name(hint))
        node.outputs[0].name = self.name(f"{hint}_out")
        self.nodes.append(node)
        return node.outputs[0]

    def insert_before(self, anchor: ir.Node) -> None:
        """Put the nodes built so far into the graph before ``anchor``, and start a new batch."""
        self.graph.insert_before(anchor, self.nodes)
        self.nodes = []

    def insert_after(self, anchor: ir.Node) -> None:
        """Put the nodes built so far into the graph after ``anchor``, and start a new batch."""
        self.graph.insert_after(anchor, self.nodes)
        self.nodes = []


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
