"""Rule: a Transpose carried down through ops that can take it cancels (or composes) with the next Transpose.

``Transpose(x, p) -> elementwise ops -> Transpose(., q)`` becomes ``elementwise ops -> Transpose(., p[q])``, or
no Transpose at all when ``p[q]`` is the identity. The carry (:class:`..propagate.Carrier`, policy ``CANCEL``)
is made only where every branch ends in another Transpose, so layout changes are only removed, never just
moved (:mod:`.narrow_transposes` moves them where it pays).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from .._graph import Builder, is_identity, perm_of, rank_of
from ..propagate import CANCEL, Carrier, Carry, Plan
from ..rule import Decline, NodeRule


def _leaves(plan: Plan) -> list[list[int]]:
    """The permutations left where the carry ends (each branch ends in a composed Transpose)."""
    out: list[list[int]] = []
    for step in plan.steps or []:
        out.extend(_leaves(step.plan) if step.plan is not None else [step.perm])
    return out


@dataclass(frozen=True)
class _Cancel(Carry):
    @property
    def kind(self) -> str:
        """``cancelled`` when no Transpose is left, ``composed`` when one is."""
        return "cancelled" if all(is_identity(p) for p in _leaves(self.plan)) else "composed"


class CancelTransposes(NodeRule, name="cancel-transposes", anchors={"Transpose"}):
    """Transpose -> ops that can take it -> Transpose: the pair composes (or cancels) around them."""

    def match(self, node: ir.Node) -> _Cancel | Decline:
        p = perm_of(node, rank_of(node.inputs[0]))
        if p is None:
            return Decline("default permutation of unknown rank")
        out = node.outputs[0]
        if out.is_graph_output():
            return Decline("output is a graph output")
        plan = Carrier(CANCEL).plan(out, p)
        if plan is None or plan.steps is None:
            return Decline("meets no second Transpose on every branch")
        if all(step.kind == "compose" for step in plan.steps):
            return Decline("directly followed by Transposes (fold-transpose-pairs)")
        return _Cancel(out, node.inputs[0], p, plan)

    def apply(self, b: Builder, carry: _Cancel) -> None:
        Carrier(CANCEL).make(b, carry)
