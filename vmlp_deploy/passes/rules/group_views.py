"""Rule (every target): a grouped-channel view ``(B, K, C, H, W)`` of a channels-first tensor is written on it.

``Reshape(x, (B, K, C, H, W))`` of a channels-first ``x``, used only by per-branch weights (broadcast over
H, W) and reductions, is written on ``x`` itself: weights reshaped to ``(B, K*C, 1, 1)``, a sum over K as one
channel Split and K-1 Adds, a sum over positions as a 4-D ReduceSum before the (now tiny) reshape. That is
S2-MLPv2's split attention without 5-D tensors. Exact up to summation order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from .._graph import Builder, default_opset, reduce_axes, replace_value, static_shape
from ..propagate import reduce
from ..rule import Decline, NodeRule


def _group_view(node: ir.Node) -> int | str:
    """K when ``node`` is ``Reshape(x, (B, K, C, *S))`` of a channels-first ``x`` of shape ``(B, K*C, *S)``."""
    xs, vs = static_shape(node.inputs[0]), static_shape(node.outputs[0])
    if xs is None or vs is None:
        return "shape not static"
    if len(xs) < 3 or len(vs) != len(xs) + 1:
        return "not a split of one axis"
    if vs[0] != xs[0] or vs[3:] != xs[2:] or vs[1] * vs[2] != xs[1] or vs[1] == 1:
        return "not a split of the channel axis into groups"
    if math.prod(xs[2:]) == 1:  # no positions: the view is already as small as the reductions make it
        return "no spatial positions"
    return vs[1]


def _view_use(node: ir.Node, view: ir.Value, vs: tuple[int, ...]) -> str | None:
    """How a consumer of a group view can run on the 4-D tensor: 'weight', 'branch_sum', 'reduce' or None."""
    if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
        return None
    if node.op_type in ("Mul", "Add", "Sub", "Div") and len(node.inputs) == 2 and sum(v is view for v in node.inputs) == 1:
        other = node.inputs[1] if node.inputs[0] is view else node.inputs[0]
        shape = static_shape(other)
        if shape is None or static_shape(node.outputs[0]) != vs or len(shape) != len(vs):
            return None
        ok = shape[0] in (1, vs[0]) and shape[1:3] == vs[1:3] and all(d == 1 for d in shape[3:])
        return "weight" if ok else None
    if node.op_type == "ReduceSum" and node.inputs[0] is view:
        axes = reduce_axes(node, len(vs))
        if not axes:
            return None
        if any(a >= 3 for a in axes):
            return "reduce"
        if axes == [1] and not node.attributes.get_int("keepdims", 1):
            return "branch_sum"
    return None


@dataclass(frozen=True)
class _Match:
    reshape: ir.Node
    k: int
    uses: list[tuple[ir.Node, ir.Value, str]]  # (consumer, the view it reads, how it runs on 4-D)


class FlattenGroupViews(NodeRule, name="flatten-group-views", anchors={"Reshape"}, prefix="group_view"):
    """Grouped-channel 5-D views (B, K, C, H, W) -> the 4-D tensor, weights reshaped, Split + Add."""

    def match(self, reshape: ir.Node) -> _Match | Decline:
        k = _group_view(reshape)
        if isinstance(k, str):
            return Decline(k)
        vs = static_shape(reshape.outputs[0])
        views, uses = [reshape.outputs[0]], []
        while views:
            view = views.pop()
            if view.is_graph_output():
                return Decline("the view is a graph output")
            for user, _ in view.uses():
                kind = _view_use(user, view, vs)
                if kind is None:
                    return Decline(f"a consumer ({user.op_type}) is neither a per-branch weight nor a reduction")
                uses.append((user, view, kind))
                if kind == "weight":
                    views.append(user.outputs[0])
        return _Match(reshape, k, uses) if uses else Decline("the view is not read")

    def apply(self, b: Builder, m: _Match) -> None:
        graph, k = b.graph, m.k
        opset = default_opset(graph)
        vs = static_shape(m.reshape.outputs[0])
        order = {id(n): i for i, n in enumerate(graph)}
        flat: dict[int, ir.Value] = {id(m.reshape.outputs[0]): m.reshape.inputs[0]}
        c = vs[2]
        for user, view, kind in sorted(m.uses, key=lambda t: order[id(t[0])]):
            x4 = flat[id(view)]
            out = user.outputs[0]
            if kind == "weight":
                i = 0 if user.inputs[0] is view else 1
                other = user.inputs[1 - i]
                oshape = static_shape(other)
                target = np.array([oshape[0], k * c, *oshape[3:]], dtype=np.int64)
                other4 = b.op("Reshape", [other, b.const(target, "weight_shape")], "weight")
                other4.type = other.type
                new = b.op(user.op_type, [x4, other4] if i == 0 else [other4, x4], user.op_type.lower())
                flat[id(out)] = new
            elif kind == "branch_sum":
                new = self._branch_sum(b, x4, k, c, opset)
            else:
                axes = reduce_axes(user, len(vs))
                spatial = [a - 1 for a in axes if a >= 3]
                partial = reduce(b, "ReduceSum", x4, spatial, 1, opset, "partial")
                small = [vs[0], k, c, *(1 if a + 1 in axes else d for a, d in enumerate(vs[3:], start=2))]
                view5 = b.op("Reshape", [partial, b.const(np.array(small, np.int64), "view_shape")], "view")
                new = reduce(b, "ReduceSum", view5, axes, user.attributes.get_int("keepdims", 1), opset, "reduce")
            for n in b.nodes:
                n.outputs[0].type = out.type
            b.insert_before(user)
            if kind != "weight":
                new.shape = out.shape
                replace_value(graph, out, new)

    @staticmethod
    def _branch_sum(b: Builder, x4: ir.Value, k: int, c: int, opset: int) -> ir.Value:
        """Sum of the K channel groups of ``x4``: one Split (in the opset's form) and K-1 Adds."""
        if opset >= 18:
            split = ir.node("Split", [x4], {"axis": 1, "num_outputs": k}, num_outputs=k, name=b.name("branches"))
        elif opset >= 13:
            split = ir.node("Split", [x4, b.const(np.full(k, c, np.int64), "split")], {"axis": 1},
                            num_outputs=k, name=b.name("branches"))
        else:
            split = ir.node("Split", [x4], {"axis": 1, "split": [c] * k}, num_outputs=k, name=b.name("branches"))
        for j, part in enumerate(split.outputs):
            part.name, part.type = b.name(f"branch{j}"), x4.type
        b.nodes.append(split)
        new = split.outputs[0]
        for part in split.outputs[1:]:
            new = b.op("Add", [new, part], "branch_sum")
        return new
