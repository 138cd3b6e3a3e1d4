"""Rule (``openvino``, ``npu``): run channels-last token maps channels-first, for runtimes built around Conv.

Transformer-style blocks keep their token maps channels-last, ``(B, H, W, C)``: LayerNorm over the last
axis, Linear as MatMul or as Gemm on flattened rows. OpenVINO's CPU plugin runs Conv, depthwise Conv and
pooling in channels-first layouts (``nChw16c``, or ``nhwc`` seen as NCHW), so a block that starts
channels-first and continues channels-last pays layout Reorders and generic Transposes around every shift
Conv, and its residual stream lands in a layout (``acdb`` of the NHWC shape) that needs a Reorder before
every LayerNorm and after every Gemm. Edge NPUs want the same thing: Conv, no 4-D MatMul.

Every Transpose that makes a channels-first value channels-last (the channel axis moved to the end, the
other axes in order) is lifted and carried *down* the graph, and each op it reaches is rewritten to the
equivalent op on the untransposed value (the shared cases in :mod:`..propagate`):

* elementwise ops: unary; binary when each other operand can follow (:func:`..propagate.relaid_side`) or
  carries the same Transpose;
* ``LayerNormalization`` over the last axis -> the same normalisation over the channel axis
  (ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Div, Mul, Add: OpenVINO fuses it into one MVN);
* ``MatMul(x, W)`` and ``Gemm`` on the flattened rows of ``x``, constant ``W``, contracting the channel
  axis -> ``Conv`` 1x1 (a constant bias is folded into it);
* ``Reshape`` flattening the leading axes ``(B, H, W, C) -> (B*H*W, C)`` and back;
* ``Reduce*`` (axes remapped; a reduction may end the Transpose), ``Transpose`` (composed; may cancel).

A value an op cannot take that way gets the Transpose back, once, just before that op. No Transpose is
created where none was, so on a graph without such Transposes the rule changes nothing. Exact up to float
summation order (LayerNorm, the 1x1 Conv and the reductions add in another order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np
import onnx_ir as ir

from .._graph import (
    BROADCAST_BINARY,
    FLOAT_DTYPES,
    REDUCE,
    Builder,
    compose,
    const_array,
    default_opset,
    is_channels_last_perm,
    is_identity,
    is_unary,
    perm_of,
    reduce_axes,
    replace_value,
    static_shape,
)
from ..propagate import conv1x1, kept_perm, reduce, reduction_axes_after, relaid_side
from ..rule import Decline, GraphRule


@dataclasses.dataclass(frozen=True)
class _Pending:
    """``value == Reshape(Transpose(u, perm), flat)`` (no Reshape when ``flat`` is None)."""

    u: ir.Value
    perm: tuple[int, ...]
    flat: tuple[int, ...] | None = None

    @property
    def channel_axis(self) -> int:
        return self.perm[-1]


@dataclasses.dataclass(frozen=True)
class _Visit:
    """One op reached by a lifted Transpose (``kind`` says how it is rewritten), or a value to restore."""

    kind: str
    node: ir.Node | None = None
    value: ir.Value | None = None


def _transposed_shape(shape: tuple[int, ...], p: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[a] for a in p)


def _vector_along(array: np.ndarray, n: int) -> np.ndarray | None:
    """A constant that broadcasts along the last axis only, as a vector of ``n`` (or a scalar), else None."""
    if array.size == 1:
        return array.reshape(())
    if any(d != 1 for d in array.shape[:-1]) or array.shape[-1] != n:
        return None
    return array.reshape(n)


def _typed(value: ir.Value, like: ir.Value, shape: tuple[int, ...] | None) -> ir.Value:
    value.type = like.type
    if shape is not None:
        value.shape = ir.Shape(shape)
    return value


class ChannelsFirst(GraphRule, name="channels-first"):
    """Carry channels-last Transposes down the graph, rewriting each op channels-first."""

    #: Lifting a Transpose, flattening views, cancelling and restoring keep books; the rest rewrites ops.
    bookkeeping = frozenset({"lift", "cancel", "reshape", "restore"})

    def find(self, model: ir.Model) -> Iterator[_Visit | Decline]:
        self.graph = model.graph
        self.opset = default_opset(model)
        self.b = Builder(self.graph, "channels_first")
        self.pending: dict[int, tuple[ir.Value, _Pending]] = {}  # id(original value) -> (value, how)
        self.converted: set[int] = set()  # ids of original nodes whose outputs are all pending or replaced
        self.made_convs: set[int] = set()
        for node in list(self.graph):
            if node.graph is None or node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type == "Transpose":
                yield _Visit("transpose", node)
            elif not any(self._get(v) for v in node.inputs):
                continue
            elif is_unary(node) and len(node.inputs) == 1:
                yield _Visit("unary", node)
            elif node.op_type in BROADCAST_BINARY and len(node.inputs) == 2:
                yield _Visit("binary", node)
            elif node.op_type in ("LayerNormalization", "MatMul", "Gemm", "Reshape") or node.op_type in REDUCE:
                yield _Visit({"LayerNormalization": "layernorm", "MatMul": "linear", "Gemm": "linear",
                              "Reshape": "reshape"}.get(node.op_type, "reduce"), node)
            else:
                yield Decline(f"{node.op_type} cannot take a channels-first input: the Transpose is put back")
        for value, how in list(self.pending.values()):
            users = [(n, i) for n, i in value.uses() if id(n) not in self.converted]
            if users or value.is_graph_output():
                yield _Visit("restore", value=value)

    def rewrite(self, model: ir.Model, visit: _Visit) -> _Visit | Decline | None:
        handlers: dict[str, Callable[[ir.Node], _Visit | str | None]] = {
            "transpose": self._transpose, "unary": self._unary, "binary": self._binary,
            "layernorm": self._layer_norm, "linear": self._linear, "reshape": self._reshape, "reduce": self._reduce,
        }
        if visit.kind == "restore":
            self._restore(visit.value)
            return None
        outcome = handlers[visit.kind](visit.node)
        if isinstance(outcome, str):
            self.b.nodes = []
            return Decline(outcome)
        return outcome

    # ------------------------------------------------------------------ helpers

    def _get(self, value: ir.Value | None) -> _Pending | None:
        entry = self.pending.get(id(value)) if value is not None else None
        return entry[1] if entry else None

    def _set(self, value: ir.Value, how: _Pending) -> None:
        self.pending[id(value)] = (value, how)

    def _channel_vector(self, vector: np.ndarray, how: _Pending, like: ir.Value, hint: str) -> ir.Value:
        """A per-channel vector laid out to broadcast along ``how.u``'s channel axis."""
        shape = [1] * len(how.perm)
        shape[how.channel_axis] = vector.size
        return self.b.const_like(vector.reshape(shape), like, hint)

    def _done(self, node: ir.Node, kind: str) -> _Visit:
        self.converted.add(id(node))
        return _Visit(kind, node)

    # ------------------------------------------------------------------ one handler per kind of op

    def _transpose(self, node: ir.Node) -> _Visit | str:
        x, out = node.inputs[0], node.outputs[0]
        how = self._get(x)
        shape = static_shape(x)
        if shape is None or static_shape(out) is None:
            return "Transpose: shape not static"
        q = perm_of(node, len(shape))
        if how is None:
            if q is None or not is_channels_last_perm(q) or out.is_graph_output():
                return "Transpose: not channels-first -> channels-last"
            self._set(out, _Pending(x, tuple(q)))
            self.converted.add(id(node))
            return _Visit("lift", node)
        if how.flat is not None or q is None:
            return "Transpose of a flattened channels-first value"
        r = tuple(compose(how.perm, q))
        if is_identity(r):
            replace_value(self.graph, out, how.u)
            self.converted.add(id(node))
            return _Visit("cancel", node)
        self._set(out, _Pending(how.u, r))
        return self._done(node, "compose")

    def _unary(self, node: ir.Node) -> _Visit:
        how = self._get(node.inputs[0])
        new = self.b.op(node.op_type, [how.u], node.op_type.lower(), **{k: a.value for k, a in node.attributes.items()})
        _typed(new, node.outputs[0], static_shape(how.u))
        self.b.insert_before(node)
        self._set(node.outputs[0], dataclasses.replace(how, u=new))
        return self._done(node, "elementwise")

    def _side(self, value: ir.Value | None, how: _Pending) -> ir.Value | None:
        """The other operand of a binary op, re-laid out like ``how.u``; None when it cannot be."""
        if value is None:
            return None
        other = self._get(value)
        if other is not None:
            return other.u if self._compatible(other, how) else None
        if how.flat is None:
            return relaid_side(self.b, value, list(how.perm))
        array = const_array(value)
        if array is None:
            return None
        if array.size == 1:
            return value
        vector = _vector_along(array, how.flat[-1])
        return None if vector is None else self._channel_vector(vector, how, value, "channel_const")

    @staticmethod
    def _compatible(a: _Pending, b: _Pending) -> bool:
        """Both operands carry the same pending layout change (flattened ones: from the same 4-D shape)."""
        if a.perm != b.perm or a.flat != b.flat:
            return False
        return a.flat is None or static_shape(a.u) == static_shape(b.u) is not None

    def _binary(self, node: ir.Node) -> _Visit | str:
        out = node.outputs[0]
        out_shape = static_shape(out)
        hows = [self._get(v) for v in node.inputs]
        how = next(h for h in hows if h is not None)
        rank = len(how.flat) if how.flat is not None else len(how.perm)
        if out_shape is None or len(out_shape) != rank:
            return f"{node.op_type}: output shape not static or broadcast to another rank"
        inputs = []
        for v, h in zip(node.inputs, hows):
            side = self._side(v, how) if h is None else h.u if self._compatible(h, how) else None
            if side is None:
                return f"{node.op_type}: the other operand cannot follow the Transpose"
            inputs.append(side)
        new = self._fold_bias(node, inputs) or self.b.op(node.op_type, inputs, node.op_type.lower(),
                                                         **{k: a.value for k, a in node.attributes.items()})
        if how.flat is None:
            u_shape = _transposed_shape(out_shape, tuple(int(a) for a in np.argsort(how.perm)))
        else:  # constants broadcast along the channel axis only: the shape of the pending input
            u_shape = static_shape(how.u)
        _typed(new, out, u_shape)
        self.b.insert_before(node)
        self._set(out, dataclasses.replace(how, u=new))
        return self._done(node, "elementwise")

    def _fold_bias(self, node: ir.Node, inputs: list[ir.Value]) -> ir.Value | None:
        """``Add(Conv(x, W), b)``, a 1x1 Conv this rule made and a per-channel constant ``b`` -> ``Conv(x, W, b)``."""
        if node.op_type != "Add":
            return None
        for i, conv_out in enumerate(inputs):
            conv = conv_out.producer()
            if conv is None or id(conv) not in self.made_convs or len(conv.inputs) != 2 or conv_out.uses():
                continue
            original = node.inputs[i]
            if len(original.uses()) != 1 or original.is_graph_output():
                continue
            bias = const_array(inputs[1 - i])
            n = static_shape(conv_out)[1]
            if bias is None or bias.size != n or bias.ndim < 2 or bias.shape[1] != n:
                continue
            return self.b.op("Conv", [*conv.inputs, self.b.const_like(bias.reshape(n), conv_out, "conv1x1_b")],
                             "conv1x1", kernel_shape=conv.attributes["kernel_shape"].value)
        return None

    def _layer_norm(self, node: ir.Node) -> _Visit | str:
        x, out = node.inputs[0], node.outputs[0]
        how = self._get(x)
        shape = static_shape(x)
        if how is None or shape is None or len(node.outputs) != 1 or node.inputs.index(x) != 0:
            return "LayerNormalization: not a single-output norm of the channels-last value"
        if node.attributes.get_int("axis", -1) % len(shape) != len(shape) - 1:
            return "LayerNormalization: not over the last axis"
        scale = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        bias = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if scale is None or (len(node.inputs) > 2 and node.inputs[2] is not None and bias is None):
            return "LayerNormalization: scale or bias not constant"
        n = shape[-1]
        scale_v = _vector_along(scale, n)
        bias_v = _vector_along(bias, n) if bias is not None else None
        if scale_v is None or (bias is not None and bias_v is None):
            return "LayerNormalization: scale or bias not per-channel"
        eps = node.attributes.get_float("epsilon", 1e-5)
        axis = how.channel_axis
        b = self.b
        mean = reduce(b, "ReduceMean", how.u, [axis], 1, self.opset, "ln_mean")
        centred = b.op("Sub", [how.u, mean], "ln_centred")
        var = reduce(b, "ReduceMean", b.op("Mul", [centred, centred], "ln_square"), [axis], 1, self.opset, "ln_var")
        std = b.op("Sqrt", [b.op("Add", [var, b.const_like(np.array(eps), x, "ln_eps")], "ln_var_eps")], "ln_std")
        y = b.op("Div", [centred, std], "ln_normed")
        if scale_v.size != 1 or float(scale_v) != 1.0:
            y = b.op("Mul", [y, self._channel_vector(np.broadcast_to(scale_v, (n,)), how, x, "ln_scale")], "ln_scaled")
        if bias_v is not None and np.any(bias_v != 0):
            y = b.op("Add", [y, self._channel_vector(np.broadcast_to(bias_v, (n,)), how, x, "ln_bias")], "ln_shifted")
        for v in b.nodes:
            v.outputs[0].type = x.type
        _typed(y, out, static_shape(how.u))
        b.insert_before(node)
        self._set(out, dataclasses.replace(how, u=y))
        return self._done(node, "layernorm")

    def _linear(self, node: ir.Node) -> _Visit | str:
        x, out = node.inputs[0], node.outputs[0]
        how = self._get(x)
        if how is None or self._get(node.inputs[1]) is not None or how.channel_axis != 1:
            return f"{node.op_type}: does not contract the channel axis of the lifted value"
        if x.dtype not in FLOAT_DTYPES:
            return f"{node.op_type}: element type {x.dtype} has no Conv"
        u_shape = static_shape(how.u)
        out_shape = static_shape(out)
        weight = const_array(node.inputs[1])
        if u_shape is None or out_shape is None or weight is None or weight.ndim != 2 or len(u_shape) < 3:
            return f"{node.op_type}: weight not a constant matrix, or shapes not static"
        bias = None
        if node.op_type == "Gemm":
            attrs = node.attributes
            if how.flat is None or attrs.get_int("transA", 0) or attrs.get_float("alpha", 1.0) != 1.0:
                return "Gemm: not on flattened rows, or transA/alpha set"
            if attrs.get_int("transB", 0):
                weight = weight.T
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                c = const_array(node.inputs[2])
                bias = _vector_along(c, weight.shape[1]) if c is not None else None
                if bias is None or attrs.get_float("beta", 1.0) != 1.0:
                    return "Gemm: bias not a per-channel constant, or beta set"
                bias = np.broadcast_to(bias, (weight.shape[1],))
        if weight.shape[0] != u_shape[1]:
            return f"{node.op_type}: weight rows do not match the channels"
        n = weight.shape[1]
        conv = conv1x1(self.b, how.u, weight, bias, len(u_shape), "conv1x1")
        self.made_convs.add(id(conv.producer()))
        _typed(conv, out, (u_shape[0], n, *u_shape[2:]))
        self.b.insert_before(node)
        flat = (out_shape[0], n) if how.flat is not None else None
        self._set(out, _Pending(conv, how.perm, flat))
        return self._done(node, "linear")

    def _reshape(self, node: ir.Node) -> _Visit | str:
        x, out = node.inputs[0], node.outputs[0]
        how = self._get(x)
        shape, out_shape, u_shape = static_shape(x), static_shape(out), static_shape(how.u)
        if shape is None or out_shape is None or u_shape is None:
            return "Reshape: shape not static"
        if how.flat is None and len(shape) >= 3 and out_shape == (int(np.prod(shape[:-1])), shape[-1]):
            self._set(out, dataclasses.replace(how, flat=out_shape))
        elif how.flat is not None and out_shape == _transposed_shape(u_shape, how.perm):
            self._set(out, dataclasses.replace(how, flat=None))
        else:
            return "Reshape: neither flattens the leading axes nor undoes that"
        self.converted.add(id(node))
        return _Visit("reshape", node)

    def _reduce(self, node: ir.Node) -> _Visit | str:
        x, out = node.inputs[0], node.outputs[0]
        how = self._get(x)
        rank = len(how.perm)
        axes = reduce_axes(node, rank)
        if how.flat is not None or axes is None or node.inputs.index(x) != 0 or static_shape(out) is None:
            return f"{node.op_type}: of a flattened value, or axes/shape unknown"
        axes = axes or list(range(rank))
        keepdims = node.attributes.get_int("keepdims", 1)
        q = tuple(kept_perm(list(how.perm), axes))
        if not keepdims and not is_identity(q) and not (len(q) >= 3 and is_channels_last_perm(list(q))):
            return f"{node.op_type}: leaves a permutation that is not channels-last"
        u_axes = reduction_axes_after(list(how.perm), axes)
        new = reduce(self.b, node.op_type, how.u, u_axes, keepdims, self.opset, node.op_type.lower())
        u_shape = static_shape(how.u)
        if u_shape is not None:
            kept_shape = [1 if a in u_axes else d for a, d in enumerate(u_shape)]
            _typed(new, out, tuple(kept_shape) if keepdims else tuple(d for a, d in enumerate(u_shape)
                                                                      if a not in u_axes))
        self.b.insert_before(node)
        if keepdims:
            self._set(out, dataclasses.replace(how, u=new))
        elif is_identity(q):
            replace_value(self.graph, out, new)
        else:
            self._set(out, _Pending(new, q))
        return self._done(node, "reduce")

    # ------------------------------------------------------------------ back to channels-last where needed

    def _restore(self, value: ir.Value) -> None:
        """Put the Transpose (and Reshape) back in front of every consumer that was not rewritten."""
        how = self._get(value)
        users = [(n, i) for n, i in value.uses() if id(n) not in self.converted]
        cur = self.b.op("Transpose", [how.u], "restore", perm=list(how.perm))
        u_shape = static_shape(how.u)
        _typed(cur, value, _transposed_shape(u_shape, how.perm) if u_shape else None)
        if how.flat is not None:
            cur = _typed(self.b.op("Reshape", [cur, self.b.const(np.array(how.flat, dtype=np.int64), "restore_shape")],
                                   "restore_flat"), value, how.flat)
        producer = how.u.producer()
        if producer is not None:
            self.b.insert_after(producer)
        else:  # a graph input or initializer: first thing in the main graph (users may sit in subgraphs)
            self.b.insert_before(next(iter(self.graph)))
        for user, index in users:
            user.replace_input_with(index, cur)
        if value.is_graph_output():
            replace_value(self.graph, value, cur)
