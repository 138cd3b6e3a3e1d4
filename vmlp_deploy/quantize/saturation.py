"""Predict where ONNX Runtime's u8 x s8 integer kernels saturate on x86 CPUs without VNNI, before deploying there.

Why: without VNNI (or AMX) MLAS multiplies u8 activation codes by s8 weight codes with ``vpmaddubsw``, which adds
each pair of adjacent-K products ``a[k]*w[k] + a[k+1]*w[k+1]`` into a *saturating* int16 lane, then widens the
pairs to int32 with ``vpmaddwd`` (exact). With full 8-bit weights a pair can reach 2 * 255 * 127 = 64770, far
beyond 32767, so results are clipped silently. VNNI/AMX accumulate in 32 bits and never clip. A QDQ graph run
with optimisations off (float Q/DQ simulation) cannot show the loss, and neither can a run on a VNNI host, so
this module simulates the pair path in numpy on the model's own activation codes.

K order, as ONNX Runtime's kernels pair it (onnxruntime ``core/providers/cpu/quantization/qlinearconv.cc`` and
``core/mlas/lib``; checked against the source, see ``tests/test_saturation.py`` for the run that confirms it):

* MatMul / Gemm (QLinearMatMul, MatMulIntegerToFloat, QGemm -> ``MlasGemm``): the reduction axis in order; the
  packed A rows and B columns hold K in groups of 4 (``MlasGemmU8S8CopyPackAAvx2`` pads K up to a multiple of
  4 with zeros), and ``vpmaddubsw`` pairs (0,1), (2,3). ``transB`` only changes how B is read.
* Conv, ``group == 1`` (QLinearConv): ``ReorderFilter`` lays the filter out as (kernel position, input channel,
  output channel) and the input is NHWC im2col (or an indirection buffer of NHWC pixels), so K is ordered
  (kh, kw, cin) with cin fastest. The ``MlasConvSym`` path (cin % 4 == 0) packs 4 channels per kernel position
  (``MlasConvSymPackW``), so pairs never straddle two kernel positions; the im2col + QGEMM path (any other cin)
  pairs the flat (kh, kw, cin) vector, straddling positions when cin is odd. Both are the flat order here.
  Padding reads the activation zero point.
* Grouped Conv with more than one channel per group: one QGEMM per group, K = (kh, kw, cin of the group).
* Depthwise Conv (one input and one output channel per group): ``MlasConvSymDepthwiseKernelAvx2`` widens u8 and
  s8 to 32-bit lanes and multiplies with ``vpmaddwd``; ``MlasConvDepthwiseKernelAvx2`` multiplies 16-bit
  values into 32 bits. Neither adds pairs in 16 bits, so depthwise layers cannot saturate.

What the prediction assumes: each layer reads the activation codes of the unoptimised graph (exact upstream
layers), so it measures what each layer adds on its own; clipped upstream layers change downstream codes too.
ONNX Runtime's ``session.x64quantprecision=1`` (U8U8 kernels), ``reduce_range=True`` (7-bit weights: 2 * 255 * 64
= 32640 fits) and U8U8 quantization all remove the saturation; a layer ONNX Runtime leaves in float is not
affected at all, which is why the fused graph is read back to see which layers became integer kernels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..backends import RunOptions
from ..backends.onnxruntime import OnnxRuntimeBackend
from ..records import db_to_json
from .data import fill_batch

INT16_MIN, INT16_MAX = -32768, 32767
#: Bytes the pair products of one chunk of rows may take (int32 products plus temporaries).
CHUNK_BYTES = 1 << 26
#: Fused operators ONNX Runtime runs with the u8 x s8 integer kernels.
INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "QGemm", "ConvInteger")
#: Samples :func:`predict` runs by default: a handful shows which layers clip, and every layer's codes for one
#: batch are held at once.
DEFAULT_SAMPLES = 8


def saturating_matmul(a_u8: np.ndarray, w_s8: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``a_u8 @ w_s8`` exactly and through the ``vpmaddubsw`` pair path: (exact, saturated, clipped pairs, pairs).

    Pairs are adjacent K (an odd K is padded with a zero). Only (pair, column) cells whose weights could push a
    pair past int16 with the activations seen are expanded, in row chunks of at most :data:`CHUNK_BYTES`, so a
    layer with small weights costs one matrix product.
    """
    if a_u8.dtype != np.uint8 or w_s8.dtype != np.int8:
        raise TypeError(f"need uint8 activations and int8 weights, got {a_u8.dtype} and {w_s8.dtype}")
    if a_u8.ndim != 2 or w_s8.ndim != 2 or a_u8.shape[1] != w_s8.shape[0]:
        raise ValueError(f"shapes {a_u8.shape} x {w_s8.shape} do not multiply")
    m, k = a_u8.shape
    n = w_s8.shape[1]
    exact = np.rint(a_u8.astype(np.float64) @ w_s8.astype(np.float64)).astype(np.int64)
    if k % 2:
        a_u8 = np.concatenate([a_u8, np.zeros((m, 1), np.uint8)], axis=1)
        w_s8 = np.concatenate([w_s8, np.zeros((1, n), np.int8)], axis=0)
    a0, a1 = a_u8[:, 0::2], a_u8[:, 1::2]
    w0, w1 = w_s8[0::2].astype(np.int32), w_s8[1::2].astype(np.int32)
    pairs = m * n * a0.shape[1]
    amax0 = a0.max(axis=0, initial=0).astype(np.int32)[:, None]
    amax1 = a1.max(axis=0, initial=0).astype(np.int32)[:, None]
    high = amax0 * np.maximum(w0, 0) + amax1 * np.maximum(w1, 0)
    low = amax0 * np.minimum(w0, 0) + amax1 * np.minimum(w1, 0)
    cols, rows = np.nonzero(((high > INT16_MAX) | (low < INT16_MIN)).T)  # sorted by output column
    saturated = exact.copy()
    clipped = 0
    if len(cols):
        starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])
        out_cols = cols[starts]
        wr0, wr1 = w0[rows, cols], w1[rows, cols]
        step = max(1, CHUNK_BYTES // (16 * len(cols)))
        for i in range(0, m, step):
            p = a0[i : i + step, rows].astype(np.int32) * wr0 + a1[i : i + step, rows].astype(np.int32) * wr1
            excess = p - np.clip(p, INT16_MIN, INT16_MAX)
            clipped += int(np.count_nonzero(excess))
            saturated[i : i + step, out_cols] -= np.add.reduceat(excess, starts, axis=1)
    return exact.astype(np.int32), saturated.astype(np.int32), clipped, pairs


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@dataclass(frozen=True)
class IntegerLayer:
    """One MatMul/Gemm/Conv that reads a u8 activation and an s8 weight, with what its integer kernel computes.

    ``weights`` hold the codes as the kernel multiplies them: ``[K, N]`` for MatMul/Gemm, and for Conv one
    ``[kh*kw*cin_g, cout_g]`` matrix per group in (kh, kw, cin) order. Scales and zero points are per output
    channel; ``scale`` is activation scale x weight scale (x Gemm's alpha).
    """

    node: str
    op_type: str
    activation: str
    act_zero_point: int
    weights: tuple[np.ndarray, ...]
    weight_zero_point: np.ndarray
    scale: np.ndarray
    bias: np.ndarray | None
    kernel_shape: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"
    depthwise: bool = False
    fused_op: str | None = None

    @property
    def pairs_int16(self) -> bool:
        """Whether the deployed kernel adds u8 x s8 products in int16 pairs (what can clip without VNNI)."""
        return not self.depthwise and (self.fused_op is None or self.fused_op in INTEGER_OPS)

    @property
    def kernel(self) -> str:
        """What ONNX Runtime runs for this node, in words."""
        op = self.fused_op
        if self.depthwise:
            return f"{op or 'integer'} depthwise: 32-bit products, cannot saturate"
        if op is None:
            return "integer kernel (fused node not found by name): u8 x s8 pairs in int16"
        if op in INTEGER_OPS:
            return f"{op}: u8 x s8 pairs in int16"
        return f"{op} in float: ONNX Runtime did not fuse it into an integer kernel"

    @property
    def channels(self) -> int:
        return len(self.scale)

    @property
    def reduction(self) -> int:
        """K: how many products each output sums (per group for a grouped Conv)."""
        return self.weights[0].shape[0]

    def _pads(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        r = len(self.kernel_shape)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begin, end = [], []
            for size, k, s, d in zip(spatial, self.kernel_shape, self.strides, self.dilations, strict=True):
                total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
                small, large = total // 2, total - total // 2
                begin.append(small if self.auto_pad == "SAME_UPPER" else large)
                end.append(large if self.auto_pad == "SAME_UPPER" else small)
            return (*begin, *end)
        if self.auto_pad == "VALID":
            return (0,) * (2 * r)
        return self.pads

    def im2col(self, image: np.ndarray) -> np.ndarray:
        """One image's codes ``[C, *spatial]`` as ``[*out, *kernel, C]``, padded with the activation zero point."""
        r = len(self.kernel_shape)
        pads = self._pads(tuple(image.shape[1:]))
        padded = np.pad(image, [(0, 0)] + [(pads[i], pads[i + r]) for i in range(r)],
                        constant_values=self.act_zero_point)
        window = tuple((k - 1) * d + 1 for k, d in zip(self.kernel_shape, self.dilations, strict=True))
        view = np.lib.stride_tricks.sliding_window_view(padded, window, axis=tuple(range(1, r + 1)))
        view = view[(slice(None), *(slice(None, None, s) for s in self.strides),
                     *(slice(None, None, d) for d in self.dilations))]
        return np.moveaxis(view, 0, -1)

    def blocks(self, codes: np.ndarray) -> Iterator[tuple[np.ndarray, int, slice]]:
        """(u8 rows ``[M, K]`` in kernel order, group index, output-channel slice); Conv goes one image at a time."""
        if self.op_type != "Conv":
            yield codes.reshape(-1, self.reduction), 0, slice(0, self.channels)
            return
        groups = len(self.weights)
        cin = codes.shape[1] // groups
        cout = self.channels // groups
        for image in codes:
            cols = self.im2col(image)
            for g in range(groups):
                block = cols[..., g * cin : (g + 1) * cin]
                yield block.reshape(-1, self.reduction), g, slice(g * cout, (g + 1) * cout)

    def dequantize(self, acc: np.ndarray, rows: np.ndarray, group: int, channels: slice) -> np.ndarray:
        """The layer's float output (before requantisation) from raw-code accumulators: zero points and bias applied."""
        zw = self.weight_zero_point[channels].astype(np.int64)[None]
        colsum = self.weights[group].sum(axis=0, dtype=np.int64)[None]
        rowsum = rows.sum(axis=1, dtype=np.int64)[:, None]
        za = self.act_zero_point
        value = acc.astype(np.int64) - za * colsum - rowsum * zw + rows.shape[1] * za * zw
        out = value * self.scale[channels].astype(np.float64)[None]
        return out if self.bias is None else out + self.bias[channels][None]

    def simulate(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
        """(exact output, saturating output, clipped pairs, pairs) as ``[rows, channels]`` floats for ``codes``.

        Rows follow :meth:`output_rows`. A depthwise layer returns its exact output twice: it cannot clip.
        """
        exact_out, sat_out = [], []
        clipped = pairs = 0
        for rows, group, channels in self.blocks(codes):
            exact, sat, c, p = saturating_matmul(rows, self.weights[group])
            if self.depthwise:
                sat = exact
            else:
                clipped, pairs = clipped + c, pairs + p
            if channels.start == 0:
                exact_out.append([])
                sat_out.append([])
            exact_out[-1].append(self.dequantize(exact, rows, group, channels))
            sat_out[-1].append(self.dequantize(sat, rows, group, channels))
        return (np.concatenate([np.concatenate(e, axis=1) for e in exact_out]),
                np.concatenate([np.concatenate(s, axis=1) for s in sat_out]), clipped, pairs)

    def output_rows(self, output: np.ndarray) -> np.ndarray:
        """The node's output tensor laid out as :meth:`simulate` rows: ``[N*spatial, C]`` for Conv (NCHW -> NHWC)."""
        if self.op_type == "Conv":
            return np.moveaxis(output, 1, -1).reshape(-1, self.channels)
        return output.reshape(-1, self.channels)


def _per_channel(values: np.ndarray, n: int, what: str) -> np.ndarray:
    flat = np.asarray(values).reshape(-1)
    if flat.size == 1:
        return np.full(n, flat[0], dtype=flat.dtype)
    if flat.size != n:
        raise ValueError(f"{what} has {flat.size} values for {n} output channels")
    return flat


def _dq_source(node: onnx.NodeProto | None, inits: dict[str, np.ndarray], weight: bool
               ) -> tuple[str, np.ndarray | None, np.ndarray, np.ndarray, int] | None:
    """(quantized tensor, its initializer or None, scale, zero point, axis) of a DequantizeLinear, if it fits."""
    if node is None or node.op_type != "DequantizeLinear" or _attrs(node).get("block_size", 0):
        return None
    name = node.input[0]
    scale = inits.get(node.input[1]) if len(node.input) > 1 else None
    zero_name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    if scale is None or (zero_name and zero_name not in inits):
        return None
    data = inits.get(name)
    if weight:
        if data is None or data.dtype != np.int8:
            return None
        zero = inits[zero_name] if zero_name else np.zeros(1, np.int8)
    else:
        if data is not None or scale.size != 1:
            return None
        zero = inits[zero_name] if zero_name else np.zeros(1, np.uint8)
        if zero.dtype != np.uint8 or zero.size != 1:
            return None
    return name, data, scale.astype(np.float64), zero.astype(np.int64), int(_attrs(node).get("axis", 1))


def _bias(name: str, producer: dict[str, onnx.NodeProto], inits: dict[str, np.ndarray], n: int) -> np.ndarray | None:
    """A per-channel float bias from an initializer or a DequantizeLinear of one (ONNX Runtime's int32 bias)."""
    if name in inits:
        values = inits[name].astype(np.float64)
    else:
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits:
            return None
        zero = inits[dq.input[2]].astype(np.float64) if len(dq.input) > 2 and dq.input[2] in inits else 0.0
        values = (inits[dq.input[0]].astype(np.float64) - zero) * inits[dq.input[1]].astype(np.float64)
    flat = values.reshape(-1)
    if flat.size == 1:
        return np.full(n, flat[0])
    return flat if flat.size == n else None


def _layer(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto],
           inits: dict[str, np.ndarray]) -> IntegerLayer | None:
    """The integer view of ``node``, or None when it does not read DQ(u8 activation) x DQ(s8 initializer)."""
    if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
        return None
    act = _dq_source(producer.get(node.input[0]), inits, weight=False)
    wgt = _dq_source(producer.get(node.input[1]), inits, weight=True)
    if act is None or wgt is None:
        return None
    act_name, _, act_scale, act_zero, _ = act
    _, w, w_scale, w_zero, axis = wgt
    attrs = _attrs(node)
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    if node.op_type in ("MatMul", "Gemm"):
        if w.ndim != 2 or attrs.get("transA", 0):
            return None
        trans = bool(attrs.get("transB", 0))
        matrix = w.T if trans else w
        n = matrix.shape[1]
        if w_scale.size != 1 and axis % 2 != (0 if trans else 1):
            return None
        alpha = float(attrs.get("alpha", 1.0))
        scale = act_scale.reshape(-1)[0] * _per_channel(w_scale, n, "weight scale") * alpha
        bias = _bias(bias_name, producer, inits, n) if bias_name else None
        if bias is not None:
            bias = bias * float(attrs.get("beta", 1.0))
        return IntegerLayer(node.name, node.op_type, act_name, int(act_zero.reshape(-1)[0]),
                            (np.ascontiguousarray(matrix),), _per_channel(w_zero, n, "weight zero point"), scale, bias)
    if w.ndim < 3 or (w_scale.size != 1 and axis != 0):
        return None
    cout, cin_g, *kernel = w.shape
    r = len(kernel)
    groups = int(attrs.get("group", 1))
    per_group = cout // groups
    # [cout_g, cin_g, *k] -> [*k, cin_g, cout_g] -> [K, cout_g]: ONNX Runtime's ReorderFilter layout
    order = (*range(2, r + 2), 1, 0)
    mats = tuple(np.ascontiguousarray(w[g * per_group : (g + 1) * per_group].transpose(order).reshape(-1, per_group))
                 for g in range(groups))
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    return IntegerLayer(
        node.name, node.op_type, act_name, int(act_zero.reshape(-1)[0]), mats,
        _per_channel(w_zero, cout, "weight zero point"),
        act_scale.reshape(-1)[0] * _per_channel(w_scale, cout, "weight scale"),
        _bias(bias_name, producer, inits, cout) if bias_name else None,
        kernel_shape=tuple(kernel), strides=tuple(attrs.get("strides", [1] * r)),
        dilations=tuple(attrs.get("dilations", [1] * r)), pads=tuple(attrs.get("pads", [0] * 2 * r)),
        auto_pad=auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad),
        depthwise=groups > 1 and cin_g == 1 and per_group == 1)


def _fused_ops(qdq_model: Path, work: Path) -> dict[str, str]:
    """Node name -> operator after ONNX Runtime's QDQ fusions (level "extended" keeps the node names)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.log_severity_level = 3
    so.optimized_model_filepath = str(work / "saturation-fused.onnx")
    ort.InferenceSession(str(qdq_model), so, providers=["CPUExecutionProvider"])
    fused = onnx.load(so.optimized_model_filepath, load_external_data=False)
    return {n.name: n.op_type for n in fused.graph.node}


def find_layers(qdq_model: Path, work: Path) -> list[IntegerLayer]:
    """Every MatMul/Gemm/Conv of an ONNX Runtime QDQ model that reads DQ(u8) x DQ(s8 initializer), in graph order,
    each with the operator ONNX Runtime fuses it into."""
    model = onnx.load(str(qdq_model))
    inits = _initializers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    fused = _fused_ops(qdq_model, work)
    layers: list[IntegerLayer] = []
    for node in model.graph.node:
        layer = _layer(node, producer, inits)
        if layer is None:
            continue
        layers.append(replace(layer, fused_op=fused.get(node.name)))
    return layers


@dataclass(frozen=True)
class LayerSaturation:
    """How often one layer's u8 x s8 pairs clip in int16, and what that does to its output."""

    node: str
    op_type: str
    kernel: str
    reduction: int
    pairs: int
    saturated_pairs: int
    sqnr_db: float

    @property
    def rate(self) -> float:
        return self.saturated_pairs / self.pairs if self.pairs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "kernel": self.kernel, "reduction": self.reduction,
                "pairs": self.pairs, "saturated_pairs": self.saturated_pairs, "rate": self.rate,
                "sqnr_db": db_to_json(self.sqnr_db)}


