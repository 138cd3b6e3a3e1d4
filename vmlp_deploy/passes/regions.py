"""Find data-movement regions: subgraphs that only copy elements of one input tensor.

A *movement node* is a node whose op only moves elements (Slice, Concat, ScatterND, Pad, Transpose,
Gather, Reshape, Split, Where with a constant condition, ...) and whose index-like inputs (starts,
indices, pads, shapes, conditions) are constant. A *region* is a value ``y`` together with all the
movement nodes it depends on, when those nodes read exactly one non-constant tensor ``x``. Such a
region computes ``y[o] = x[src(o)]`` or a constant, for a fixed map ``src`` that :mod:`.probe` measures.

"Constant" means computable from initializers and ``Constant`` nodes only, through any deterministic op,
plus ``Shape``/``Size`` of values whose shape is static. Such constant sub-graphs (the TorchScript
exporter emits hundreds of nodes of shape arithmetic for one slice assignment) are not folded here: they
are copied into the standalone region model, and disappear with the region once it is replaced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from ..onnx_io import op_histogram
from ._graph import static_shape

#: Movement ops -> positions of the inputs that must be constant (the "parameters" of the move).
MOVEMENT_PARAMS: dict[str, frozenset[int]] = {
    "Identity": frozenset(),
    "Transpose": frozenset(),
    "Concat": frozenset(),
    "Flatten": frozenset(),
    "DepthToSpace": frozenset(),
    "SpaceToDepth": frozenset(),
    "SequenceConstruct": frozenset(),
    "ConcatFromSequence": frozenset(),
    "Slice": frozenset({1, 2, 3, 4}),
    "Pad": frozenset({1, 2, 3}),
    "Reshape": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Split": frozenset({1}),
    "SplitToSequence": frozenset({1}),
    "SequenceAt": frozenset({1}),
    "Gather": frozenset({1}),
    "GatherElements": frozenset({1}),
    "GatherND": frozenset({1}),
    "ScatterND": frozenset({1}),
    "ScatterElements": frozenset({1}),
    "Where": frozenset({0}),
}

#: Ops that never count as constant even when all inputs are.
_NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"}
)

#: Pure layout ops (no element is dropped, duplicated or invented).
_LAYOUT_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"})

#: Ops that can move elements relative to each other; a region without any (only Reshape, Transpose,
#: Slice, Split, ...) cannot be a shift and is not probed.
SHIFT_MARKER_OPS = frozenset({
    "ScatterND", "ScatterElements", "Pad", "Concat", "Where", "Expand", "Tile", "Gather", "GatherElements",
    "GatherND", "SequenceConstruct", "ConcatFromSequence",
})


def _is_default_domain(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def _has_subgraph(node: ir.Node) -> bool:
    return any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values())


@dataclasses.dataclass
class ConstInfo:
    """Which values of a graph are compile-time constants."""

    values: set[ir.Value]
    #: Outputs of Shape/Size nodes over statically shaped values, with their (known) contents.
    static_shapes: dict[ir.Value, np.ndarray]

    def __contains__(self, value: ir.Value | None) -> bool:
        return value is None or value in self.values


def analyse_constants(graph: ir.Graph) -> ConstInfo:
    """Mark every value that does not depend on a graph input's contents. The graph must be sorted."""
    graph_inputs = set(graph.inputs)
    values: set[ir.Value] = {v for v in graph.initializers.values() if v not in graph_inputs}
    shapes: dict[ir.Value, np.ndarray] = {}
    for node in graph:
        if not _is_default_domain(node) or node.op_type in _NONDETERMINISTIC or _has_subgraph(node):
            continue
        if node.op_type in ("Shape", "Size") and node.inputs and node.inputs[0] is not None:
            dims = static_shape(node.inputs[0])
            if dims is None:
                continue
            if node.op_type == "Size":
                content = np.array(int(np.prod(dims, dtype=np.int64)), dtype=np.int64)
            else:
                rank = len(dims)
                start = node.attributes.get_int("start", 0)
                end = node.attributes.get_int("end", rank)
                content = np.array(dims[slice(start, end)], dtype=np.int64)
            shapes[node.outputs[0]] = content
            values.add(node.outputs[0])
            continue
        if all(inp is None or inp in values for inp in node.inputs):
            values.update(node.outputs)
    return ConstInfo(values, shapes)


def is_movement(node: ir.Node, consts: ConstInfo) -> bool:
    """A node that only copies elements, with constant parameters and at least one non-constant input."""
    if not _is_default_domain(node) or node.op_type not in MOVEMENT_PARAMS or _has_subgraph(node):
        return False
    params = MOVEMENT_PARAMS[node.op_type]
    data_inputs = [v for i, v in enumerate(node.inputs) if i not in params]
    if any(node.inputs[i] not in consts for i in params if i < len(node.inputs)):
        return False
    return any(v is not None and v not in consts for v in data_inputs)


@dataclasses.dataclass
class Region:
    """``y`` as a pure data movement of the single non-constant tensor ``x``."""

    x: ir.Value
    y: ir.Value
    nodes: tuple[ir.Node, ...]  # movement nodes, in graph order

    @property
    def ops(self) -> dict[str, int]:
        return op_histogram(self.nodes)

    def describe(self) -> str:
        return f"{self.x.name} -> {self.y.name} ({len(self.nodes)} nodes)"


