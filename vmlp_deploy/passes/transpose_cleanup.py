"""Rewrite rule: cancel and fold layout changes (Transpose, Reshape) that meet each other.

* ``Transpose(Transpose(x, p), q)`` becomes ``Transpose(x, p[q])``, or ``x`` when that is the identity.
* ``Transpose(x, p) -> elementwise ops -> Transpose(., q)`` becomes ``elementwise ops -> Transpose(., p[q])``
  (or nothing): the first Transpose is sunk through single-use elementwise ops whose other operands are
  constants (transposed accordingly) or single elements, until it meets the second. A Transpose that meets
  no other Transpose is left where it is, so layout changes are only removed, never just moved around.
* ``Reshape(Reshape(x, s1), s2)`` becomes ``Reshape(x, s2)`` when ``s2`` is constant without zeros.

Values that are graph outputs keep their producers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from ._graph import used_names

#: Elementwise ops with one data input and no layout-dependent attributes.
_UNARY = frozenset({
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Cast", "Ceil", "Celu", "Clip", "Cos", "Cosh",
    "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu",
    "Log", "Mish", "Neg", "Not", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin", "Sinh",
    "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu",
})
#: Broadcasting elementwise ops.
_BINARY = frozenset({
    "Add", "And", "BitShift", "Div", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Min",
    "Mod", "Mul", "Or", "Pow", "PRelu", "Sub", "Sum", "Where", "Xor",
})


@dataclasses.dataclass
class CleanupStats:
    """What the cleanup removed."""

    transposes_folded: int = 0
    transposes_cancelled: int = 0
    reshapes_folded: int = 0

    @property
    def total(self) -> int:
        return self.transposes_folded + self.transposes_cancelled + self.reshapes_folded


def _perm(node: ir.Node, rank: int | None) -> list[int] | None:
    attr = node.attributes.get("perm")
    if attr is not None:
        return list(attr.as_ints())
    return list(reversed(range(rank))) if rank is not None else None


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


def _single_use(value: ir.Value) -> ir.Node | None:
    uses = value.uses()
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0][0]


def _other_operand_ok(value: ir.Value | None, rank: int) -> bool:
    """A side operand that can follow the Transpose: a constant of rank <= rank, or a single element."""
    if value is None:
        return True
    if value.const_value is not None:
        return value.const_value.shape is not None and len(value.const_value.shape) <= rank
    return value.shape is not None and all(isinstance(d, int) and d == 1 for d in value.shape.dims)


def _transposed_const(graph: ir.Graph, value: ir.Value, perm: list[int], taken: set[str]) -> ir.Value:
    """``c'`` with ``transpose(c', perm) == c`` (after right-aligned broadcasting to len(perm) axes)."""
    if value.const_value is None:
        return value
    array = value.const_value.numpy()
    rank = len(perm)
    array = array.reshape((1,) * (rank - array.ndim) + array.shape)
    inverse = np.argsort(perm)
    new_array = np.ascontiguousarray(array.transpose(inverse))
    name, i = f"{value.name}__t", 1
    while name in taken:
        name, i = f"{value.name}__t{i}", i + 1
    taken.add(name)
    new = ir.Value(name=name, const_value=ir.tensor(new_array, name=name))
    new.shape = ir.Shape(new_array.shape)
    new.type = value.type
    graph.register_initializer(new)
    return new


def _replace_value(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    """Use ``new`` wherever ``old`` is used; a graph output keeps its name (via Identity if needed)."""
    if old.is_graph_output():
        if new.is_graph_input() or new.is_graph_output() or new.is_initializer():
            node = ir.node("Identity", [new], name=f"{old.name}__identity")
            if old.producer() is not None:
                graph.insert_before(old.producer(), node)
            else:
                graph.append(node)
            new = node.outputs[0]
        name = old.name
        old.name = f"{name}__replaced"
        new.name = name
        new.type, new.shape = old.type, old.shape
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)


def _compose(p: list[int], q: list[int]) -> list[int]:
    return [p[k] for k in q]


def _fold_transpose_pairs(graph: ir.Graph, stats: CleanupStats) -> bool:
    changed = False
    for node in list(graph):
        if node.op_type != "Transpose" or node.graph is None:
            continue
        src = node.inputs[0]
        parent = src.producer() if src is not None else None
        if parent is None or parent.op_type != "Transpose":
            continue
        rank = _rank(parent.inputs[0]) or _rank(src)
        p, q = _perm(parent, rank), _perm(node, rank)
        if p is None or q is None:
            continue
        r = _compose(p, q)
        if r == list(range(len(r))):
            _replace_value(graph, node.outputs[0], parent.inputs[0])
        else:
            node.replace_input_with(0, parent.inputs[0])
            node.attributes["perm"] = ir.AttrInt64s("perm", r)
        stats.transposes_folded += 1
        changed = True
    return changed


def _sink_transposes(graph: ir.Graph, taken: set[str], stats: CleanupStats) -> bool:
    changed = False
    for first in list(graph):
        if first.op_type != "Transpose" or first.graph is None:
            continue
        x = first.inputs[0]
        rank = _rank(x)
        p = _perm(first, rank)
        if p is None:
            continue
        chain: list[tuple[ir.Node, int]] = []
        cur = first.outputs[0]
        end = None
        while True:
            user = _single_use(cur)
            if user is None:
                break
            if user.op_type == "Transpose":
                end = user
                break
            if user.domain not in ("", "ai.onnx") or len(user.outputs) != 1:
                break
            idx = [i for i, v in enumerate(user.inputs) if v is cur]
            if len(idx) != 1:
                break
            unary = user.op_type in _UNARY and (len(user.inputs) == 1 or user.op_type == "Clip")
            if not (unary or user.op_type in _BINARY):
                break
            if not all(_other_operand_ok(v, len(p)) for i, v in enumerate(user.inputs) if i != idx[0]):
                break
            chain.append((user, idx[0]))
            cur = user.outputs[0]
        if end is None or not chain:
            continue
        q = _perm(end, len(p))
        if q is None:
            continue
        # Rewire: the chain now runs on x directly; side constants are transposed back.
        prev = x
        for node, idx in chain:
            for i, v in enumerate(node.inputs):
                if i != idx and v is not None and v.const_value is not None and v.const_value.shape is not None \
                        and len(v.const_value.shape) > 0 and np.prod(v.const_value.shape) > 1:
                    node.replace_input_with(i, _transposed_const(graph, v, p, taken))
            node.replace_input_with(idx, prev)
            node.outputs[0].shape = None
            prev = node.outputs[0]
        r = _compose(p, q)
        if r == list(range(len(r))):
            _replace_value(graph, end.outputs[0], prev)
            stats.transposes_cancelled += 2
        else:
            end.attributes["perm"] = ir.AttrInt64s("perm", r)
            stats.transposes_cancelled += 1
        changed = True
    return changed


def _fold_reshapes(graph: ir.Graph, stats: CleanupStats) -> bool:
    changed = False
    for node in list(graph):
        if node.op_type != "Reshape" or node.graph is None:
            continue
        src = node.inputs[0]
        parent = src.producer() if src is not None else None
        if parent is None or parent.op_type != "Reshape":
            continue
        shape = node.inputs[1]
        if shape is None or shape.const_value is None or (shape.const_value.numpy() == 0).any():
            continue
        node.replace_input_with(0, parent.inputs[0])
        stats.reshapes_folded += 1
        changed = True
    return changed


def cleanup_layout(model: ir.Model, *, max_rounds: int = 8) -> CleanupStats:
    """Fold and cancel Transposes and Reshapes in ``model`` in place; dead nodes are removed."""
    graph = model.graph
    stats = CleanupStats()
    taken = used_names(graph)
    for _ in range(max_rounds):
        changed = _fold_transpose_pairs(graph, stats)
        changed |= _sink_transposes(graph, taken, stats)
        changed |= _fold_reshapes(graph, stats)
        if not changed:
            break
        common_passes.RemoveUnusedNodesPass()(model)
    common_passes.RemoveUnusedNodesPass()(model)
    return stats
