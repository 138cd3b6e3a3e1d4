"""Rule (``cpu``): move a Transpose down to the narrowest tensor it can reach, or to where it cancels.

A shift rewrite leaves ``NHWC -> Transpose -> Conv -> Transpose -> NHWC`` behind; S2-MLPv2 transposes its
3C-channel branch tensor twice although the C-channel tensors around it carry the same layout change at a
third of the size. ``Transpose(x, p)`` is carried below its consumers when every consumer can take ``x``
instead (:mod:`..propagate`): unary elementwise ops; broadcasting binary ops whose other operand can follow;
``Reduce*`` (axes remapped; with ``keepdims=0`` the permutation left is smaller, or gone); another Transpose
(composed). A planner walks the tree of consumers and lets each branch end where the fewest elements are
moved (none where the Transpose cancels or vanishes in a reduction). The Transpose moves only when that
strictly lowers the elements moved.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from .._graph import (
    BROADCAST_BINARY,
    REDUCE,
    Builder,
    compose,
    is_default_domain,
    is_identity,
    is_unary,
    numel,
    perm_of,
    reduce_axes,
    replace_value,
    static_shape,
    untransposed_shape,
)
from ..propagate import kept_perm, relaid_side, remap_reduction, side_follows
from ..rule import Decline, NodeRule


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


@dataclasses.dataclass(frozen=True)
class _Match:
    out: ir.Value
    source: ir.Value
    perm: list[int]
    plan: _Plan


class NarrowTransposes(NodeRule, name="narrow-transposes", anchors={"Transpose"}):
    """Carry a Transpose down to the narrowest tensor it reaches (or where it cancels)."""

    def match(self, node: ir.Node) -> _Match | Decline:
        source, out = node.inputs[0], node.outputs[0]
        in_shape, out_shape = static_shape(source), static_shape(out)
        if in_shape is None or out_shape is None:
            return Decline("shape not static")
        if out.is_graph_output():
            return Decline("output is a graph output")
        p = perm_of(node, len(in_shape))
        self.seen: set[int] = set()  # nodes reached while planning this root: each may absorb once
        plan = self._plan(out, p)
        if plan is None or plan.steps is None or plan.cost >= numel(out_shape):
            return Decline("no consumer tree moves fewer elements")
        return _Match(out, source, p, plan)

    def apply(self, b: Builder, m: _Match) -> None:
        self._apply(b, m.out, m.source, m.perm, m.plan)

    # ---------------------------------------------------------------- planning (nothing is modified)

    def _plan(self, value: ir.Value, p: list[int], depth: int = 0) -> _Plan | None:
        """Cheapest place for ``Transpose(value', p)``; ``value`` is the transposed (original) value."""
        shape = static_shape(value)
        if shape is None:
            return None
        stop = _Plan(numel(shape), None)
        if value.is_graph_output() or depth > 32 or not value.uses():
            return stop
        steps, cost = [], 0
        for node, index in value.uses():
            step = self._absorb(node, index, value, p, depth)
            if step is None:
                return stop
            steps.append(step)
            cost += step.plan.cost if step.plan is not None else 0
            if step.kind == "compose" and step.plan is None and not is_identity(step.perm):
                cost += numel(shape)
        return _Plan(cost, steps) if cost < stop.cost else stop

    def _absorb(self, node: ir.Node, index: int, value: ir.Value, p: list[int], depth: int) -> _Step | None:
        if not is_default_domain(node) or len(node.outputs) != 1:
            return None
        if sum(v is value for v in node.inputs) != 1 or id(node) in self.seen:
            return None
        self.seen.add(id(node))
        rank = len(p)
        out = node.outputs[0]
        if node.op_type != "Transpose" and static_shape(out) is None:
            return None
        if node.op_type == "Transpose":
            q = perm_of(node, rank)
            return None if q is None else _Step(node, index, "compose", compose(p, q), None)
        if out.is_graph_output() and not (node.op_type in REDUCE and not node.attributes.get_int("keepdims", 1)):
            return None  # its layout would change (a reduction to the identity order is checked below)
        if is_unary(node) and index == 0:
            sub = self._plan(out, p, depth + 1)
            return None if sub is None else _Step(node, index, "elementwise", p, sub)
        if node.op_type in BROADCAST_BINARY and len(node.inputs) == 2:
            out_shape = static_shape(out)
            if out_shape is None or len(out_shape) != rank or not side_follows(node.inputs[1 - index], p):
                return None
            sub = self._plan(out, p, depth + 1)
            return None if sub is None else _Step(node, index, "elementwise", p, sub)
        if node.op_type in REDUCE and index == 0:
            axes = reduce_axes(node, rank)
            if axes is None:
                return None
            axes = axes or list(range(rank))
            if node.attributes.get_int("keepdims", 1):
                sub = self._plan(out, p, depth + 1)
                return None if sub is None else _Step(node, index, "reduce", p, sub)
            q = kept_perm(p, axes)
            if is_identity(q):
                return _Step(node, index, "reduce", q, None)
            if out.is_graph_output():
                return None
            sub = self._plan(out, q, depth + 1)
            return None if sub is None else _Step(node, index, "reduce", q, sub)
        return None

    # ---------------------------------------------------------------- applying a plan

    def _apply(self, b: Builder, value: ir.Value, source: ir.Value, p: list[int], plan: _Plan) -> None:
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
            out.shape = ir.Shape(untransposed_shape(out_shape, step.perm))
            if step.plan is not None:  # ``out`` now holds untransposed data: its consumers follow the plan
                self._apply(b, out, out, step.perm, step.plan)

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
