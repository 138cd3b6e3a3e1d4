"""Rule (``cpu``): ``Transpose(a @ W + b, channels-first)`` becomes ``Conv1x1(Transpose(a), W^T, b)``.

When ``a`` has fewer elements than the Linear's output, the layout change moves to the narrower tensor and
the Linear runs as a 1x1 Conv on channels-first data. ``W`` and ``b`` must be constants; the Linear may be
``MatMul [+ Add]`` or the flattened ``Reshape -> Gemm -> Reshape`` exporters and onnxsim write.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from .._graph import (
    CONV_DTYPES,
    Builder,
    channels_first_perm,
    const_array,
    is_private,
    numel,
    perm_of,
    replace_value,
    static_shape,
)
from ..propagate import conv1x1
from ..rule import Decline, NodeRule


@dataclass(frozen=True)
class Linear:
    """``value == a @ weight (+ bias)`` over the last axis."""

    a: ir.Value
    weight: np.ndarray  # (K, N)
    bias: np.ndarray | None  # (N,)


def _const_bias(value: ir.Value | None, n: int) -> np.ndarray | None:
    """A constant broadcast along the last axis only, as a vector of ``n``; None otherwise."""
    array = const_array(value)
    if array is None:
        return None
    if any(d != 1 for d in array.shape[:-1]) or (array.ndim and array.shape[-1] not in (1, n)):
        return None
    return np.broadcast_to(array.reshape(-1), (n,)).copy()


def linear_source(value: ir.Value) -> Linear | None:
    """How ``value`` is computed as a Linear with constant weights, every intermediate private; or None.

    Matches ``Add(MatMul(a, W), b)``, ``MatMul(a, W)`` and
    ``Reshape(Gemm(Reshape(a, (M, K)), W, b), a.shape[:-1] + (N,))``.
    """
    shape = static_shape(value)
    if shape is None or not is_private(value):
        return None
    n = shape[-1]
    producer = value.producer()
    bias = None
    if producer is not None and producer.op_type == "Add" and len(producer.inputs) == 2:
        consts = [i for i, v in enumerate(producer.inputs) if const_array(v) is not None]
        if len(consts) != 1:
            return None
        bias = _const_bias(producer.inputs[consts[0]], n)
        value = producer.inputs[1 - consts[0]]
        if bias is None or value is None or not is_private(value) or static_shape(value) != shape:
            return None
        producer = value.producer()
    if producer is None:
        return None
    if producer.op_type == "MatMul":
        a, w = producer.inputs
        a_shape = static_shape(a)
        weight = const_array(w)
        if weight is None or a_shape is None or len(a_shape) != len(shape):
            return None
        return Linear(a, weight, bias) if weight.ndim == 2 and a_shape[:-1] == shape[:-1] else None
    if producer.op_type != "Reshape" or bias is not None:
        return None
    flat = producer.inputs[0]
    gemm = flat.producer() if flat is not None else None
    if gemm is None or gemm.op_type != "Gemm" or not is_private(flat) or len(gemm.inputs) < 2:
        return None
    attrs = gemm.attributes
    if attrs.get_float("alpha", 1.0) != 1.0 or attrs.get_int("transA", 0):
        return None
    a2, w = gemm.inputs[0], gemm.inputs[1]
    c = gemm.inputs[2] if len(gemm.inputs) > 2 else None
    weight = const_array(w)
    if weight is None or a2 is None or not is_private(a2) or a2.producer() is None:
        return None
    if a2.producer().op_type != "Reshape":
        return None
    a = a2.producer().inputs[0]
    a_shape = static_shape(a)
    if weight.ndim != 2 or a_shape is None or len(a_shape) != len(shape) or a_shape[:-1] != shape[:-1]:
        return None
    if attrs.get_int("transB", 0):
        weight = weight.T
    if c is not None:
        bias = _const_bias(c, n)
        if bias is None or attrs.get_float("beta", 1.0) != 1.0:
            return None
    if static_shape(a2) != (numel(a_shape[:-1]), a_shape[-1]) or weight.shape != (a_shape[-1], n):
        return None
    return Linear(a, weight, bias)


@dataclass(frozen=True)
class _Match:
    node: ir.Node
    linear: Linear


class LinearToConv1x1(NodeRule, name="linear-to-conv1x1", anchors={"Transpose"}):
    """Transpose(Linear(a), channels-first) -> Conv1x1(Transpose(a)) when a is narrower."""

    def match(self, node: ir.Node) -> _Match | Decline:
        shape = static_shape(node.inputs[0])
        if shape is None or len(shape) < 3:
            return Decline("input shape not static (or rank < 3)")
        if perm_of(node, len(shape)) != channels_first_perm(len(shape)):
            return Decline("not a channels-last -> channels-first Transpose")
        found = linear_source(node.inputs[0])
        if found is None:
            return Decline("input is not a private Linear with constant weights")
        a = found.a
        if numel(static_shape(a)) >= numel(shape):
            return Decline("the Linear's input is not narrower than its output")
        if a.dtype not in CONV_DTYPES or a.dtype != node.inputs[0].dtype:
            return Decline(f"element type {a.dtype} has no Conv on every runtime")
        return _Match(node, found)

    def apply(self, b: Builder, m: _Match) -> None:
        node, a = m.node, m.linear.a
        a_shape = static_shape(a)
        rank = len(a_shape)
        perm = channels_first_perm(rank)
        prefix = f"{node.name or 'transpose'}/hoisted"
        moved = b.op("Transpose", [a], f"{prefix}/to_channels_first", perm=perm)
        moved.shape, moved.type = ir.Shape([a_shape[k] for k in perm]), a.type
        conv = conv1x1(b, moved, m.linear.weight, m.linear.bias, rank, f"{prefix}/conv1x1")
        conv.shape, conv.type = node.outputs[0].shape, node.outputs[0].type
        b.insert_before(node)
        replace_value(b.graph, node.outputs[0], conv)
