"""Rule: ``roll(x, s) -> ops that act on each position alone -> roll(., -s)`` becomes just the ops on ``x``.

A roll only moves positions, and an op that computes each output position from the same input position
(elementwise ops with operands that do not vary along the rolled axes, LayerNorm and Softmax over other axes,
a Linear on the last axis) commutes with it, so the roll and its inverse cancel around such a chain.
PyTorch exports ``torch.roll`` as ``Concat(Slice(x, k:n), Slice(x, 0:k))`` per axis; left alone, the shift rule
would turn each roll into Transposes, a circular Pad and a crop. Exact: no arithmetic changes, only where it
reads from. Rolls over several axes, in any order, cancel when their net shift on every axis is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from .._graph import (
    BROADCAST_BINARY,
    Builder,
    const_array,
    is_unary,
    replace_value,
    static_shape,
)
from ..rule import Decline, NodeRule

_INT_MAX = 2**62
#: Ops that act on each position alone along every axis before the one(s) they work on.
_ALONG_LAST_AXES = frozenset({"LayerNormalization", "Softmax", "LogSoftmax", "MatMul"})


@dataclass(frozen=True)
class Roll:
    """``output == roll(source, shift, axis)``, written as ``Concat(first, second)`` of two Slices of ``source``."""

    source: ir.Value
    axis: int
    shift: int
    slices: tuple[ir.Node, ir.Node]


def _slice_range(node: ir.Node, shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(axis, start, end) of a one-axis, step-1 Slice with constant bounds, normalised to the axis size."""
    if node.op_type != "Slice" or len(node.inputs) < 3:
        return None
    starts, ends = const_array(node.inputs[1]), const_array(node.inputs[2])
    axes = const_array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    steps = const_array(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else None
    if starts is None or ends is None or starts.size != 1 or ends.size != 1:
        return None
    if (len(node.inputs) > 3 and node.inputs[3] is not None and axes is None) or (steps is not None and steps.ravel()[0] != 1):
        return None
    axis = int(axes.ravel()[0]) % len(shape) if axes is not None else 0
    n = shape[axis]

    def clamp(v: int) -> int:
        v = max(min(v, _INT_MAX), -_INT_MAX)
        return min(max(v + n if v < 0 else v, 0), n)

    return axis, clamp(int(starts.ravel()[0])), clamp(int(ends.ravel()[0]))


def roll_of(value: ir.Value | None) -> Roll | None:
    """How ``value`` is a roll of another tensor along one axis (PyTorch's export of ``torch.roll``), or None."""
    concat = value.producer() if value is not None else None
    if concat is None or concat.op_type != "Concat" or len(concat.inputs) != 2:
        return None
    first, second = (v.producer() if v is not None else None for v in concat.inputs)
    if first is None or second is None or first.inputs[0] is not second.inputs[0]:
        return None
    shape = static_shape(first.inputs[0])
    if shape is None:
        return None
    a, b = _slice_range(first, shape), _slice_range(second, shape)
    if a is None or b is None or a[0] != b[0] or concat.attributes.get_int("axis", 0) % len(shape) != a[0]:
        return None
    axis, n = a[0], shape[a[0]]
    k = a[1]
    if not (0 < k < n and a[2] == n and b[1] == 0 and b[2] == k):
        return None
    return Roll(first.inputs[0], axis, n - k, (first, second))


def _reads_only(value: ir.Value, roll: Roll) -> bool:
    """``value`` is read by the roll's two Slices and nothing else."""
    return not value.is_graph_output() and {id(n) for n, _ in value.uses()} == {id(s) for s in roll.slices}


def _peel(value: ir.Value) -> tuple[ir.Value, list[Roll]]:
    """Follow rolls up from ``value``: the tensor they start from, and the rolls (outermost first).

    A roll's source must be read by that roll alone (except the innermost source: it is what remains)."""
    rolls: list[Roll] = []
    roll = roll_of(value)
    while roll is not None:
        rolls.append(roll)
        inner = roll_of(roll.source)
        if inner is None or not _reads_only(roll.source, roll):
            return roll.source, rolls
        roll = inner
    return value, rolls


def _carried_inputs(node: ir.Node, axes: set[int]) -> list[ir.Value] | str:
    """The inputs of ``node`` that carry the rolled tensor, when ``node`` computes each position along ``axes``
    from the same position of them (every other input a constant that does not vary along ``axes``); else why not."""
    out_shape = static_shape(node.outputs[0]) if len(node.outputs) == 1 else None
    if out_shape is None or node.domain not in ("", "ai.onnx"):
        return f"{node.op_type}: output shape not static, several outputs or another domain"
    rank = len(out_shape)
    if not (is_unary(node) or node.op_type in BROADCAST_BINARY or node.op_type in _ALONG_LAST_AXES):
        return f"{node.op_type}: mixes positions (or is not known to act on each alone)"
    carried = [v for v in node.inputs if v is not None and const_array(v) is None]
    if not carried or any(static_shape(v) != out_shape for v in carried):
        return f"{node.op_type}: broadcasts a computed operand or changes the shape"
    if is_unary(node) or node.op_type in BROADCAST_BINARY:
        for v in node.inputs:
            array = const_array(v) if v is not None else None
            if array is not None:
                if array.ndim > rank:
                    return f"{node.op_type}: a constant operand has a higher rank"
                full = (1,) * (rank - array.ndim) + array.shape
                if any(full[a] != 1 for a in axes):
                    return f"{node.op_type}: a constant operand varies along a rolled axis"
        return carried
    if node.inputs[0] is not carried[0] or len(carried) != 1:
        return f"{node.op_type}: a computed operand other than its input"
    if node.op_type in ("LayerNormalization", "Softmax", "LogSoftmax"):
        start = node.attributes.get_int("axis", -1) % rank
        return carried if all(a < start for a in axes) else f"{node.op_type}: normalises over a rolled axis"
    if const_array(node.inputs[1]).ndim != 2:  # MatMul: a Linear acts on the last axis only
        return "MatMul: weight is not a matrix"
    return carried if rank - 1 not in axes else "MatMul: contracts a rolled axis"


def _region(last: ir.Value, axes: set[int]) -> tuple[ir.Value, list[ir.Node]] | str:
    """The rolled value and the position-wise ops that compute ``last`` from it (and from constants); else why not.

    Every value inside must be read only inside (``last`` excepted), so nothing else sees the rolled tensor."""
    rolled: ir.Value | None = None
    nodes: dict[int, ir.Node] = {}
    inside: list[ir.Value] = []
    stack, seen = [last], set()
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        inside.append(value)
        if roll_of(value) is not None:
            if rolled is not None:
                return "two rolled tensors meet between the rolls"
            rolled = value
            continue
        op = value.producer()
        if op is None:
            return "no roll before the position-wise ops"
        carried = _carried_inputs(op, axes)
        if isinstance(carried, str):
            return carried
        nodes[id(op)] = op
        stack.extend(carried)
    if rolled is None:
        return "no roll before the position-wise ops"
    for value in inside:
        if value is not last and (value.is_graph_output() or any(id(n) not in nodes for n, _ in value.uses())):
            return "a value between the rolls has other readers"
    return rolled, list(nodes.values())


def _net_shifts(rolls: list[Roll], shape: tuple[int, ...]) -> dict[int, int]:
    net: dict[int, int] = {}
    for r in rolls:
        net[r.axis] = (net.get(r.axis, 0) + r.shift) % shape[r.axis]
    return net


@dataclass(frozen=True)
class _Match:
    anchor: ir.Value  # the output of the outermost inverse roll
    source: ir.Value  # what the first roll reads
    rolled: ir.Value | None  # the rolled tensor the position-wise ops read (None: the rolls cancel directly)
    ops: list[ir.Node]
    last: ir.Value | None  # what the inverse rolls read


class FoldRolls(NodeRule, name="fold-rolls", anchors={"Concat"}):
    """Roll -> position-wise ops -> inverse roll -> the ops alone."""

    def match(self, node: ir.Node) -> _Match | Decline:
        anchor = node.outputs[0]
        if roll_of(anchor) is None:
            return Decline("not a roll (Concat of two Slices of one tensor)")
        last, outer = _peel(anchor)
        shape = static_shape(last)
        if not any(_net_shifts(outer, shape).values()):  # the rolls cancel among themselves
            return _Match(anchor, last, None, [], None)
        if not _reads_only(last, outer[-1]):
            return Decline("the rolled value has other readers")
        region = _region(last, {r.axis for r in outer})
        if isinstance(region, str):
            return Decline(region)
        rolled, ops = region
        source, inner = _peel(rolled)
        if any(_net_shifts([*inner, *outer], shape).values()):
            return Decline("the rolls do not cancel")
        return _Match(anchor, source, rolled, ops, last)

    def apply(self, b: Builder, m: _Match) -> None:
        for op in m.ops:
            for i, value in enumerate(op.inputs):
                if value is m.rolled:
                    op.replace_input_with(i, m.source)
        replace_value(b.graph, m.anchor, m.last if m.last is not None else m.source)
