"""``--backend tensorrt``: an explicitly quantized (Q/DQ) ONNX that TensorRT 10 and 11 build as INT8.

TensorRT 11 dropped implicit INT8 and its calibrators; INT8 now means Q/DQ nodes in the ONNX graph, which
TensorRT fuses into the neighbouring layers. Its rules (TensorRT developer guide, "Explicit Quantization"):
int8 and symmetric (zero point 0) everywhere, weights per output channel, Q/DQ on the *inputs* of the layers
that have int8 kernels (convolution, GEMM/MatMul) so they fuse, biases left in float, and no Q/DQ on the
input of LayerNorm (TensorRT runs normalisation in float; an int8 LayerNorm input costs accuracy and speed).

The graph is produced with ONNX Runtime's ``quantize_static`` in Optimum's TensorRT configuration and then
checked node by node (:func:`check_graph`); the result is measured by running it in ONNX Runtime on this
CPU (its ``check_runtime``), while TensorRT on a GPU is what it is for (its ``backend``). Nothing here imports
TensorRT: build the engine where TensorRT lives, e.g. ``trtexec --onnx=model.onnx`` (add ``--stronglyTyped`` on
10.x; 11.x is always strongly typed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import numpy_helper

from ..backends.onnxruntime import OnnxRuntimeBackend
from ..backends.tensorrt import TensorRtBackend
from ..cpu import CpuTarget
from ..errors import UserError
from ..progress import Progress
from .base import LayoutRule
from .options import AS_GIVEN, QuantizeOptions
from .ort_static import OrtQuantizer, OrtScheme
from .scheme import IntegerScheme, SchemeChoice
from .source import SourceModel

#: TensorRT's explicit quantization: symmetric int8 on both sides, run on the GPU.
TENSORRT_SCHEME = IntegerScheme("s8s8", "s8", 8, "symmetric s8 activations x s8 weights (TensorRT explicit Q/DQ)")

#: Layers TensorRT runs in int8 when their inputs come through Q/DQ.
TRT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def trt_scheme(qdq_layernorm: bool) -> OrtScheme:
    ops = TRT_OPS + (("LayerNormalization",) if qdq_layernorm else ())
    return OrtScheme(
        name="tensorrt",
        activation_type="QInt8",
        weight_type="QInt8",
        activation_symmetric=True,
        op_types=ops,
        extra={
            "WeightSymmetric": True,
            "AddQDQPairToWeight": True,
            "DedicatedQDQPair": True,
            "QuantizeBias": False,
            "OpTypesToExcludeOutputQuantization": list(ops),
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
        },
    )


class TensorRtQuantizer(OrtQuantizer):
    """ONNX Runtime's quantizer in TensorRT's configuration; its output is for TensorRT, checked in ONNX Runtime."""

    backend: ClassVar[str] = TensorRtBackend.name
    check_runtime: ClassVar[str] = OnnxRuntimeBackend.name
    label: ClassVar[str] = TensorRtBackend.name
    own_options: ClassVar[tuple[str, ...]] = ("qdq_layernorm",)
    by_default: ClassVar[bool] = False
    #: Symmetric s8 x s8 on the GPU: no u8 x s8 pair sums.
    predicts_saturation: ClassVar[bool] = False
    calibrates_in_quantize: ClassVar[bool] = False
    layout_rule: ClassVar[LayoutRule] = LayoutRule(AS_GIVEN, "TensorRT lays out its own engine", relayouts=False)

    @classmethod
    def create(cls, source: SourceModel, options: QuantizeOptions, scheme: IntegerScheme, work: Path,
               architecture: Path | None = None) -> TensorRtQuantizer:
        """The scheme is always TensorRT's (``choose_scheme``): the Q/DQ settings follow ``--qdq-layernorm``."""
        return cls(source, options, work)

    @classmethod
    def choose_scheme(cls, target: CpuTarget, requested: str) -> SchemeChoice:
        if requested != "auto":
            raise UserError("--int8-scheme applies to --backend cpu and openvino: TensorRT's Q/DQ is always "
                            "symmetric s8 x s8; drop it")
        return SchemeChoice(TENSORRT_SCHEME, "TensorRT explicit quantization (GPU): symmetric int8, the CPU target "
                                             "does not apply", forced=False)

    def __init__(self, source: SourceModel, options: QuantizeOptions, work: Path) -> None:
        super().__init__(source, options, trt_scheme(options.qdq_layernorm), work)

    def reads_float(self, node: onnx.NodeProto, index: int) -> bool:
        """Q/DQ belong to the layer TensorRT fuses them into: a residual Add beside a Conv reads float, and
        LayerNorm (with ``--qdq-layernorm``) gets only its activation input quantized, scale and bias stay float."""
        return node.op_type not in (self.scheme.op_types or ()) or (node.op_type == "LayerNormalization" and index > 0)

    def post_check(self, int8_model: Path, progress: Progress) -> dict[str, Any] | None:
        with progress.step("Checking the Q/DQ graph against TensorRT's rules"):
            return check_graph(int8_model, self.options.qdq_layernorm)

    def settings(self) -> dict[str, Any]:
        d = super().settings()
        d["target"] = "TensorRT 10/11 explicit quantization (strongly typed); not built here"
        d["build_hint"] = "trtexec --onnx=model.onnx --saveEngine=model.plan (add --stronglyTyped on TensorRT 10.x)"
        return d


