"""Rule: ``Transpose(x, p) -> elementwise ops -> Transpose(., q)`` becomes ``elementwise ops -> Transpose(., p[q])``.

The first Transpose is carried down through single-use elementwise ops whose other operands are constants
(re-laid out) or single elements, until it meets the second; it then composes with it, and vanishes when
the composition is the identity. A Transpose that meets no other Transpose is left where it is, so layout
changes are only removed, never just moved (:mod:`.narrow_transposes` moves them where it pays).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from .._graph import (
    BINARY,
    Builder,
    compose,
    is_default_domain,
    is_identity,
    is_unary,
    perm_of,
    rank_of,
    replace_value,
    single_user,
)
from ..rule import Decline, NodeRule


@dataclass(frozen=True)
class _Match:
    source: ir.Value
    perm: list[int]
    chain: list[tuple[ir.Node, int]]  # (node, index of the carried operand)
    end: ir.Node
    end_perm: list[int]

    @property
    def kind(self) -> str:
        """``cancelled`` when both Transposes vanish, ``composed`` when one is left."""
        return "cancelled" if is_identity(compose(self.perm, self.end_perm)) else "composed"


def _side_ok(value: ir.Value | None, rank: int) -> bool:
    """A side operand that can follow the Transpose: a constant of rank <= rank, or a single element."""
    if value is None:
        return True
    if value.const_value is not None:
        return value.const_value.shape is not None and len(value.const_value.shape) <= rank
    return value.shape is not None and all(isinstance(d, int) and d == 1 for d in value.shape.dims)


class CancelTransposes(NodeRule, name="cancel-transposes", anchors={"Transpose"}):
    """Transpose -> elementwise chain -> Transpose: the pair composes (or cancels) around the chain."""

    def match(self, first: ir.Node) -> _Match | Decline:
        p = perm_of(first, rank_of(first.inputs[0]))
        if p is None:
            return Decline("default permutation of unknown rank")
        chain: list[tuple[ir.Node, int]] = []
        cur = first.outputs[0]
        while True:
            user = single_user(cur)
            if user is None:
                return Decline("meets no second Transpose (a value with several readers or a graph output)")
            if user.op_type == "Transpose":
                break
            if not is_default_domain(user) or len(user.outputs) != 1:
                return Decline(f"meets no second Transpose ({user.op_type} has several outputs or another domain)")
            idx = [i for i, v in enumerate(user.inputs) if v is cur]
            if len(idx) != 1:
                return Decline(f"meets no second Transpose ({user.op_type} reads the value twice)")
            if not (is_unary(user) or user.op_type in BINARY):
                return Decline(f"meets no second Transpose ({user.op_type} is not elementwise)")
            if not all(_side_ok(v, len(p)) for i, v in enumerate(user.inputs) if i != idx[0]):
                return Decline(f"meets no second Transpose ({user.op_type}'s other operand cannot be re-laid out)")
            chain.append((user, idx[0]))
            cur = user.outputs[0]
        if not chain:
            return Decline("directly followed by a Transpose (fold-transpose-pairs)")
        q = perm_of(user, len(p))
        if q is None:
            return Decline("second Transpose has an unknown permutation")
        return _Match(first.inputs[0], p, chain, user, q)

    def apply(self, b: Builder, m: _Match) -> None:
        prev = m.source
        for node, idx in m.chain:
            for i, v in enumerate(node.inputs):
                if i != idx and v is not None and v.const_value is not None and v.const_value.shape is not None \
                        and len(v.const_value.shape) > 0 and np.prod(v.const_value.shape) > 1:
                    node.replace_input_with(i, b.relaid_const(v.const_value.numpy(), m.perm, v, f"{v.name}__t"))
            node.replace_input_with(idx, prev)
            node.outputs[0].shape = None
            prev = node.outputs[0]
        r = compose(m.perm, m.end_perm)
        if is_identity(r):
            replace_value(b.graph, m.end.outputs[0], prev)
        else:
            m.end.attributes["perm"] = ir.AttrInt64s("perm", r)
