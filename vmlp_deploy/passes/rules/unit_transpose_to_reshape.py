"""Rule: a Transpose that only moves size-1 axes is a Reshape to its output shape (no data moves)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .._graph import Builder, is_identity, only_unit_axes_move, perm_of, replace_value, static_shape
from ..rule import Decline, NodeRule


class UnitTransposeToReshape(NodeRule, name="unit-transpose-to-reshape", anchors={"Transpose"}):
    """A Transpose that only moves size-1 axes -> Reshape."""

    def match(self, node: ir.Node) -> ir.Node | Decline:
        shape, out_shape = static_shape(node.inputs[0]), static_shape(node.outputs[0])
        if shape is None or out_shape is None:
            return Decline("shape not static")
        p = perm_of(node, len(shape))
        if is_identity(p):
            return Decline("identity permutation")
        if not only_unit_axes_move(shape, p):
            return Decline("moves data (non-1 axes change order)")
        return node

    def apply(self, b: Builder, node: ir.Node) -> None:
        hint = f"{node.name or 'transpose'}__shape"
        target = b.const(np.array(static_shape(node.outputs[0]), dtype=np.int64), hint)
        out = b.op("Reshape", [node.inputs[0], target], f"{hint}__reshape")
        out.shape, out.type = node.outputs[0].shape, node.outputs[0].type
        b.insert_before(node)
        replace_value(b.graph, node.outputs[0], out)