class RegionFinder:
    """Finds candidate regions of a (topologically sorted) graph."""

    def __init__(self, graph: ir.Graph, consts: ConstInfo | None = None):
        self.graph = graph
        self.consts = consts if consts is not None else analyse_constants(graph)
        self.order = {node: i for i, node in enumerate(graph)}
        self.movement = [node for node in graph if is_movement(node, self.consts)]
        self.movement_set = set(self.movement)
        self._anc: dict[ir.Node, frozenset[ir.Node]] = {}
        self._ext: dict[ir.Node, frozenset[ir.Value]] = {}
        for node in self.movement:  # graph order, so producers come first
            anc: set[ir.Node] = {node}
            ext: set[ir.Value] = set()
            for idx, value in enumerate(node.inputs):
                if value is None or value in self.consts or idx in MOVEMENT_PARAMS[node.op_type]:
                    continue
                producer = value.producer()
                if producer in self.movement_set:
                    anc |= self._anc[producer]
                    ext |= self._ext[producer]
                else:
                    ext.add(value)
            self._anc[node] = frozenset(anc)
            self._ext[node] = frozenset(ext)

    def _leaves(self, user: ir.Node) -> bool:
        """Whether a value read by ``user`` leaves its single-source movement region there."""
        if user in self.movement_set:
            return len(self._ext[user]) != 1
        # Shape/Size of a static value (or any node with only constant outputs) does not read contents.
        return not all(v in self.consts for v in user.outputs)

    def region_of(self, value: ir.Value) -> Region | None:
        """The region ending at ``value``, if ``value`` is a tensor moved out of exactly one input."""
        producer = value.producer()
        if producer not in self.movement_set or not isinstance(value.type, ir.TensorType):
            return None
        ext = self._ext[producer]
        if len(ext) != 1:
            return None
        (x,) = ext
        if not isinstance(x.type, ir.TensorType):
            return None
        nodes = tuple(sorted(self._anc[producer], key=self.order.__getitem__))
        return Region(x=x, y=value, nodes=nodes)

    def candidates(self) -> list[Region]:
        """Maximal regions: values with one source that leave the movement sub-graph, largest first."""
        graph_outputs = set(self.graph.outputs)
        found: list[Region] = []
        for node in self.movement:
            if len(self._ext[node]) != 1:
                continue
            for value in node.outputs:
                exposed = value in graph_outputs or any(self._leaves(user) for user, _ in value.uses())
                if exposed:
                    region = self.region_of(value)
                    if region is not None:
                        found.append(region)
        found.sort(key=lambda r: (-len(r.nodes), self.order[r.y.producer()]))
        return found

    def without_input_reshape(self, region: Region) -> Region | None:
        """``region`` minus a leading layout node (e.g. the Reshape that follows a 2-D Gemm) that alone reads x.

        The shift is then fitted on that node's output, whose shape shows the spatial axes.
        """
        readers = {node for node in region.nodes if any(v is region.x for v in node.inputs)}
        if len(readers) != 1:
            return None
        (node,) = readers
        if node.op_type not in _LAYOUT_OPS or len(node.outputs) != 1:
            return None
        nodes = tuple(n for n in region.nodes if n is not node)
        if not nodes or any(v is region.x for n in nodes for v in n.inputs):
            return None
        return Region(x=node.outputs[0], y=region.y, nodes=nodes)

    def narrower(self, region: Region) -> list[Region]:
        """Regions ending at the movement inputs of ``region.y``'s producer (tried when ``region`` fails)."""
        producer = region.y.producer()
        out = []
        for idx, value in enumerate(producer.inputs):
            if value is None or value in self.consts or idx in MOVEMENT_PARAMS[producer.op_type]:
                continue
            sub = self.region_of(value)
            if sub is not None and sub.x is region.x:
                out.append(sub)
        return out


def const_closure(values: Iterable[ir.Value], consts: ConstInfo) -> tuple[list[ir.Node], list[ir.Value], dict]:
    """Nodes and initializers needed to compute the constant ``values``."""
    nodes: set[ir.Node] = set()
    inits: dict[str, ir.Value] = {}
    shapes: dict[str, np.ndarray] = {}
    stack = [v for v in values if v is not None]
    seen: set[ir.Value] = set()
    while stack:
        value = stack.pop()
        if value in seen:
            continue
        seen.add(value)
        if value in consts.static_shapes:
            shapes[value.name] = consts.static_shapes[value]
            continue
        if value.is_initializer():
            inits[value.name] = value
            continue
        producer = value.producer()
        if producer is None:
            continue
        nodes.add(producer)
        stack.extend(v for v in producer.inputs if v is not None)
    return list(nodes), list(inits.values()), shapes


def region_model(
    region: Region,
    consts: ConstInfo,
    x_shape: Sequence[int],
    opset_imports: dict[str, int],
    ir_version: int = 8,
) -> onnx.ModelProto:
    """The region as a standalone model: one input ``x`` (static shape), one output ``y``."""
    region_values = {v for n in region.nodes for v in n.outputs}
    const_inputs = [
        v for n in region.nodes for v in n.inputs if v is not None and v is not region.x and v not in region_values
    ]
    closure_nodes, inits, shapes = const_closure(const_inputs, consts)
    order = {node: i for i, node in enumerate(region.y.graph or [])}
    all_nodes = sorted(set(closure_nodes) | set(region.nodes), key=lambda n: order.get(n, -1))
    node_protos = [
        onnx.helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(arr, name))
        for name, arr in shapes.items()
    ]
    node_protos += [ir.serde.serialize_node(n) for n in all_nodes]
    init_protos = [ir.serde.serialize_tensor(v.const_value) for v in inits]
    for proto, value in zip(init_protos, inits):
        proto.name = value.name
    x_type = region.x.dtype.value
    y_type = region.y.dtype.value if region.y.dtype is not None else x_type
    graph = onnx.helper.make_graph(
        node_protos,
        "region",
        [onnx.helper.make_tensor_value_info(region.x.name, x_type, list(x_shape))],
        [onnx.helper.make_tensor_value_info(region.y.name, y_type, None)],
        initializer=init_protos,
    )
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in opset_imports.items()]
    return onnx.helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)
