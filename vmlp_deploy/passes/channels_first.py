"""Rewrite rules: run channels-last token maps channels-first, for runtimes built around Conv (OpenVINO, NPUs).

Transformer-style blocks keep their token maps channels-last, ``(B, H, W, C)``: LayerNorm over the last
axis, Linear as MatMul or as Gemm on flattened rows. OpenVINO's CPU plugin runs Conv, depthwise Conv and
pooling in channels-first layouts (``nChw16c``, or ``nhwc`` seen as NCHW), so a block that starts
channels-first and continues channels-last pays layout Reorders and generic Transposes around every shift
Conv, and its residual stream lands in a layout (``acdb`` of the NHWC shape) that needs a Reorder before
every LayerNorm and after every Gemm. Edge NPUs want the same thing: Conv, no 4-D MatMul.

**propagate** (:func:`to_channels_first`): every Transpose that makes a channels-first value channels-last
(the channel axis moved to the end, the other axes in order) is carried *down* the graph, and each op it
reaches is rewritten to the equivalent op on the untransposed value:

* elementwise ops: unary; binary when each other operand is a constant (transposed), a single element,
  a static-shape value whose re-layout moves only size-1 axes (reshaped), or carries the same Transpose;
* ``LayerNormalization`` over the last axis -> the same normalisation over the channel axis
  (ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Div, Mul, Add: OpenVINO fuses it into one MVN);
* ``MatMul(x, W)`` and ``Gemm`` on the flattened rows of ``x``, constant ``W``, contracting the channel
  axis -> ``Conv`` 1x1 (a constant bias is folded into it);
* ``Reshape`` flattening the leading axes ``(B, H, W, C) -> (B*H*W, C)`` and back;
* ``Reduce*`` (axes remapped; a reduction may end the Transpose), ``Transpose`` (composed; may cancel).

A value an op cannot take that way gets the Transpose back, once, just before that op. No Transpose is
created where none was, so on a graph without such Transposes the pass changes nothing.

**group views** (:func:`lower_group_views`, run for every target): ``Reshape(x, (B, K, C, H, W))`` of a channels-first ``x``,
used only by per-branch weights (broadcast over H, W) and reductions, is written on ``x`` itself: weights
reshaped to ``(B, K*C, 1, 1)``, a sum over K as one channel Split and K-1 Adds, a sum over positions as a 4-D
ReduceSum before the (now tiny) reshape. That is S2-MLPv2's split attention without 5-D tensors.

All rules are exact up to float summation order (LayerNorm, the 1x1 Conv and the reductions add in
another order); the pipeline verifies the whole model like every other pass. Static shapes are needed on
every value a rule touches; anything else is left alone.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from ._graph import FLOAT_DTYPES, default_opset, static_shape, used_names
from .layout import _BROADCAST_BINARY, _REDUCE, _const, _only_unit_axes_move, _reduce_axes
from .shift_to_conv import _Builder
from .transpose_cleanup import _UNARY, _perm, _replace_value


@dataclasses.dataclass
class ChannelsFirstStats:
    """What the channels-first lowering did."""

    transposes_propagated: int = 0
    ops_rewritten: int = 0
    layernorms: int = 0
    linears_to_conv: int = 0
    transposes_restored: int = 0
    group_views: int = 0

    @property
    def total(self) -> int:
        return self.ops_rewritten + self.group_views


@dataclasses.dataclass(frozen=True)
class _Pending:
    """``value == Reshape(Transpose(u, perm), flat)`` (no Reshape when ``flat`` is None)."""

    u: ir.Value
    perm: tuple[int, ...]
    flat: tuple[int, ...] | None = None

    @property
    def channel_axis(self) -> int:
        return self.perm[-1]


def _is_channels_last_perm(p: list[int]) -> bool:
    """One axis moved to the end, the others in order: ``(0, 2, 3, 1)``, ``(0, 1, 3, 4, 2)``, ..."""
    c = p[-1]
    return len(p) >= 3 and c != len(p) - 1 and p[:-1] == [a for a in range(len(p)) if a != c]


def _transposed_shape(shape: tuple[int, ...], p: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[a] for a in p)


def _vector_along(array: np.ndarray, n: int) -> np.ndarray | None:
    """A constant that broadcasts along the last axis only, as a vector of ``n`` (or a scalar), else None."""
    if array.size == 1:
        return array.reshape(())
    if any(d != 1 for d in array.shape[:-1]) or array.shape[-1] != n:
        return None
    return array.reshape(n)


def _reduce(b: _Builder, op: str, x: ir.Value, axes: list[int], keepdims: int, opset: int, hint: str) -> ir.Value:
    """``Reduce*`` with axes as an input (opset >= 18, ReduceSum >= 13) or as an attribute before that."""
    if opset >= 18 or (op == "ReduceSum" and opset >= 13):
        return b.op(op, [x, b.const(np.array(axes, dtype=np.int64), f"{hint}_axes")], hint, keepdims=keepdims)
    return b.op(op, [x], hint, axes=axes, keepdims=keepdims)


class _ChannelsFirst:
    def __init__(self, model: ir.Model, stats: ChannelsFirstStats):
        self.model = model
        self.graph = model.graph
        self.stats = stats
        self.opset = default_opset(model)
        self.b = _Builder(self.graph, "channels_first", used_names(self.graph))
        self.pending: dict[int, tuple[ir.Value, _Pending]] = {}  # id(original value) -> (value, how)
        self.converted: set[int] = set()  # ids of original nodes whose outputs are all pending or replaced
        self.made_convs: set[int] = set()

    # ------------------------------------------------------------------ helpers

    def _get(self, value: ir.Value | None) -> _Pending | None:
        entry = self.pending.get(id(value)) if value is not None else None
        return entry[1] if entry else None

    def _set(self, value: ir.Value, how: _Pending) -> None:
        self.pending[id(value)] = (value, how)

    def _emit(self, anchor: ir.Node) -> None:
        self.b.insert_before(anchor)

    def _typed(self, value: ir.Value, like: ir.Value, shape: tuple[int, ...] | None) -> ir.Value:
        value.type = like.type
        if shape is not None:
            value.shape = ir.Shape(shape)
        return value

    def _reduce(self, op: str, x: ir.Value, axes: list[int], keepdims: int, hint: str) -> ir.Value:
        return _reduce(self.b, op, x, axes, keepdims, self.opset, hint)

    def _const_like(self, array: np.ndarray, like: ir.Value, hint: str) -> ir.Value:
        dtype = like.dtype.numpy() if like.dtype is not None else array.dtype
        return self.b.const(np.ascontiguousarray(array.astype(dtype)), hint)

    def _channel_vector(self, vector: np.ndarray, how: _Pending, like: ir.Value, hint: str) -> ir.Value:
        """A per-channel vector laid out to broadcast along ``how.u``'s channel axis."""
        rank = len(how.perm)
        shape = [1] * rank
        shape[how.channel_axis] = vector.size
        return self._const_like(vector.reshape(shape), like, hint)

    # ------------------------------------------------------------------ the sweep

    def run(self) -> None:
        for node in list(self.graph):
            if node.graph is None or node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type == "Transpose":
                self._transpose(node)
            elif not any(self._get(v) for v in node.inputs):
                continue
            elif node.op_type in _UNARY and len(node.inputs) == 1:
                self._unary(node)
            elif node.op_type in _BROADCAST_BINARY and len(node.inputs) == 2:
                self._binary(node)
            elif node.op_type == "LayerNormalization":
                self._layer_norm(node)
            elif node.op_type in ("MatMul", "Gemm"):
                self._linear(node)
            elif node.op_type == "Reshape":
                self._reshape(node)
            elif node.op_type in _REDUCE:
                self._reduce_node(node)
        self._restore()
        common_passes.RemoveUnusedNodesPass()(self.model)

    def _done(self, node: ir.Node) -> None:
        self.converted.add(id(node))
        self.stats.ops_rewritten += 1

    def _transpose(self, node: ir.Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        how = self._get(x)
        shape = static_shape(x)
        if shape is None or static_shape(out) is None:
            return
        q = _perm(node, len(shape))
        if how is None:
            if q is not None and _is_channels_last_perm(q) and not out.is_graph_output():
                self._set(out, _Pending(x, tuple(q)))
                self.converted.add(id(node))
                self.stats.transposes_propagated += 1
            return
        if how.flat is not None or q is None:
            return
        r = tuple(how.perm[k] for k in q)
        if r == tuple(range(len(r))):
            _replace_value(self.graph, out, how.u)
            self.converted.add(id(node))
        else:
            self._set(out, _Pending(how.u, r))
            self._done(node)

    def _unary(self, node: ir.Node) -> None:
        how = self._get(node.inputs[0])
        new = self.b.op(node.op_type, [how.u], node.op_type.lower(), **{k: a.value for k, a in node.attributes.items()})
        self._typed(new, node.outputs[0], static_shape(how.u))
        self._emit(node)
        self._set(node.outputs[0], dataclasses.replace(how, u=new))
        self._done(node)

    def _side(self, value: ir.Value | None, how: _Pending, out_rank: int) -> ir.Value | None:
        """The other operand of a binary op, re-laid out like ``how.u``; None when it cannot be."""
        if value is None:
            return None
        other = self._get(value)
        if other is not None:
            return other.u if self._compatible(other, how) else None
        array = _const(value)
        if array is not None:
            if array.size == 1:
                return value
            if how.flat is not None:
                vector = _vector_along(array, how.flat[-1])
                return None if vector is None else self._channel_vector(vector, how, value, "channel_const")
            if array.ndim > out_rank:
                return None
            full = array.reshape((1,) * (out_rank - array.ndim) + array.shape)
            return self._const_like(full.transpose(np.argsort(how.perm)), value, "relaid_const")
        shape = static_shape(value)
        if shape is None or how.flat is not None or len(shape) > out_rank:
            return None
        if math.prod(shape) == 1:
            return value
        full = (1,) * (out_rank - len(shape)) + shape
        inverse = [int(a) for a in np.argsort(how.perm)]
        if not _only_unit_axes_move(full, inverse):
            return None
        target = np.array([full[a] for a in inverse], dtype=np.int64)
        return self._typed(self.b.op("Reshape", [value, self.b.const(target, "relayout_shape")], "relayout"), value,
                           tuple(target.tolist()))

    @staticmethod
    def _compatible(a: _Pending, b: _Pending) -> bool:
        """Both operands carry the same pending layout change (flattened ones: from the same 4-D shape)."""
        if a.perm != b.perm or a.flat != b.flat:
            return False
        return a.flat is None or static_shape(a.u) == static_shape(b.u) is not None

    def _binary(self, node: ir.Node) -> None:
        out = node.outputs[0]
        out_shape = static_shape(out)
        hows = [self._get(v) for v in node.inputs]
        how = next(h for h in hows if h is not None)
        rank = len(how.flat) if how.flat is not None else len(how.perm)
        if out_shape is None or len(out_shape) != rank:
            return
        inputs = []
        for v, h in zip(node.inputs, hows):
            side = self._side(v, how, rank) if h is None else h.u if self._compatible(h, how) else None
            if side is None:
                self.b.nodes = []
                return
            inputs.append(side)
        new = self._fold_bias(node, inputs) or self.b.op(node.op_type, inputs, node.op_type.lower(),
                                                         **{k: a.value for k, a in node.attributes.items()})
        if how.flat is None:
            u_shape = _transposed_shape(out_shape, tuple(int(a) for a in np.argsort(how.perm)))
        else:  # constants broadcast along the channel axis only: the shape of the pending input
            u_shape = static_shape(how.u)
        self._typed(new, out, u_shape)
        self._emit(node)
        self._set(out, dataclasses.replace(how, u=new))
        self._done(node)

    def _fold_bias(self, node: ir.Node, inputs: list[ir.Value]) -> ir.Value | None:
        """``Add(Conv(x, W), b)``, a 1x1 Conv this pass made and a per-channel constant ``b`` -> ``Conv(x, W, b)``."""
        if node.op_type != "Add":
            return None
        for i, conv_out in enumerate(inputs):
            conv = conv_out.producer()
            if conv is None or id(conv) not in self.made_convs or len(conv.inputs) != 2 or conv_out.uses():
                continue
            original = node.inputs[i]
            if len(original.uses()) != 1 or original.is_graph_output():
                continue
            bias = _const(inputs[1 - i])
            n = static_shape(conv_out)[1]
            if bias is None or bias.size != n or bias.ndim < 2 or bias.shape[1] != n:
                continue
            return self.b.op("Conv", [*conv.inputs, self._const_like(bias.reshape(n), conv_out, "conv1x1_b")],
                             "conv1x1", kernel_shape=conv.attributes["kernel_shape"].value)
        return None

    def _layer_norm(self, node: ir.Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        how = self._get(x)
        shape = static_shape(x)
        if how is None or shape is None or len(node.outputs) != 1 or node.inputs.index(x) != 0:
            return
        if node.attributes.get_int("axis", -1) % len(shape) != len(shape) - 1:
            return
        scale = _const(node.inputs[1]) if len(node.inputs) > 1 else None
        bias = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if scale is None or (len(node.inputs) > 2 and node.inputs[2] is not None and bias is None):
            return
        n = shape[-1]
        scale_v = _vector_along(scale, n)
        bias_v = _vector_along(bias, n) if bias is not None else None
        if scale_v is None or (bias is not None and bias_v is None):
            return
        eps = node.attributes.get_float("epsilon", 1e-5)
        axis = how.channel_axis
        b = self.b
        mean = self._reduce("ReduceMean", how.u, [axis], 1, "ln_mean")
        centred = b.op("Sub", [how.u, mean], "ln_centred")
        var = self._reduce("ReduceMean", b.op("Mul", [centred, centred], "ln_square"), [axis], 1, "ln_var")
        std = b.op("Sqrt", [b.op("Add", [var, self._const_like(np.array(eps), x, "ln_eps")], "ln_var_eps")], "ln_std")
        y = b.op("Div", [centred, std], "ln_normed")
        if scale_v.size != 1 or float(scale_v) != 1.0:
            y = b.op("Mul", [y, self._channel_vector(np.broadcast_to(scale_v, (n,)), how, x, "ln_scale")], "ln_scaled")
        if bias_v is not None and np.any(bias_v != 0):
            y = b.op("Add", [y, self._channel_vector(np.broadcast_to(bias_v, (n,)), how, x, "ln_bias")], "ln_shifted")
        for v in b.nodes:
            v.outputs[0].type = x.type
        self._typed(y, out, static_shape(how.u))
        self._emit(node)
        self._set(out, dataclasses.replace(how, u=y))
        self.stats.layernorms += 1
        self._done(node)

    def _linear(self, node: ir.Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        how = self._get(x)
        if how is None or self._get(node.inputs[1]) is not None or how.channel_axis != 1:
            return
        if x.dtype not in FLOAT_DTYPES:  # Conv has no integer version
            return
        u_shape = static_shape(how.u)
        out_shape = static_shape(out)
        weight = _const(node.inputs[1])
        if u_shape is None or out_shape is None or weight is None or weight.ndim != 2 or len(u_shape) < 3:
            return
        bias = None
        if node.op_type == "Gemm":
            attrs = node.attributes
            if how.flat is None or attrs.get_int("transA", 0) or attrs.get_float("alpha", 1.0) != 1.0:
                return
            if attrs.get_int("transB", 0):
                weight = weight.T
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                c = _const(node.inputs[2])
                bias = _vector_along(c, weight.shape[1]) if c is not None else None
                if bias is None or attrs.get_float("beta", 1.0) != 1.0:
                    return
                bias = np.broadcast_to(bias, (weight.shape[1],))
        if weight.shape[0] != u_shape[1]:
            return
        n = weight.shape[1]
        kernel = np.ascontiguousarray(weight.T).reshape(n, weight.shape[0], *([1] * (len(u_shape) - 2)))
        inputs = [how.u, self._const_like(kernel, x, "conv1x1_w")]
        if bias is not None:
            inputs.append(self._const_like(bias, x, "conv1x1_b"))
        conv = self.b.op("Conv", inputs, "conv1x1", kernel_shape=[1] * (len(u_shape) - 2))
        self.made_convs.add(id(conv.producer()))
        self._typed(conv, out, (u_shape[0], n, *u_shape[2:]))
        self._emit(node)
        flat = (out_shape[0], n) if how.flat is not None else None
        self._set(out, _Pending(conv, how.perm, flat))
        self.stats.linears_to_conv += 1
        self._done(node)

    def _reshape(self, node: ir.Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        how = self._get(x)
        shape, out_shape, u_shape = static_shape(x), static_shape(out), static_shape(how.u)
        if shape is None or out_shape is None or u_shape is None:
            return
        if how.flat is None and len(shape) >= 3 and out_shape == (math.prod(shape[:-1]), shape[-1]):
            self._set(out, dataclasses.replace(how, flat=out_shape))
        elif how.flat is not None and out_shape == _transposed_shape(u_shape, how.perm):
            self._set(out, dataclasses.replace(how, flat=None))
        else:
            return
        self.converted.add(id(node))

    def _reduce_node(self, node: ir.Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        how = self._get(x)
        rank = len(how.perm)
        axes = _reduce_axes(node, rank)
        if how.flat is not None or axes is None or node.inputs.index(x) != 0 or static_shape(out) is None:
            return
        axes = axes or list(range(rank))
        keepdims = node.attributes.get_int("keepdims", 1)
        u_axes = sorted(how.perm[a] for a in axes)
        new = self._reduce(node.op_type, how.u, u_axes, keepdims, node.op_type.lower())
        u_shape = static_shape(how.u)
        if u_shape is not None:
            kept_shape = [1 if a in u_axes else d for a, d in enumerate(u_shape)]
            self._typed(new, out, tuple(kept_shape) if keepdims else tuple(d for a, d in enumerate(u_shape)
                                                                           if a not in u_axes))
        if keepdims:
            self._emit(node)
            self._set(out, dataclasses.replace(how, u=new))
            self._done(node)
            return
        kept = [how.perm[i] for i in range(rank) if i not in axes]
        order = sorted(kept)
        q = tuple(order.index(a) for a in kept)
        self._emit(node)
        if q == tuple(range(len(q))):
            _replace_value(self.graph, out, new)
            self.converted.add(id(node))
            self.stats.ops_rewritten += 1
        elif len(q) >= 3 and _is_channels_last_perm(list(q)):
            self._set(out, _Pending(new, q))
            self._done(node)

    # ------------------------------------------------------------------ back to channels-last where needed

    def _restore(self) -> None:
        """Put the Transpose (and Reshape) back in front of every consumer that was not rewritten."""
        for value, how in list(self.pending.values()):
            users = [(n, i) for n, i in value.uses() if id(n) not in self.converted]
            if not users and not value.is_graph_output():
                continue
            cur = self.b.op("Transpose", [how.u], "restore", perm=list(how.perm))
            u_shape = static_shape(how.u)
            self._typed(cur, value, _transposed_shape(u_shape, how.perm) if u_shape else None)
            if how.flat is not None:
                cur = self._typed(self.b.op("Reshape", [cur, self.b.const(np.array(how.flat, dtype=np.int64),
                                                                             "restore_shape")], "restore_flat"),
                                  value, how.flat)
            producer = how.u.producer()
            if producer is not None:
                self.b.insert_after(producer)
            else:  # a graph input or initializer: first thing in the main graph (users may sit in subgraphs)
                self.b.insert_before(next(iter(self.graph)))
            for user, index in users:
                user.replace_input_with(index, cur)
            if value.is_graph_output():
                _replace_value(self.graph, value, cur)
            self.stats.transposes_restored += 1


def to_channels_first(model: ir.Model, stats: ChannelsFirstStats | None = None) -> ChannelsFirstStats:
    """Carry channels-first -> channels-last Transposes down through ``model`` (in place); see the module doc."""
    stats = stats or ChannelsFirstStats()
    _ChannelsFirst(model, stats).run()
    return stats


def _group_view(node: ir.Node) -> int | None:
    """K when ``node`` is ``Reshape(x, (B, K, C, *S))`` of a channels-first ``x`` of shape ``(B, K*C, *S)``."""
    if node.op_type != "Reshape" or node.graph is None:
        return None
    xs, vs = static_shape(node.inputs[0]), static_shape(node.outputs[0])
    if xs is None or vs is None or len(xs) < 3 or len(vs) != len(xs) + 1:
        return None
    if vs[0] != xs[0] or vs[3:] != xs[2:] or vs[1] * vs[2] != xs[1] or vs[1] == 1:
        return None
    if math.prod(xs[2:]) == 1:  # no positions: the view is already as small as the reductions make it
        return None
    return vs[1]


def _view_use(node: ir.Node, view: ir.Value, vs: tuple[int, ...]) -> str | None:
    """How a consumer of a group view can run on the 4-D tensor: 'weight', 'branch_sum', 'reduce' or None."""
    if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
        return None
    if node.op_type in ("Mul", "Add", "Sub", "Div") and len(node.inputs) == 2 and sum(v is view for v in node.inputs) == 1:
        other = node.inputs[1] if node.inputs[0] is view else node.inputs[0]
        shape = static_shape(other)
        if shape is None or static_shape(node.outputs[0]) != vs or len(shape) != len(vs):
            return None
        ok = shape[0] in (1, vs[0]) and shape[1:3] == vs[1:3] and all(d == 1 for d in shape[3:])
        return "weight" if ok else None
    if node.op_type == "ReduceSum" and node.inputs[0] is view:
        axes = _reduce_axes(node, len(vs))
        if not axes:
            return None
        if any(a >= 3 for a in axes):
            return "reduce"
        if axes == [1] and not node.attributes.get_int("keepdims", 1):
            return "branch_sum"
    return None


def lower_group_views(model: ir.Model) -> int:
    """Write grouped-channel views ``(B, K, C, H, W)`` of channels-first tensors on the 4-D tensor (in place).

    Returns how many views were lowered. Layout-independent: both targets run it.
    """
    lowered = 0
    graph = model.graph
    opset = default_opset(model)
    b = _Builder(graph, "group_view", used_names(graph))
    for reshape in list(graph):
        k = _group_view(reshape)
        if k is None:
            continue
        vs = static_shape(reshape.outputs[0])
        views, plan, ok = [reshape.outputs[0]], [], True
        while views and ok:
            view = views.pop()
            if view.is_graph_output():
                ok = False
            for user, _ in view.uses():
                kind = _view_use(user, view, vs)
                if kind is None:
                    ok = False
                    break
                plan.append((user, view, kind))
                if kind == "weight":
                    views.append(user.outputs[0])
        if not ok or not plan:
            continue
        order = {id(n): i for i, n in enumerate(graph)}
        flat: dict[int, ir.Value] = {id(reshape.outputs[0]): reshape.inputs[0]}
        c = vs[2]
        for user, view, kind in sorted(plan, key=lambda t: order[id(t[0])]):
            x4 = flat[id(view)]
            out = user.outputs[0]
            if kind == "weight":
                i = 0 if user.inputs[0] is view else 1
                other = user.inputs[1 - i]
                oshape = static_shape(other)
                target = np.array([oshape[0], k * c, *oshape[3:]], dtype=np.int64)
                other4 = b.op("Reshape", [other, b.const(target, "weight_shape")], "weight")
                other4.type = other.type
                new = b.op(user.op_type, [x4, other4] if i == 0 else [other4, x4], user.op_type.lower())
                flat[id(out)] = new
            elif kind == "branch_sum":
                if opset >= 18:
                    split = ir.node("Split", [x4], {"axis": 1, "num_outputs": k}, num_outputs=k, name=b.name("branches"))
                elif opset >= 13:
                    split = ir.node("Split", [x4, b.const(np.full(k, c, np.int64), "split")], {"axis": 1},
                                    num_outputs=k, name=b.name("branches"))
                else:
                    split = ir.node("Split", [x4], {"axis": 1, "split": [c] * k}, num_outputs=k,
                                    name=b.name("branches"))
                for j, part in enumerate(split.outputs):
                    part.name, part.type = b.name(f"branch{j}"), x4.type
                b.nodes.append(split)
                new = split.outputs[0]
                for part in split.outputs[1:]:
                    new = b.op("Add", [new, part], "branch_sum")
            else:
                axes = _reduce_axes(user, len(vs))
                spatial = [a - 1 for a in axes if a >= 3]
                partial = _reduce(b, "ReduceSum", x4, spatial, 1, opset, "partial")
                small = [vs[0], k, c, *(1 if a + 1 in axes else d for a, d in enumerate(vs[3:], start=2))]
                view5 = b.op("Reshape", [partial, b.const(np.array(small, np.int64), "view_shape")], "view")
                new = _reduce(b, "ReduceSum", view5, axes, user.attributes.get_int("keepdims", 1), opset, "reduce")
            for n in b.nodes:
                n.outputs[0].type = out.type
            b.insert_before(user)
            if kind != "weight":
                new.shape = out.shape
                _replace_value(graph, out, new)
        lowered += 1
    common_passes.RemoveUnusedNodesPass()(model)
    return lowered
