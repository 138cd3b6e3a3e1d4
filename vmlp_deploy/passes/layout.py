"""Rewrite rules: move layout changes (Transpose) to the narrowest tensor they can reach, or cancel them.

A shift rewrite leaves ``NHWC -> Transpose -> Conv -> Transpose -> NHWC`` behind. Where the Transposes
sit decides what they cost: S2-MLPv2 transposes its 3C-channel branch tensor twice, although the C-channel
tensors just before ``mlp1`` and after the branch sum carry the same layout change at a third of the
size. The rules, all exact (a 1x1 Conv instead of a MatMul may differ by float round-off):

* **sink** ``Transpose(x, p)`` below its consumers when every consumer can absorb it: unary elementwise
  ops; broadcasting binary ops whose other operand is a constant (transposed) or a static-shape value
  whose re-layout only moves size-1 axes (a Reshape); ``Reduce*`` (axes remapped; with ``keepdims=0``
  the permutation of the remaining axes is smaller, or gone); another Transpose (composed). A planner
  walks the tree of consumers and lets each branch end where the fewest elements are moved (none when
  the Transpose cancels or vanishes in a reduction). A Transpose moves only when that strictly lowers
  the elements moved, so layout changes are removed or narrowed, never just moved around.
* **hoist** ``Transpose(MatMul(a, W) [+ b])`` to channels-first, with constant ``W`` and ``b``, into
  ``Conv1x1(Transpose(a))`` when ``a`` has fewer elements than the product.
* **reshape** a Transpose that only moves size-1 axes is a Reshape (no data moves).

Every rule needs static shapes on the tensors it touches; anything else is left alone.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from ._graph import static_shape, used_names
from .transpose_cleanup import _BINARY, _UNARY, _perm, _replace_value

_REDUCE = frozenset({
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare",
})
#: Element types every runtime we target has a CPU Conv for.
_CONV_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.DOUBLE})
#: Binary ops whose operands broadcast alike (the other operand may follow a Transpose).
_BROADCAST_BINARY = _BINARY - {"Where", "Sum", "PRelu", "BitShift"}


@dataclasses.dataclass
class LayoutStats:
    """What the layout pass did."""

    sunk: int = 0
    hoisted_into_conv: int = 0
    to_reshape: int = 0
    elements_moved_before: int = 0
    elements_moved_after: int = 0
    group_views: int = 0
    patch_convs_to_matmul: int = 0

    @property
    def total(self) -> int:
        return self.sunk + self.hoisted_into_conv + self.to_reshape + self.group_views + self.patch_convs_to_matmul


def _const(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant contents (initializer or Constant node), or None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _identity(p: list[int]) -> bool:
    return p == list(range(len(p)))


def _numel(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape))


def _untransposed_shape(shape: tuple[int, ...], p: list[int]) -> tuple[int, ...]:
    """Shape ``s`` with ``transpose(s, p) == shape``."""
    out = [0] * len(p)
    for i, axis in enumerate(p):
        out[axis] = shape[i]
    return tuple(out)


def _only_unit_axes_move(shape: tuple[int, ...], p: list[int]) -> bool:
    """Transposing ``shape`` by ``p`` keeps the order of its non-1 axes (so a Reshape does the same)."""
    kept = [axis for axis in p if shape[axis] != 1]
    return kept == sorted(kept)


def _reduce_axes(node: ir.Node, rank: int) -> list[int] | None:
    """The node's reduction axes (normalised), [] for 'all', None when unknown."""
    attr = node.attributes.get("axes")
    if attr is not None:
        axes = list(attr.as_ints())
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        array = _const(node.inputs[1])
        if array is None:
            return None
        axes = [int(a) for a in array.ravel()]
    else:
        axes = []
    if not axes and node.attributes.get_int("noop_with_empty_axes", 0):
        return None
    return sorted(a % rank for a in axes)


@dataclasses.dataclass
class _Step:
    """How one consumer absorbs the Transpose: ``kind`` in compose/elementwise/reduce, then what follows."""

    node: ir.Node
    index: int
    kind: str
    perm: list[int]  # permutation still pending on the node's output (identity: none)
    plan: _Plan | None  # for the node's output; None when nothing is pending


