"""The layout-propagation core: how an op takes an operand whose Transpose has been lifted off it.

Three rules carry Transposes through the graph, each with its own policy of where a Transpose should end:
:mod:`.rules.cancel_transposes` (only where it meets another and cancels), :mod:`.rules.narrow_transposes`
(``cpu``: on the tensor with the fewest elements) and :mod:`.rules.channels_first` (``openvino``/``npu``:
not at all, every token map channels-first). What an op must become when its input arrives without the
Transpose ``p`` is the same for all three and lives here: the other operand of a broadcasting op re-laid
out, a reduction's axes remapped, a Linear written as a 1x1 Conv.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ._graph import (
    Builder,
    const_array,
    inverse,
    numel,
    only_unit_axes_move,
    reduce_axes,
    static_shape,
)


def side_follows(other: ir.Value | None, p: list[int]) -> bool:
    """Whether the other operand of a broadcasting op can follow a lifted Transpose ``p`` (see :func:`relaid_side`)."""
    if other is None:
        return False
    array = const_array(other)
    if array is not None:
        return array.ndim <= len(p)
    shape = static_shape(other)
    if shape is None or len(shape) > len(p):
        return False
    full = (1,) * (len(p) - len(shape)) + shape
    return only_unit_axes_move(full, inverse(p))


def relaid_side(b: Builder, other: ir.Value, p: list[int]) -> ir.Value | None:
    """``other`` laid out for an operand that lost ``Transpose(., p)``; None when that needs data to move.

    A single element stays as it is; a constant is transposed; a static-shape value whose re-layout only moves
    size-1 axes is reshaped (inserted with the builder's next batch).
    """
    rank = len(p)
    array = const_array(other)
    if array is not None:
        if array.size == 1:
            return other
        return None if array.ndim > rank else b.relaid_const(array, p, other, f"{other.name}__t")
    shape = static_shape(other)
    if shape is None or len(shape) > rank:
        return None
    if numel(shape) == 1:
        return other
    full = (1,) * (rank - len(shape)) + shape
    if not only_unit_axes_move(full, inverse(p)):
        return None
    target = np.array([full[a] for a in inverse(p)], dtype=np.int64)
    out = b.op("Reshape", [other, b.const(target, f"{other.name}__relayout_shape")], f"{other.name}__relayout")
    out.type, out.shape = other.type, ir.Shape(target.tolist())
    return out


def reduction_axes_after(p: list[int], axes: list[int]) -> list[int]:
    """The axes a reduction over ``axes`` of ``Transpose(u, p)`` reduces on ``u``."""
    return sorted(p[a] for a in axes)


def kept_perm(p: list[int], axes: list[int]) -> list[int]:
    """The permutation left on the output of a ``keepdims=0`` reduction over ``axes`` of ``Transpose(u, p)``."""
    kept = [p[i] for i in range(len(p)) if i not in axes]
    order = sorted(kept)
    return [order.index(a) for a in kept]


def remap_reduction(b: Builder, node: ir.Node, p: list[int]) -> None:
    """Rewrite a Reduce* node's axes (attribute or input) for its input losing ``Transpose(., p)``."""
    axes = reduce_axes(node, len(p))
    if not axes:  # all axes: unchanged
        return
    new_axes = reduction_axes_after(p, axes)
    if "axes" in node.attributes:
        node.attributes["axes"] = ir.AttrInt64s("axes", new_axes)
    else:
        node.replace_input_with(1, b.const(np.array(new_axes, dtype=np.int64), f"{node.name or 'reduce'}__axes"))


def reduce(b: Builder, op: str, x: ir.Value, axes: list[int], keepdims: int, opset: int, hint: str) -> ir.Value:
    """``Reduce*`` with axes as an input (opset >= 18, ReduceSum >= 13) or as an attribute before that."""
    if opset >= 18 or (op == "ReduceSum" and opset >= 13):
        return b.op(op, [x, b.const(np.array(axes, dtype=np.int64), f"{hint}_axes")], hint, keepdims=keepdims)
    return b.op(op, [x], hint, axes=axes, keepdims=keepdims)


def conv1x1(b: Builder, x: ir.Value, weight: np.ndarray, bias: np.ndarray | None, rank: int, hint: str) -> ir.Value:
    """``x @ weight + bias`` over the channel axis of a channels-first ``x``, as a 1x1 Conv (queued on ``b``).

    ``weight`` is the Linear's ``(K, N)`` matrix; the Conv kernel is its transpose with unit spatial axes.
    """
    kernel = np.ascontiguousarray(weight.T).reshape(weight.shape[1], weight.shape[0], *([1] * (rank - 2)))
    inputs = [x, b.const_like(kernel, x, f"{hint}_w")]
    if bias is not None:
        inputs.append(b.const_like(bias, x, f"{hint}_b"))
    return b.op("Conv", inputs, hint, kernel_shape=[1] * (rank - 2))