class GraphCheckError(RuntimeError):
    """The Q/DQ graph breaks a TensorRT rule: a bug in the quantizer configuration, not bad user input."""


def check_graph(path: Path, allow_layernorm: bool = False) -> dict[str, Any]:
    """Verify the TensorRT rules on the written graph; returns counts for the manifest, raises on a violation."""
    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    qs = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    dqs = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    problems: list[str] = []
    dtypes: set[str] = set()
    for n in qs + dqs:
        if len(n.input) < 3 or n.input[2] not in inits:
            problems.append(f"{n.name}: no int8 zero point (defaults to uint8)")
            continue
        zp = numpy_helper.to_array(inits[n.input[2]])
        dtypes.add(str(zp.dtype))
        if zp.dtype != np.int8 or np.any(zp != 0):
            problems.append(f"{n.name}: zero point {zp.dtype} {zp.ravel()[:4]} (must be int8 0)")
    weights_total = weights_per_channel = 0
    quantized_inputs: dict[str, int] = {}
    allowed = set(TRT_OPS) | ({"LayerNormalization"} if allow_layernorm else set())
    for dq in dqs:
        q = producer.get(dq.input[0])
        if q is None:
            problems.append(f"{dq.name}: DequantizeLinear of a stored tensor (weights must keep a Q/DQ pair)")
            continue
        source = q.input[0]
        if source in inits:
            weights_total += 1
            scale = numpy_helper.to_array(inits[dq.input[1]])
            w = numpy_helper.to_array(inits[source])
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and w.ndim >= 2 and scale.shape[0] == w.shape[axis] > 1:
                weights_per_channel += 1
            else:
                problems.append(f"{dq.name}: weight {source} is not quantized per output channel")
        for c in consumers.get(dq.output[0], []):
            quantized_inputs[c.op_type] = quantized_inputs.get(c.op_type, 0) + 1
            if c.op_type not in allowed:
                problems.append(f"{dq.name}: feeds {c.op_type} {c.name}, which TensorRT does not fuse with Q/DQ")
    if problems:
        raise GraphCheckError(f"{len(problems)} TensorRT Q/DQ rule violation(s), first: {problems[0]}")
    return {
        "quantize_linear": len(qs),
        "dequantize_linear": len(dqs),
        "zero_point_dtypes": sorted(dtypes),
        "zero_points_all_zero": True,
        "weights_quantized": weights_total,
        "weights_per_channel": weights_per_channel,
        "dequantized_inputs_by_op": dict(sorted(quantized_inputs.items())),
        "layernorm_inputs_quantized": quantized_inputs.get("LayerNormalization", 0),
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
    }
