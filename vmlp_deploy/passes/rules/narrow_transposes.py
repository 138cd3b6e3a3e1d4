"""Rule (``cpu``): move a Transpose down to the narrowest tensor it can reach, or to where it cancels.

A shift rewrite leaves ``NHWC -> Transpose -> Conv -> Transpose -> NHWC`` behind; S2-MLPv2 transposes its
3C-channel branch tensor twice although the C-channel tensors around it carry the same layout change at a
third of the size. ``Transpose(x, p)`` is carried below its consumers when every consumer can take ``x``
instead (:class:`..propagate.Carrier`): unary elementwise ops; broadcasting binary ops whose other operand can follow;
``Reduce*`` (axes remapped; with ``keepdims=0`` the permutation left is smaller, or gone); another Transpose
(composed). A planner walks the tree of consumers and lets each branch end where the fewest elements are
moved (none where the Transpose cancels or vanishes in a reduction). The Transpose moves only when that
strictly lowers the elements moved.
"""

from __future__ import annotations

import onnx_ir as ir

from .._graph import Builder, numel, perm_of, static_shape
from ..propagate import NARROWEST, Carrier, Carry
from ..rule import Decline, NodeRule


class NarrowTransposes(NodeRule, name="narrow-transposes", anchors={"Transpose"}):
    """Carry a Transpose down to the narrowest tensor it reaches (or where it cancels)."""

    def match(self, node: ir.Node) -> Carry | Decline:
        source, out = node.inputs[0], node.outputs[0]
        in_shape, out_shape = static_shape(source), static_shape(out)
        if in_shape is None or out_shape is None:
            return Decline("shape not static")
        if out.is_graph_output():
            return Decline("output is a graph output")
        p = perm_of(node, len(in_shape))
        plan = Carrier(NARROWEST).plan(out, p)
        if plan is None or plan.steps is None or plan.cost >= numel(out_shape):
            return Decline("no consumer tree moves fewer elements")
        return Carry(out, source, p, plan)

    def apply(self, b: Builder, carry: Carry) -> None:
        Carrier(NARROWEST).make(b, carry)
