"""Rule: ``Transpose(Transpose(x, p), q)`` becomes ``Transpose(x, p[q])``, or ``x`` when that is the identity.

The inner Transpose may have other readers; it stays for them (and goes when it has none left).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from .._graph import Builder, compose, is_identity, perm_of, rank_of, replace_value
from ..rule import Decline, NodeRule


@dataclass(frozen=True)
class _Match:
    node: ir.Node
    source: ir.Value
    perm: list[int]


class FoldTransposePairs(NodeRule, name="fold-transpose-pairs", anchors={"Transpose"}):
    """Transpose(Transpose(x, p), q) -> Transpose(x, p[q]) or x."""

    def match(self, node: ir.Node) -> _Match | Decline:
        src = node.inputs[0]
        parent = src.producer() if src is not None else None
        if parent is None or parent.op_type != "Transpose":
            return Decline("input is not a Transpose")
        rank = rank_of(parent.inputs[0]) or rank_of(src)
        p, q = perm_of(parent, rank), perm_of(node, rank)
        if p is None or q is None:
            return Decline("default permutation of unknown rank")
        return _Match(node, parent.inputs[0], compose(p, q))

    def apply(self, b: Builder, m: _Match) -> None:
        if is_identity(m.perm):
            replace_value(b.graph, m.node.outputs[0], m.source)
        else:
            m.node.replace_input_with(0, m.source)
            m.node.attributes["perm"] = ir.AttrInt64s("perm", m.perm)