@dataclass(frozen=True)
class SaturationSummary:
    """The whole model: pairs and clipped pairs over every integer layer, and the layer hurt most."""

    layers: int
    saturating_layers: int
    pairs: int
    saturated_pairs: int
    worst: LayerSaturation | None

    @property
    def rate(self) -> float:
        return self.saturated_pairs / self.pairs if self.pairs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "saturating_layers": self.saturating_layers, "pairs": self.pairs,
                "saturated_pairs": self.saturated_pairs, "rate": self.rate,
                "worst": self.worst.to_dict() if self.worst is not None else None}


def summarize(layers: list[LayerSaturation]) -> SaturationSummary:
    saturating = [layer for layer in layers if layer.saturated_pairs]
    return SaturationSummary(len(layers), len(saturating), sum(layer.pairs for layer in layers),
                             sum(layer.saturated_pairs for layer in layers),
                             min(saturating, key=lambda layer: layer.sqnr_db) if saturating else None)


def _batches(samples: np.ndarray, batch: int | None) -> Iterator[tuple[np.ndarray, int]]:
    """(input batch, real samples in it): a fixed batch size pads the last batch by repeating its last sample."""
    step = batch or 1
    for i in range(0, len(samples), step):
        x = samples[i : i + step]
        yield fill_batch(x, batch), len(x)


