"""Rule (``cpu``): a patch-embedding Conv read back channels-last becomes space-to-depth + MatMul.

Pattern: ``Transpose(Conv(x, W, b), (0, 2, 3, 1))`` where the Conv cuts non-overlapping patches (kernel ==
stride, no padding, no dilation, one group) and its input, when it is ``Transpose(z, (0, 3, 1, 2))`` of a
channels-last ``z``, is read from ``z`` directly.

Replacement: ``Reshape`` into patches, one ``Transpose`` that puts each patch's pixels last, ``Reshape`` to
``(N, H/k, W/k, k*k*C)``, ``MatMul`` with the kernel laid out as ``(k*k*C, C_out)``, ``Add`` of the bias.
Exact up to the order of the k*k*C products in each sum.

Why: the token map then starts channels-last from a MatMul. Written as Conv + Transpose, OpenVINO keeps the
Conv's ``nhwc`` memory order and labels the transposed map ``acdb``; every op of the residual stream inherits
that layout, and each LayerNorm and Gemm is wrapped in a Reorder, which in f32 runs a reference kernel (0.7 ms per
LayerNorm at 32x32x192 on S2-MLPv2-Small: 8 ms of a 45 ms inference). The same model side by side (BENCHMARKS.md):
OpenVINO f32 0.77 -> 0.63 of the naive graph's latency, bf16 0.57 -> 0.51, ONNX Runtime 0.61 -> 0.64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from .._graph import Builder, const_array, perm_of, replace_value, static_shape
from ..rule import Decline, NodeRule

_TO_LAST = [0, 2, 3, 1]
_TO_FIRST = [0, 3, 1, 2]


def _patch_kernel(node: ir.Node) -> tuple[int, int] | str:
    """(kh, kw) when ``node`` is a 2-D Conv over non-overlapping patches with constant weights, else why not."""
    if len(node.inputs) < 2:
        return "no weight input"
    weight = const_array(node.inputs[1])
    if weight is None or weight.ndim != 4:
        return "weight is not a constant 2-D kernel"
    kernel = tuple(weight.shape[2:])
    attrs = node.attributes
    if attrs.get_int("group", 1) != 1 or attrs.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return "grouped or auto-padded"
    strides = tuple(attrs.get_ints("strides", [1, 1]))
    if strides != kernel or kernel == (1, 1) or any(attrs.get_ints("pads", [0] * 4)):
        return "patches overlap, are 1x1, or are padded"
    if any(d != 1 for d in attrs.get_ints("dilations", [1, 1])):
        return "dilated"
    if len(node.inputs) > 2 and node.inputs[2] is not None and const_array(node.inputs[2]) is None:
        return "bias is not a constant"
    return kernel


@dataclass(frozen=True)
class _Match:
    conv: ir.Node
    transpose: ir.Node
    kernel: tuple[int, int]
    x_shape: tuple[int, ...]


class PatchConvToMatMul(NodeRule, name="patch-conv-to-matmul", anchors={"Conv"}, prefix="patchify"):
    """Patch-embedding Conv read back channels-last -> space-to-depth + MatMul."""

    def match(self, node: ir.Node) -> _Match | Decline:
        kernel = _patch_kernel(node)
        if isinstance(kernel, str):
            return Decline(kernel)
        out = node.outputs[0]
        uses = out.uses()
        if out.is_graph_output() or len(uses) != 1:
            return Decline("output is a graph output or has several readers")
        transpose = uses[0][0]
        x_shape = static_shape(node.inputs[0])
        if transpose.op_type != "Transpose" or perm_of(transpose, 4) != _TO_LAST:
            return Decline("not read back channels-last")
        if x_shape is None:
            return Decline("input shape not static")
        if x_shape[2] % kernel[0] or x_shape[3] % kernel[1]:
            return Decline("image not a whole number of patches")
        return _Match(node, transpose, kernel, x_shape)

    def apply(self, b: Builder, m: _Match) -> None:
        node, out = m.conv, m.conv.outputs[0]
        (kh, kw), (n, c, h, w) = m.kernel, m.x_shape
        weight = const_array(node.inputs[1])
        kernel_matrix = np.ascontiguousarray(weight.transpose(2, 3, 1, 0).reshape(kh * kw * c, weight.shape[0]))
        producer = node.inputs[0].producer()
        if producer is not None and producer.op_type == "Transpose" and perm_of(producer, 4) == _TO_FIRST:
            source, patches, order = producer.inputs[0], [n, h // kh, kh, w // kw, kw, c], [0, 1, 3, 2, 4, 5]
        else:
            source, patches, order = node.inputs[0], [n, c, h // kh, kh, w // kw, kw], [0, 2, 4, 3, 5, 1]
        cur = b.op("Reshape", [source, b.const(np.array(patches, np.int64), "patches_shape")], "patches")
        cur = b.op("Transpose", [cur], "patch_pixels_last", perm=order)
        rows = [n, h // kh, w // kw, kh * kw * c]
        cur = b.op("Reshape", [cur, b.const(np.array(rows, np.int64), "rows_shape")], "rows")
        cur = b.op("MatMul", [cur, b.const(kernel_matrix.astype(weight.dtype), "weight")], "matmul")
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            cur = b.op("Add", [cur, b.const(const_array(node.inputs[2]).astype(weight.dtype), "bias")], "bias_add")
        for new in b.nodes:
            new.outputs[0].type = out.type
        cur.shape = m.transpose.outputs[0].shape
        b.insert_before(node)
        replace_value(b.graph, m.transpose.outputs[0], cur)
