"""Rule: ``Reshape(Reshape(x, s1), s2)`` becomes ``Reshape(x, s2)`` when ``s2`` is a constant without zeros.

(A zero in ``s2`` copies a dimension of the inner Reshape's output, which ``x`` may not have.)
"""

from __future__ import annotations

import onnx_ir as ir

from .._graph import Builder
from ..rule import Decline, NodeRule


class FoldReshapePairs(NodeRule, name="fold-reshape-pairs", anchors={"Reshape"}):
    """Reshape(Reshape(x, s1), s2) -> Reshape(x, s2)."""

    def match(self, node: ir.Node) -> tuple[ir.Node, ir.Value] | Decline:
        src = node.inputs[0]
        parent = src.producer() if src is not None else None
        if parent is None or parent.op_type != "Reshape":
            return Decline("input is not a Reshape")
        shape = node.inputs[1]
        if shape is None or shape.const_value is None:
            return Decline("target shape is not a constant")
        if (shape.const_value.numpy() == 0).any():
            return Decline("target shape copies a dimension (0)")
        return node, parent.inputs[0]

    def apply(self, b: Builder, match: tuple[ir.Node, ir.Value]) -> None:
        node, source = match
        node.replace_input_with(0, source)
