"""The layout-propagation core: carrying a Transpose down the graph, and what each op becomes on the way.

A Transpose ``p`` is *lifted* off a value and carried into its consumers, each of which then reads the
untransposed tensor and is rewritten to compute the same thing (an elementwise op with its other operand
re-laid out, a reduction with its axes remapped, a Transpose composed, a Linear as a 1x1 Conv), until the
Transpose vanishes, cancels against another or is put back in front of an op that cannot take it.

Where a carried Transpose should end is a cost policy (:class:`CarryPolicy`): :mod:`.rules.cancel_transposes`
accepts a carry only where it ends in another Transpose; :mod:`.rules.narrow_transposes` (``cpu``) wherever the
elements moved go down. Both plan with :class:`Carrier`. :mod:`.rules.channels_first` (``openvino``/``npu``)
carries every channels-last Transpose as far as it goes (its policy: always), sweeping the whole graph so that
operands which both carry the Transpose meet again; it uses the same per-op cases from here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from ._graph import (
    BROADCAST_BINARY,
    REDUCE,
    Builder,
    compose,
    const_array,
    inverse,
    is_default_domain,
    is_identity,
    is_unary,
    numel,
    only_unit_axes_move,
    perm_of,
    reduce_axes,
    replace_value,
    static_shape,
    untransposed_shape,
)


def side_follows(other: ir.Value | None, p: list[int]) -> bool:
    """Whether the other operand of a broadcasting op can follow a lifted Transpose ``p`` (see :func:`relaid_side`)."""
    if other is None:
        return False
    array = const_array(other)
    if array is not None:
        return array.ndim <= len(p)
    shape = static_shape(other)
    if shape is None or len(shape) > len(p):
        return False
    full = (1,) * (len(p) - len(shape)) + shape
    return only_unit_axes_move(full, inverse(p))


def relaid_side(b: Builder, other: ir.Value, p: list[int]) -> ir.Value | None:
    """``other`` laid out for an operand that lost ``Transpose(., p)``; None when that needs data to move.

    A single element stays as it is; a constant is transposed; a static-shape value whose re-layout only moves
    size-1 axes is reshaped (inserted with the builder's next batch).
    """
    rank = len(p)
    array = const_array(other)
    if array is not None:
        if array.size == 1:
            return other
        return None if array.ndim > rank else b.relaid_const(array, p, other, f"{other.name}__t")
    shape = static_shape(other)
    if shape is None or len(shape) > rank:
        return None
    if numel(shape) == 1:
        return other
    full = (1,) * (rank - len(shape)) + shape
    if not only_unit_axes_move(full, inverse(p)):
        return None
    target = np.array([full[a] for a in inverse(p)], dtype=np.int64)
    out = b.op("Reshape", [other, b.const(target, f"{other.name}__relayout_shape")], f"{other.name}__relayout")
    out.type, out.shape = other.type, ir.Shape(target.tolist())
    return out


def reduction_axes_after(p: list[int], axes: list[int]) -> list[int]:
    """The axes a reduction over ``axes`` of ``Transpose(u, p)`` reduces on ``u``."""
    return sorted(p[a] for a in axes)


def kept_perm(p: list[int], axes: list[int]) -> list[int]:
    """The permutation left on the output of a ``keepdims=0`` reduction over ``axes`` of ``Transpose(u, p)``."""
    kept = [p[i] for i in range(len(p)) if i not in axes]
    order = sorted(kept)
    return [order.index(a) for a in kept]


def remap_reduction(b: Builder, node: ir.Node, p: list[int]) -> None:
    """Rewrite a Reduce* node's axes (attribute or input) for its input losing ``Transpose(., p)``."""
    axes = reduce_axes(node, len(p))
    if not axes:  # all axes: unchanged
        return
    new_axes = reduction_axes_after(p, axes)
    if "axes" in node.attributes:
        node.attributes["axes"] = ir.AttrInt64s("axes", new_axes)
    else:
        node.replace_input_with(1, b.const(np.array(new_axes, dtype=np.int64), f"{node.name or 'reduce'}__axes"))


def reduce(b: Builder, op: str, x: ir.Value, axes: list[int], keepdims: int, opset: int, hint: str) -> ir.Value:
    """``Reduce*`` with axes as an input (opset >= 18, ReduceSum >= 13) or as an attribute before that."""
    if opset >= 18 or (op == "ReduceSum" and opset >= 13):
        return b.op(op, [x, b.const(np.array(axes, dtype=np.int64), f"{hint}_axes")], hint, keepdims=keepdims)
    return b.op(op, [x], hint, axes=axes, keepdims=keepdims)


def conv1x1(b: Builder, x: ir.Value, weight: np.ndarray, bias: np.ndarray | None, rank: int, hint: str) -> ir.Value:
    """``x @ weight + bias`` over the channel axis of a channels-first ``x``, as a 1x1 Conv (queued on ``b``).

    ``weight`` is the Linear's ``(K, N)`` matrix; the Conv kernel is its transpose with unit spatial axes.
    """
    kernel = np.ascontiguousarray(weight.T).reshape(weight.shape[1], weight.shape[0], *([1] * (rank - 2)))
    inputs = [x, b.const_like(kernel, x, f"{hint}_w")]
    if bias is not None:
        inputs.append(b.const_like(bias, x, f"{hint}_b"))
    return b.op("Conv", inputs, hint, kernel_shape=[1] * (rank - 2))


# ------------------------------------------------------------------------------------------ planning a carry


@dataclasses.dataclass(frozen=True)
class CarryPolicy:
    """Where a carried Transpose may end, and what that costs.

    ``stop_cost(shape)``: the cost of putting the Transpose back on a value of ``shape`` (``None`` when the shape
    is unknown); ``math.inf`` forbids it, so a carry is accepted only where every branch ends in a Transpose.
    A carry is made when its cost is below the cost of leaving the Transpose where it is.
    """

    stop_cost: Callable[[tuple[int, ...] | None], float]


#: Only where the Transpose meets another (and composes with it, or cancels): layout changes are removed,
#: never just moved.
CANCEL = CarryPolicy(lambda shape: math.inf)
#: Wherever it moves fewer elements (``cpu``): the Transpose ends on the narrowest tensor it reaches.
NARROWEST = CarryPolicy(lambda shape: math.inf if shape is None else numel(shape))


@dataclasses.dataclass
class Step:
    """How one consumer absorbs the Transpose: ``kind`` in compose/elementwise/reduce, then what follows."""

    node: ir.Node
    index: int
    kind: str
    perm: list[int]  # permutation still pending on the node's output (identity: none)
    plan: Plan | None  # for the node's output; None when nothing is pending


@dataclasses.dataclass
class Plan:
    """Where a pending Transpose on one value ends: here (``steps is None``) or inside its consumers."""

    cost: float
    steps: list[Step] | None


@dataclasses.dataclass(frozen=True)
class Carry:
    """A planned carry: ``out == Transpose(source, perm)`` goes into its consumers as ``plan`` says."""

    out: ir.Value
    source: ir.Value
    perm: list[int]
    plan: Plan


class Carrier:
    """Plans and makes the carry of one lifted Transpose under a :class:`CarryPolicy`."""

    def __init__(self, policy: CarryPolicy):
        self.policy = policy

    def plan(self, value: ir.Value, p: list[int]) -> Plan | None:
        """The cheapest carry of ``Transpose(., p)``, whose output ``value`` is (None: it cannot move)."""
        self.seen: set[int] = set()  # nodes reached while planning this root: each may absorb once
        return self._plan(value, p, 0)

    def _plan(self, value: ir.Value, p: list[int], depth: int) -> Plan | None:
        shape = static_shape(value)
        stop = Plan(self.policy.stop_cost(shape), None)
        if value.is_graph_output() or depth > 32 or not value.uses():
            return stop
        steps, cost = [], 0.0
        for node, index in value.uses():
            step = self._absorb(node, index, value, p, depth)
            if step is None:
                return stop
            steps.append(step)
            cost += step.plan.cost if step.plan is not None else 0
            if step.kind == "compose" and step.plan is None and not is_identity(step.perm) and shape is not None:
                cost += numel(shape)
        return Plan(cost, steps) if cost < stop.cost else stop

    def _absorb(self, node: ir.Node, index: int, value: ir.Value, p: list[int], depth: int) -> Step | None:
        if not is_default_domain(node) or len(node.outputs) != 1:
            return None
        if sum(v is value for v in node.inputs) != 1 or id(node) in self.seen:
            return None
        self.seen.add(id(node))
        rank = len(p)
        out = node.outputs[0]
        if node.op_type == "Transpose":
            q = perm_of(node, rank)
            return None if q is None else Step(node, index, "compose", compose(p, q), None)
        if out.is_graph_output() and not (node.op_type in REDUCE and not node.attributes.get_int("keepdims", 1)):
            return None  # its layout would change (a reduction to the identity order is checked below)
        if is_unary(node) and index == 0:
            return self._then(node, index, "elementwise", p, depth)
        if node.op_type in BROADCAST_BINARY and len(node.inputs) == 2:
            out_shape = static_shape(out)
            if out_shape is None or len(out_shape) != rank or not side_follows(node.inputs[1 - index], p):
                return None
            return self._then(node, index, "elementwise", p, depth)
        if node.op_type in REDUCE and index == 0 and static_shape(out) is not None:
            axes = reduce_axes(node, rank)
            if axes is None:
                return None
            axes = axes or list(range(rank))
            if node.attributes.get_int("keepdims", 1):
                return self._then(node, index, "reduce", p, depth)
            q = kept_perm(p, axes)
            if is_identity(q):
                return Step(node, index, "reduce", q, None)
            return None if out.is_graph_output() else self._then(node, index, "reduce", q, depth)
        return None

    def _then(self, node: ir.Node, index: int, kind: str, p: list[int], depth: int) -> Step | None:
        """The step into ``node``, with the plan for its output (still transposed by ``p``)."""
        sub = self._plan(node.outputs[0], p, depth + 1)
        return None if sub is None else Step(node, index, kind, p, sub)

    def make(self, b: Builder, carry: Carry) -> None:
        """Make a planned carry."""
        self.apply(b, carry.out, carry.source, carry.perm, carry.plan)

    def apply(self, b: Builder, value: ir.Value, source: ir.Value, p: list[int], plan: Plan) -> None:
        """Consumers of ``value`` (== Transpose(source, p)) get ``source``, as the plan says."""
        if plan.steps is None:
            self._materialise(b, value, source, p)
            return
        for step in plan.steps:
            node, out = step.node, step.node.outputs[0]
            if step.kind == "compose":
                node.replace_input_with(step.index, source)
                if is_identity(step.perm):
                    replace_value(b.graph, out, source)
                else:
                    node.attributes["perm"] = ir.AttrInt64s("perm", step.perm)
                continue
            out_shape = static_shape(out)
            node.replace_input_with(step.index, source)
            if step.kind == "reduce":
                remap_reduction(b, node, p)
            elif node.op_type in BROADCAST_BINARY:
                side = relaid_side(b, node.inputs[1 - step.index], p)
                b.insert_before(node)
                node.replace_input_with(1 - step.index, side)
            out.shape = None if out_shape is None else ir.Shape(untransposed_shape(out_shape, step.perm))
            if step.plan is not None:  # ``out`` now holds untransposed data: its consumers follow the plan
                self.apply(b, out, out, step.perm, step.plan)

    @staticmethod
    def _materialise(b: Builder, value: ir.Value, source: ir.Value, p: list[int]) -> None:
        """Put ``Transpose(source, p)`` in front of ``value``'s consumers."""
        uses = list(value.uses())
        out = b.op("Transpose", [source], f"{source.name}__layout", perm=p)
        out.type = source.type
        if source.shape is not None:
            out.shape = ir.Shape([source.shape[a] for a in p])
        producer = source.producer()
        if producer is not None:
            b.insert_after(producer)
        else:
            b.insert_before(uses[0][0])
        for user, index in uses:
            if user is not out.producer():
                user.replace_input_with(index, out)