@dataclasses.dataclass
class _Plan:
    """Where a pending Transpose on one value ends: here (``steps is None``) or inside its consumers."""

    cost: int
    steps: list[_Step] | None


class _Sinker:
    def __init__(self, graph: ir.Graph, taken: set[str]):
        self.graph = graph
        self.taken = taken
        self.seen: set[int] = set()  # nodes reached while planning one root: each may absorb once

    def name(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    # ---------------------------------------------------------------- planning (nothing is modified)

    def plan(self, value: ir.Value, p: list[int], depth: int = 0) -> _Plan | None:
        """Cheapest place for ``Transpose(value', p)``; ``value`` is the transposed (original) value."""
        shape = static_shape(value)
        if shape is None:
            return None
        stop = _Plan(_numel(shape), None)
        if value.is_graph_output() or depth > 32 or not value.uses():
            return stop
        steps, cost = [], 0
        for node, index in value.uses():
            step = self._absorb(node, index, value, p, depth)
            if step is None:
                return stop
            steps.append(step)
            cost += step.plan.cost if step.plan is not None else 0
            if step.kind == "compose" and step.plan is None and not _identity(step.perm):
                cost += _numel(shape)
        return _Plan(cost, steps) if cost < stop.cost else stop

    def _absorb(self, node: ir.Node, index: int, value: ir.Value, p: list[int], depth: int) -> _Step | None:
        if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
            return None
        if sum(v is value for v in node.inputs) != 1 or id(node) in self.seen:
            return None
        self.seen.add(id(node))
        rank = len(p)
        out = node.outputs[0]
        if node.op_type != "Transpose" and static_shape(out) is None:
            return None
        if node.op_type == "Transpose":
            q = _perm(node, rank)
            return None if q is None else _Step(node, index, "compose", [p[k] for k in q], None)
        if out.is_graph_output() and not (node.op_type in _REDUCE and not node.attributes.get_int("keepdims", 1)):
            return None  # its layout would change (a reduction to the identity order is checked below)
        if node.op_type in _UNARY and (len(node.inputs) == 1 or node.op_type == "Clip") and index == 0:
            sub = self.plan(out, p, depth + 1)
            return None if sub is None else _Step(node, index, "elementwise", p, sub)
        if node.op_type in _BROADCAST_BINARY and len(node.inputs) == 2:
            other = node.inputs[1 - index]
            out_shape = static_shape(out)
            if out_shape is None or len(out_shape) != rank or not self._side_ok(other, p):
                return None
            sub = self.plan(out, p, depth + 1)
            return None if sub is None else _Step(node, index, "elementwise", p, sub)
        if node.op_type in _REDUCE and index == 0:
            axes = _reduce_axes(node, rank)
            if axes is None:
                return None
            axes = axes or list(range(rank))
            if node.attributes.get_int("keepdims", 1):
                sub = self.plan(out, p, depth + 1)
                return None if sub is None else _Step(node, index, "reduce", p, sub)
            kept = [p[i] for i in range(rank) if i not in axes]
            order = sorted(kept)
            q = [order.index(a) for a in kept]
            if _identity(q):
                return _Step(node, index, "reduce", q, None)
            if out.is_graph_output():
                return None
            sub = self.plan(out, q, depth + 1)
            return None if sub is None else _Step(node, index, "reduce", q, sub)
        return None

    @staticmethod
    def _side_ok(other: ir.Value | None, p: list[int]) -> bool:
        if other is None:
            return False
        array = _const(other)
        if array is not None:
            return array.ndim <= len(p)
        shape = static_shape(other)
        if shape is None or len(shape) > len(p):
            return False
        full = (1,) * (len(p) - len(shape)) + shape
        return _only_unit_axes_move(full, list(np.argsort(p)))

    # ---------------------------------------------------------------- applying a plan

    def apply(self, value: ir.Value, source: ir.Value, p: list[int], plan: _Plan) -> None:
        """Consumers of ``value`` (== Transpose(source, p)) get ``source``, as the plan says."""
        if plan.steps is None:
            self._materialise(value, source, p)
            return
        for step in plan.steps:
            node, out = step.node, step.node.outputs[0]
            if step.kind == "compose":
                node.replace_input_with(step.index, source)
                if _identity(step.perm):
                    _replace_value(self.graph, out, source)
                else:
                    node.attributes["perm"] = ir.AttrInt64s("perm", step.perm)
                continue
            out_shape = static_shape(out)
            node.replace_input_with(step.index, source)
            if step.kind == "reduce":
                self._remap_reduce(node, p)
            elif node.op_type in _BROADCAST_BINARY:
                self._relayout_side(node, 1 - step.index, p)
            out.shape = ir.Shape(_untransposed_shape(out_shape, step.perm))
            if step.plan is not None:  # ``out`` now holds untransposed data: its consumers follow the plan
                self.apply(out, out, step.perm, step.plan)

    def _materialise(self, value: ir.Value, source: ir.Value, p: list[int]) -> None:
        """Put ``Transpose(source, p)`` in front of ``value``'s consumers."""
        uses = list(value.uses())
        node = ir.node("Transpose", [source], {"perm": p}, name=self.name(f"{source.name}__layout"))
        node.outputs[0].name = self.name(f"{source.name}__layout_out")
        node.outputs[0].type = source.type
        if source.shape is not None:
            node.outputs[0].shape = ir.Shape([source.shape[a] for a in p])
        producer = source.producer()
        if producer is not None:
            self.graph.insert_after(producer, node)
        else:
            self.graph.insert_before(uses[0][0], node)
        for user, index in uses:
            if user is not node:
                user.replace_input_with(index, node.outputs[0])

    def _relayout_side(self, node: ir.Node, index: int, p: list[int]) -> None:
        other = node.inputs[index]
        inverse = [int(a) for a in np.argsort(p)]
        array = _const(other)
        if array is not None:
            if array.size == 1:
                return
            array = array.reshape((1,) * (len(p) - array.ndim) + array.shape)
            new_array = np.ascontiguousarray(array.transpose(inverse))
            name = self.name(f"{other.name}__t")
            new = ir.Value(name=name, const_value=ir.tensor(new_array, name=name))
            new.shape, new.type = ir.Shape(new_array.shape), other.type
            self.graph.register_initializer(new)
            node.replace_input_with(index, new)
            return
        shape = static_shape(other)
        full = (1,) * (len(p) - len(shape)) + shape
        target = np.array([full[a] for a in inverse], dtype=np.int64)
        shape_name = self.name(f"{other.name}__relayout_shape")
        shape_value = ir.Value(name=shape_name, const_value=ir.tensor(target, name=shape_name))
        self.graph.register_initializer(shape_value)
        reshape = ir.node("Reshape", [other, shape_value], name=self.name(f"{other.name}__relayout"))
        reshape.outputs[0].name = self.name(f"{other.name}__relayout_out")
        reshape.outputs[0].type = other.type
        reshape.outputs[0].shape = ir.Shape(target.tolist())
        self.graph.insert_before(node, reshape)
        node.replace_input_with(index, reshape.outputs[0])

    def _remap_reduce(self, node: ir.Node, p: list[int]) -> None:
        rank = len(p)
        axes = _reduce_axes(node, rank)
        if not axes:  # all axes: unchanged
            return
        new_axes = sorted(p[a] for a in axes)
        if "axes" in node.attributes:
            node.attributes["axes"] = ir.AttrInt64s("axes", new_axes)
        else:
            name = self.name(f"{node.name or 'reduce'}__axes")
            value = ir.Value(name=name, const_value=ir.tensor(np.array(new_axes, dtype=np.int64), name=name))
            self.graph.register_initializer(value)
            node.replace_input_with(1, value)


def sink_transposes(model: ir.Model, stats: LayoutStats, taken: set[str]) -> bool:
    """One sweep of the sink rule over the graph; True when something moved."""
    graph = model.graph
    sinker = _Sinker(graph, taken)
    changed = False
    for node in list(graph):
        if node.op_type != "Transpose" or node.graph is None or node.domain not in ("", "ai.onnx"):
            continue
        source, out = node.inputs[0], node.outputs[0]
        in_shape, out_shape = static_shape(source), static_shape(out)
        if in_shape is None or out_shape is None or out.is_graph_output():
            continue
        p = _perm(node, len(in_shape))
        sinker.seen = set()
        plan = sinker.plan(out, p)
        if plan is None or plan.steps is None or plan.cost >= _numel(out_shape):
            continue
        sinker.apply(out, source, p, plan)
        stats.sunk += 1
        changed = True
    return changed


def _channels_first(rank: int) -> list[int]:
    return [0, rank - 1, *range(1, rank - 1)]


def _private(value: ir.Value) -> bool:
    """Used once and not a graph output: its producer may be replaced."""
    return len(value.uses()) == 1 and not value.is_graph_output()


def _const_bias(value: ir.Value | None, n: int) -> np.ndarray | None:
    """A constant broadcast along the last axis only, as a vector of ``n``; None otherwise."""
    array = _const(value)
    if array is None:
        return None
    if any(d != 1 for d in array.shape[:-1]) or (array.ndim and array.shape[-1] not in (1, n)):
        return None
    return np.broadcast_to(array.reshape(-1), (n,)).copy()


def _linear_source(value: ir.Value) -> tuple[ir.Value, np.ndarray, np.ndarray | None] | None:
    """``value == a @ W (+ b)`` over the last axis, with constant W (K, N) and b (N,): (a, W, b).

    Matches ``Add(MatMul(a, W), b)``, ``MatMul(a, W)`` and the flattened form exporters and onnxsim
    write, ``Reshape(Gemm(Reshape(a, (M, K)), W, b), a.shape[:-1] + (N,))``. Every intermediate value
    must be private to the chain.
    """
    shape = static_shape(value)
    if shape is None or not _private(value):
        return None
    n = shape[-1]
    producer = value.producer()
    bias = None
    if producer is not None and producer.op_type == "Add" and len(producer.inputs) == 2:
        consts = [i for i, v in enumerate(producer.inputs) if _const(v) is not None]
        if len(consts) != 1:
            return None
        bias = _const_bias(producer.inputs[consts[0]], n)
        value = producer.inputs[1 - consts[0]]
        if bias is None or value is None or not _private(value) or static_shape(value) != shape:
            return None
        producer = value.producer()
    if producer is None:
        return None
    if producer.op_type == "MatMul":
        a, w = producer.inputs
        a_shape = static_shape(a)
        weight = _const(w)
        if weight is None or a_shape is None or len(a_shape) != len(shape):
            return None
        return (a, weight, bias) if weight.ndim == 2 and a_shape[:-1] == shape[:-1] else None
    if producer.op_type != "Reshape" or bias is not None:
        return None
    flat = producer.inputs[0]
    gemm = flat.producer() if flat is not None else None
    if gemm is None or gemm.op_type != "Gemm" or not _private(flat) or len(gemm.inputs) < 2:
        return None
    attrs = gemm.attributes
    if attrs.get_float("alpha", 1.0) != 1.0 or attrs.get_int("transA", 0):
        return None
    a2, w = gemm.inputs[0], gemm.inputs[1]
    c = gemm.inputs[2] if len(gemm.inputs) > 2 else None
    weight = _const(w)
    if weight is None or a2 is None or not _private(a2) or a2.producer() is None:
        return None
    if a2.producer().op_type != "Reshape":
        return None
    a = a2.producer().inputs[0]
    a_shape = static_shape(a)
    if weight.ndim != 2 or a_shape is None or len(a_shape) != len(shape) or a_shape[:-1] != shape[:-1]:
        return None
    if attrs.get_int("transB", 0):
        weight = weight.T
    if c is not None:
        bias = _const_bias(c, n)
        if bias is None or (attrs.get_float("beta", 1.0) != 1.0 and c is not None):
            return None
    if static_shape(a2) != (_numel(a_shape[:-1]), a_shape[-1]) or weight.shape != (a_shape[-1], n):
        return None
    return a, weight, bias


def hoist_into_conv(model: ir.Model, stats: LayoutStats, taken: set[str]) -> bool:
    """``Transpose(a @ W + b, channels-first)`` -> ``Conv1x1(Transpose(a), W^T, b)`` when ``a`` is narrower."""
    graph = model.graph
    changed = False

    def fresh(base: str) -> str:
        name, i = base, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        return name

    def const(array: np.ndarray, hint: str) -> ir.Value:
        name = fresh(hint)
        v = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        v.shape, v.type = ir.Shape(array.shape), ir.TensorType(ir.DataType.from_numpy(array.dtype))
        graph.register_initializer(v)
        return v

    for node in list(graph):
        if node.op_type != "Transpose" or node.graph is None:
            continue
        shape = static_shape(node.inputs[0])
        if shape is None or len(shape) < 3 or _perm(node, len(shape)) != _channels_first(len(shape)):
            continue
        found = _linear_source(node.inputs[0])
        if found is None:
            continue
        a, weight, bias = found
        a_shape = static_shape(a)
        if _numel(a_shape) >= _numel(shape) or a.dtype not in _CONV_DTYPES or a.dtype != node.inputs[0].dtype:
            continue
        rank = len(shape)
        prefix = f"{node.name or 'transpose'}/hoisted"
        kernel = np.ascontiguousarray(weight.T).reshape(weight.shape[1], weight.shape[0], *([1] * (rank - 2)))
        perm = _channels_first(rank)
        transpose = ir.node("Transpose", [a], {"perm": perm}, name=fresh(f"{prefix}/to_channels_first"))
        transpose.outputs[0].name = fresh(f"{prefix}/to_channels_first_out")
        transpose.outputs[0].shape, transpose.outputs[0].type = ir.Shape([a_shape[k] for k in perm]), a.type
        inputs = [transpose.outputs[0], const(kernel.astype(weight.dtype), f"{prefix}/conv1x1_w")]
        if bias is not None:
            inputs.append(const(bias.astype(weight.dtype), f"{prefix}/conv1x1_b"))
        conv = ir.node("Conv", inputs, {"kernel_shape": [1] * (rank - 2)}, name=fresh(f"{prefix}/conv1x1"))
        conv.outputs[0].name = fresh(f"{prefix}/conv1x1_out")
        conv.outputs[0].shape, conv.outputs[0].type = node.outputs[0].shape, node.outputs[0].type
        graph.insert_before(node, [transpose, conv])
        _replace_value(graph, node.outputs[0], conv.outputs[0])
        stats.hoisted_into_conv += 1
        changed = True
    return changed


def unit_transposes_to_reshape(model: ir.Model, stats: LayoutStats, taken: set[str]) -> bool:
    """A Transpose that only moves size-1 axes becomes a Reshape to its output shape."""
    graph = model.graph
    changed = False
    for node in list(graph):
        if node.op_type != "Transpose" or node.graph is None:
            continue
        shape, out_shape = static_shape(node.inputs[0]), static_shape(node.outputs[0])
        if shape is None or out_shape is None:
            continue
        p = _perm(node, len(shape))
        if _identity(p) or not _only_unit_axes_move(shape, p):
            continue
        name, i = f"{node.name or 'transpose'}__shape", 1
        while name in taken:
            name, i = f"{node.name}__shape_{i}", i + 1
        taken.add(name)
        target = ir.Value(name=name, const_value=ir.tensor(np.array(out_shape, dtype=np.int64), name=name))
        graph.register_initializer(target)
        reshape = ir.node("Reshape", [node.inputs[0], target], name=f"{name}__reshape")
        reshape.outputs[0].name = f"{name}__reshape_out"
        reshape.outputs[0].shape, reshape.outputs[0].type = node.outputs[0].shape, node.outputs[0].type
        graph.insert_before(node, reshape)
        _replace_value(graph, node.outputs[0], reshape.outputs[0])
        stats.to_reshape += 1
        changed = True
    return changed


def _moved(graph: ir.Graph) -> int:
    total = 0
    for node in graph:
        if node.op_type == "Transpose":
            shape = static_shape(node.outputs[0]) or static_shape(node.inputs[0])
            total += _numel(shape) if shape is not None else 0
    return total


def optimize_layout(model: ir.Model, *, max_rounds: int = 8) -> LayoutStats:
    """Apply hoist, sink and reshape rules in place until nothing changes; dead nodes are removed."""
    graph = model.graph
    stats = LayoutStats(elements_moved_before=_moved(graph))
    taken = used_names(graph)
    for _ in range(max_rounds):
        changed = hoist_into_conv(model, stats, taken)
        changed |= sink_transposes(model, stats, taken)
        common_passes.RemoveUnusedNodesPass()(model)
        changed |= unit_transposes_to_reshape(model, stats, taken)
        common_passes.RemoveUnusedNodesPass()(model)
        if not changed:
            break
    stats.elements_moved_after = _moved(graph)
    return stats
