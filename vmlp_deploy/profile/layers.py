"""Per-layer breakdown: the backends' own per-layer times (ONNX Runtime profiler, OpenVINO performance
counters, TensorRT IProfiler) aggregated by node, by op type and by category, top N, as % of the total,
so a user sees what dominates: token shifts (data movement), norms, GEMMs, convolutions...

Times are wall time per layer per inference, averaged over the profiled runs; they come from a separate
profiling session, because the profilers themselves slow inference down (trtexec does the same).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..backends.base import LayerTime

#: Op types (ONNX, ONNX Runtime fused kernels, OpenVINO node types) -> the category a reader cares about.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "gemm": ("MatMul", "Gemm", "FusedMatMul", "FullyConnected", "MatMulInteger", "QLinearMatMul",
             "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulNBits", "Einsum", "FullyConnectedCompressed"),
    "conv": ("Conv", "FusedConv", "NhwcConv", "Convolution", "GroupConvolution", "QLinearConv", "ConvInteger",
             "ConvTranspose", "ConvolutionBackpropData", "NhwcFusedConv"),
    "norm": ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization", "InstanceNormalization",
             "BatchNormalization", "GroupNormalization", "MVN", "RMS", "NormalizeL2", "RMSNorm"),
    "shift/data movement": ("Slice", "Concat", "Pad", "ScatterND", "ScatterNDUpdate", "ScatterElements",
                            "ScatterElementsUpdate", "Gather", "GatherElements", "GatherND", "Transpose", "Reshape",
                            "Expand", "Broadcast", "Unsqueeze", "Squeeze", "Flatten", "Split", "VariadicSplit",
                            "Roll", "Tile", "Where", "Select", "Reorder", "ReorderInput", "ReorderOutput",
                            "Identity", "StridedSlice", "Shape", "ShapeOf", "Range", "Equal", "Copy", "Permute"),
    "activation": ("Gelu", "Erf", "Relu", "Sigmoid", "Tanh", "Softmax", "HardSigmoid", "HardSwish", "Swish",
                   "Clip", "FastGelu", "BiasGelu", "QuickGelu", "LeakyRelu", "Elu", "Mish", "SoftPlus"),
    "elementwise": ("Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Multiply", "Subtract", "Divide", "Power",
                    "PowerStatic", "Eltwise", "Subgraph", "Sum", "Neg", "Abs", "Exp", "Log", "Reciprocal",
                    "ElementWise", "PointWise"),
    "pool/reduce": ("AveragePool", "AvgPool", "GlobalAveragePool", "MaxPool", "GlobalMaxPool", "ReduceMean",
                    "ReduceSum", "ReduceMax", "ReduceL2", "Pooling", "Reduce"),
    "quantize": ("QuantizeLinear", "DequantizeLinear", "FakeQuantize", "DynamicQuantizeLinear", "Convert",
                 "Cast", "Quantize", "Dequantize"),
}
_CATEGORY_OF = {op.lower(): cat for cat, ops in CATEGORIES.items() for op in ops}


def category(op_type: str) -> str:
    return _CATEGORY_OF.get(op_type.lower(), "other")


@dataclass(frozen=True)
class Row:
    name: str
    time_ms: float
    percent: float
    count: int
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "time_ms": self.time_ms, "percent": self.percent, "count": self.count,
                "detail": self.detail}


@dataclass(frozen=True)
class Breakdown:
    """Per-inference per-layer times of one configuration, aggregated three ways (top ``top`` each)."""

    total_ms: float
    runs: int
    layers: int
    by_op_type: list[Row]
    by_category: list[Row]
    by_node: list[Row]
    kernel_precisions: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_ms": self.total_ms, "runs": self.runs, "layers": self.layers,
            "by_op_type": [r.to_dict() for r in self.by_op_type],
            "by_category": [r.to_dict() for r in self.by_category],
            "by_node": [r.to_dict() for r in self.by_node],
            "kernel_precisions_percent": self.kernel_precisions,
        }


def _rows(groups: dict[str, list[LayerTime]], total: float, top: int | None, detail: bool = False) -> list[Row]:
    rows = []
    for name, items in groups.items():
        t = sum(i.time_ms for i in items)
        info = ""
        if detail:
            first = items[0]
            info = " ".join(x for x in (first.op_type, first.exec_type, first.precision) if x)
        rows.append(Row(name, t, 100.0 * t / total if total > 0 else 0.0, len(items), info))
    rows.sort(key=lambda r: (-r.time_ms, r.name))
    return rows if top is None else rows[:top]


def aggregate(layers: Sequence[LayerTime], runs: int, top: int = 10) -> Breakdown:
    """Aggregate by op type, category (all of them) and node (top ``top`` each); also the share of time
    spent in kernels of each precision, where the backend names it (OpenVINO exec types, TensorRT formats)."""
    total = sum(layer.time_ms for layer in layers)
    by_op: dict[str, list[LayerTime]] = defaultdict(list)
    by_cat: dict[str, list[LayerTime]] = defaultdict(list)
    by_node: dict[str, list[LayerTime]] = defaultdict(list)
    prec: dict[str, float] = defaultdict(float)
    for layer in layers:
        by_op[layer.op_type].append(layer)
        by_cat[category(layer.op_type)].append(layer)
        by_node[layer.name].append(layer)
        if layer.precision:
            prec[layer.precision] += layer.time_ms
    named = sum(prec.values())
    return Breakdown(
        total_ms=total,
        runs=runs,
        layers=len(layers),
        by_op_type=_rows(by_op, total, top),
        by_category=_rows(by_cat, total, None),
        by_node=_rows(by_node, total, top, detail=True),
        kernel_precisions={k: round(100.0 * v / named, 2) for k, v in sorted(prec.items(), key=lambda kv: -kv[1])}
        if named > 0 else {},
    )