def predict(qdq_model: Path, samples: np.ndarray, input_name: str, batch: int | None, work: Path,
            max_samples: int = DEFAULT_SAMPLES) -> list[LayerSaturation]:
    """Per integer layer of ``qdq_model``: how many u8 x s8 pairs clip on a CPU without VNNI, on ``samples``.

    The activation codes come from ONNX Runtime running the QDQ graph unoptimised with every u8 activation a
    layer reads exposed as an output (at most ``max_samples`` samples, one batch at a time). ``sqnr_db`` compares
    the saturating layer output (bias included, before requantisation) with the exact one over all samples.
    Layers ONNX Runtime leaves in float and depthwise layers report no pairs.
    """
    layers = find_layers(qdq_model, work)
    integer = [layer for layer in layers if layer.pairs_int16]
    model = onnx.load(str(qdq_model))
    present = {o.name for o in model.graph.output}
    for name in dict.fromkeys(layer.activation for layer in integer):
        if name not in present:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    probe = work / "saturation-probe.onnx"
    onnx.save(model, str(probe))
    names = [o.name for o in model.graph.output]
    session = OnnxRuntimeBackend().load(probe, RunOptions(opt_level="disable"))
    if session.input_name != input_name:
        raise ValueError(f"{qdq_model.name} reads {session.input_name!r}, not {input_name!r}")
    stats = {layer.node: [0, 0, 0.0, 0.0] for layer in integer}
    for x, n in _batches(samples[:max_samples], batch):
        outputs = dict(zip(names, session.run(x), strict=True))
        for layer in integer:
            codes = outputs[layer.activation]
            if codes.dtype != np.uint8:
                raise ValueError(f"{layer.node} reads {layer.activation} as {codes.dtype}, expected uint8 codes")
            codes = codes[:n] if codes.ndim and codes.shape[0] == len(x) else codes
            exact, sat, clipped, pairs = layer.simulate(codes)
            s = stats[layer.node]
            s[0] += pairs
            s[1] += clipped
            s[2] += float(np.sum(exact * exact))
            s[3] += float(np.sum(np.square(sat - exact)))
    out = []
    for layer in layers:
        pairs, clipped, signal, noise = stats.get(layer.node, [0, 0, 0.0, 0.0])
        sqnr = float("inf") if noise == 0 else (float("-inf") if signal == 0 else 10 * float(np.log10(signal / noise)))
        out.append(LayerSaturation(layer.node, layer.op_type, layer.kernel, layer.reduction, pairs, clipped, sqnr))
    return out
